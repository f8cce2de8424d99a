"""Token signing keys and an operator token for a test session."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from shared.tokens import generate_keypair


@dataclass(frozen=True)
class TokenKeys:
    private_pem: bytes
    public_pem: bytes
    private_key_file: Path
    public_key_file: Path
    operator_token: str


def make_token_keys(folder: Path) -> TokenKeys:
    """A fresh Ed25519 pair written to ``folder`` and a random operator token."""
    private_pem, public_pem = generate_keypair()
    private_key_file = folder / "token-private.pem"
    public_key_file = folder / "token-public.pem"
    private_key_file.write_bytes(private_pem)
    private_key_file.chmod(0o600)
    public_key_file.write_bytes(public_pem)
    return TokenKeys(
        private_pem=private_pem,
        public_pem=public_pem,
        private_key_file=private_key_file,
        public_key_file=public_key_file,
        operator_token=secrets.token_urlsafe(24),
    )
