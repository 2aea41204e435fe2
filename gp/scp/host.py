"""The host channel's state machine, shared by SCP02 and SCP03 (sans-I/O).

Pipelining: the platform sends a batch of secured commands before it sees any response
(DESIGN §6). Each ``wrap`` therefore remembers the MAC chaining value and encryption counter its
response needs, and ``unwrap`` consumes them in order, so ``wrap, wrap, wrap, unwrap, unwrap,
unwrap`` works exactly like strict alternation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from gp.errors import (
    EncodingError,
    KeyMaterialError,
    MalformedResponseError,
    RemoteProtocolError,
    SecureChannelError,
    StatusWordError,
)
from gp.keys import StaticKeys
from gp.scp.common import ChannelState, SecuredResponse, SecurityLevel, _rmac_expected


class _Pending:
    """Per-response context remembered by ``wrap`` for the matching ``unwrap``."""

    __slots__ = ("counter", "mcv", "plain")

    def __init__(self, mcv: bytes, counter: int, plain: bytes = b"") -> None:
        self.mcv = mcv
        self.counter = counter
        self.plain = plain


def _parse_iu_response(response: bytes) -> tuple[bytes, int]:
    response = bytes(response)
    if len(response) < 2:
        raise MalformedResponseError("INITIALIZE UPDATE response shorter than a status word")
    sw = int.from_bytes(response[-2:], "big")
    if sw != 0x9000:
        raise StatusWordError(sw, f"INITIALIZE UPDATE failed with SW {sw:04X}")
    return response[:-2], sw


def _state_args(keys: Any, state: Any) -> tuple[StaticKeys | None, dict[str, Any]]:
    if state is None and isinstance(keys, dict):
        keys, state = None, keys
    if not isinstance(state, dict):
        raise SecureChannelError("session state must be the dict returned by session_state()")
    if keys is not None and not isinstance(keys, StaticKeys):
        raise KeyMaterialError("keys must be a gp.keys.StaticKeys or None")
    return keys, state


class _SessionCore(Protocol):
    """What the shared unwrap needs of a channel's core (``SCP02Core``, ``SCP03Core``)."""

    @property
    def security_level(self) -> int: ...


class _HostChannel:
    """Shared host behaviour: state machine, challenge, pipelined unwrap, state export."""

    SCP: ClassVar[int] = 0
    LEVELS: ClassVar[frozenset[int]] = frozenset()

    def __init__(
        self,
        keys: StaticKeys | None,
        security_level: int,
        host_challenge: bytes | None,
        random: Callable[[int], bytes],
        challenge_len: int,
    ) -> None:
        if keys is not None and not isinstance(keys, StaticKeys):
            raise KeyMaterialError("keys must be a gp.keys.StaticKeys")
        if security_level not in self.LEVELS:
            raise SecureChannelError(
                f"security level 0x{security_level:02X} not supported by SCP0{self.SCP} "
                f"(one of {', '.join(f'0x{x:02X}' for x in sorted(self.LEVELS))})"
            )
        self._keys = keys
        self.security_level = SecurityLevel(security_level)
        if host_challenge is None:
            host_challenge = random(challenge_len)
        host_challenge = bytes(host_challenge)
        if len(host_challenge) != challenge_len:
            raise SecureChannelError(f"host challenge must be {challenge_len} bytes, got {len(host_challenge)}")
        self.host_challenge = host_challenge
        self.card_challenge = b""
        self.kdd = b""
        self.key_version = keys.version if keys is not None else 0
        self.requested_key_version = self.key_version
        self.key_version_mismatch = False
        self._state = ChannelState.IDLE
        self._pending: deque[_Pending] = deque()
        self._closed_reason = ""

    @property
    def is_authenticated(self) -> bool:
        return self._state is ChannelState.OPEN

    def _require_auth(self) -> None:
        if self._state is not ChannelState.OPEN:
            detail = f" ({self._closed_reason})" if self._closed_reason else ""
            raise SecureChannelError(f"secure channel is not open{detail}")

    def _close(self, reason: str) -> None:
        self._state = ChannelState.CLOSED
        self._closed_reason = reason
        self._pending.clear()

    def initialize_update(self) -> bytes:
        """The INITIALIZE UPDATE command: 80 50 KVN 00 Lc host-challenge 00 (GP 2.3.1 §11.13)."""
        if self._state not in (ChannelState.IDLE, ChannelState.INITIALIZED):
            raise SecureChannelError("INITIALIZE UPDATE already answered; use a new channel object")
        self._state = ChannelState.INITIALIZED
        hc = self.host_challenge
        return bytes((0x80, 0x50, self.key_version, 0x00, len(hc))) + hc + b"\x00"

    def _initialize_update_answer(self, response: bytes) -> tuple[StaticKeys, bytes]:
        """The static keys and the INITIALIZE UPDATE response data, once the channel may use them."""
        if self._state is not ChannelState.INITIALIZED:
            raise SecureChannelError("external_authenticate() needs initialize_update() first")
        if self._keys is None:
            raise KeyMaterialError("static keys are needed to authenticate")
        data, _ = _parse_iu_response(response)
        return self._keys, data

    def _note_key_version(self, keys: StaticKeys, kvn: int) -> None:
        """Some cards ignore P1 of INITIALIZE UPDATE and answer with their current key version.
        That is accepted and recorded (``requested_key_version``); the card cryptogram, checked
        next with the host's keys, still decides (GP 2.3.1 §11.13.2)."""
        self.requested_key_version = keys.version
        self.key_version_mismatch = bool(keys.version) and kvn != keys.version

    def _pop_pending(self) -> _Pending | None:
        return self._pending.popleft() if self._pending else None

    def _session_core(self) -> _SessionCore:
        """The open channel's core (SCP02 or SCP03); each channel returns its own."""
        raise NotImplementedError

    def _verify(self, rapdu: bytes, pending: _Pending) -> bytes:
        raise NotImplementedError

    def unwrap(self, rapdu: bytes) -> bytes:
        """Secured R-APDU (data || SW) -> plain data || SW. MACError on a bad R-MAC; any
        verification failure closes the channel. An error status word comes back as it is,
        unauthenticated: use :meth:`unwrap_response` where that matters."""
        return self.unwrap_response(rapdu).to_bytes()

    def unwrap_response(self, rapdu: bytes) -> SecuredResponse:
        """Like :meth:`unwrap`, and says whether the card's R-MAC covered data and status word."""
        self._require_auth()
        core = self._session_core()
        rapdu = bytes(rapdu)
        if len(rapdu) < 2:
            raise MalformedResponseError(f"response APDU too short: {len(rapdu)} bytes")
        sw = int.from_bytes(rapdu[-2:], "big")
        if not core.security_level & SecurityLevel.R_MAC:
            return SecuredResponse(rapdu[:-2], sw, authenticated=False)
        pending = self._pop_pending()
        if pending is None:
            # Only the EXTERNAL AUTHENTICATE response (a bare SW) can arrive here.
            if len(rapdu) == 2:
                return SecuredResponse(b"", sw, authenticated=False)
            raise MalformedResponseError("a response to no wrapped command", sw=sw)
        try:
            plain = self._verify(rapdu, pending)
        except RemoteProtocolError as exc:
            self._close(str(exc))
            raise
        except EncodingError as exc:
            self._close(str(exc))
            raise MalformedResponseError.wrap(exc, "secured response", sw=sw) from exc
        return SecuredResponse(plain[:-2], sw, authenticated=_rmac_expected(sw))
