"""Contracts and plumbing that every marketplace service stands on.

Nothing here knows about catalog, orders or settlement rules: it holds the
event contracts (``shared.contracts``) and the machinery that moves them
(outbox, idempotent consumer, HTTP plumbing, settings, migrations).
"""
