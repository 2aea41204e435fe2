"""Former home of the card side of SCP02/SCP03; it now lives in :mod:`gp.scp.card`."""

from __future__ import annotations

from gp.scp.card import ISD_AID, CardSCP02, CardSCP03, sw_for_error

__all__ = ["ISD_AID", "CardSCP02", "CardSCP03", "sw_for_error"]
