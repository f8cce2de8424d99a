#!/usr/bin/env bash
# Installs what the marketplace needs on a fresh Debian/Ubuntu machine, then
# the Python dependencies pinned in uv.lock. Safe to run again: it only
# installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
[ -x /usr/lib/postgresql/15/bin/pg_ctl ] || [ -n "${MARKETPLACE_PG_BIN:-}" ] || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${missing[*]} (install them, e.g. with sudo apt-get install)" >&2
    exit 1
  fi
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # The Debian package starts a cluster of its own on 5432; ours runs from its own folder.
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
  fi
fi

if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv
fi
uv sync --frozen --quiet
