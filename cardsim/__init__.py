"""Emulated GlobalPlatform 2.3.1 Java Card (the card side), persistent and attachable to PC/SC.

Pure card model (:mod:`cardsim.card`): bytes in, bytes out, no I/O. The thin adapters at the
edge are :mod:`cardsim.store` (atomic state file), :mod:`cardsim.transport` (in-process card
for tests), :mod:`cardsim.vpcd` (vsmartcard virtual reader client) and the CLI
(``python -m cardsim init|serve|show``). Crypto and encodings come from :mod:`gp`.
"""

from cardsim.card import Card
from cardsim.state import new_state

__all__ = ["Card", "new_state"]
