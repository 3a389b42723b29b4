"""Outgoing webhooks: the outbox, signing, delivery and the address policy.

A receiver needs only ``verify`` (or a ``Verifier`` holding its secrets), the Standard Webhooks
check of the ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers.
"""

from clarion.webhooks.signing import Verifier, verify

__all__ = ["Verifier", "verify"]
