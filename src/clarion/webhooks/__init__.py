"""Outgoing webhooks: the outbox, signing, delivery and the address policy."""
