"""In-process transport: the card as a Python object that persists like ``cardsim serve``.

>>> card = InProcessCard("card.json")      # loads the state file, powers the card up (ATR in .atr)
>>> card.transmit(bytes.fromhex("00A4040000"))   # C-APDU bytes -> R-APDU bytes (data || SW)

Each command that changes the card's state is written to the state file before its response is
returned. Dropping the object without any shutdown and building a new one from the same file
is exactly a card pulled from the reader and inserted again.
"""

from __future__ import annotations

import os
from pathlib import Path

from cardsim import store
from cardsim.card import Card
from cardsim.state import State


class InProcessCard:
    """``transmit(capdu) -> rapdu`` against the card stored in ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.card = Card(store.load(self.path), on_change=self._persist)
        self.atr = self.card.power_on()

    def _persist(self, state: State) -> None:
        store.save(self.path, state)

    def transmit(self, capdu: bytes) -> bytes:
        return self.card.transmit(bytes(capdu))

    def reset(self) -> bytes:
        """Warm reset; returns the ATR."""
        self.atr = self.card.reset()
        return self.atr

    @property
    def state(self) -> State:
        return self.card.state

    def personalization(self, aid: str | bytes) -> bytes | None:
        """The personalisation the instance keeps (:func:`cardsim.state.personalization`)."""
        return self.card.personalization(aid)
