"""HTTP plumbing for aiohttp: typed endpoints, problems, auth, idempotency, health."""
