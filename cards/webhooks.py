"""Delivery of bank notices to the banks' webhooks (docs/notifications.md).

Placeholder until the card life cycle work lands its signed delivery: a notice stays pending.
"""

from __future__ import annotations


def deliver(notice_id: int) -> None:
    """Deliver the notice; until the signed delivery exists, nothing is sent and it stays pending."""
    return None
