"""yubikit (an independent GP host) driving an emulated card or security domain in-process."""

from __future__ import annotations

from typing import Protocol

from yubikit.core import TRANSPORT
from yubikit.core.smartcard import SmartCardConnection


class Transmits(Protocol):
    def transmit(self, apdu: bytes) -> bytes: ...


class RecordingConnection(SmartCardConnection):
    """yubikit's connection interface over anything with ``transmit(bytes) -> bytes`` (data || SW),
    keeping every C-APDU that went over the wire in ``sent``."""

    def __init__(self, card: Transmits) -> None:
        self.card = card
        self.sent: list[bytes] = []

    @property
    def transport(self) -> TRANSPORT:
        return TRANSPORT.USB

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        self.sent.append(bytes(apdu))
        answer = self.card.transmit(bytes(apdu))
        return answer[:-2], int.from_bytes(answer[-2:], "big")

    def close(self) -> None:
        pass
