"""The engine's vocabulary, free of Django and of I/O: the commands of a batch and what their
answers must be, key choices, the registry as the card proved it, the errors that say whose fault
a failure is, and the protocol constants (GP 2.3.1, Amendment D).

``updates.ota`` (the runner and the stages over the ORM) re-exports every name, so importers of
``updates.ota`` keep working.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from gp import commands, dm
from gp.apdu import SW, sw_name
from gp.errors import GPError, LocalProtocolError
from gp.scp import SecurityLevel

AUTH_FAILURE_STOP = 2  # never use the card's last tries (cardsim blocks a key set at 3)
BANK_KVN = {0x02: 0x21, 0x03: 0x31}  # the bank's first key set on its SSD (initial set is 20/30)
TOKEN_SCHEME = dm.SCHEME_ECDSA_P256_SHA256
STATUS_APPS = commands.STATUS_APPS  # GET STATUS P1: applications and SSDs (§11.4.2.1)
STATUS_ELF_MODULES = commands.STATUS_ELF_MODULES  # Executable Load Files and their modules
# Every command MAC'd and encrypted, every answer R-MAC'd (SCP03 also R-ENC'd): Amd D §7.2, GPC §E.5.2.
FULL_SCP03_LEVEL = SecurityLevel.C_MAC | SecurityLevel.C_DEC | SecurityLevel.R_MAC | SecurityLevel.R_ENC
FULL_SCP02_LEVEL = SecurityLevel.C_MAC | SecurityLevel.C_DEC | SecurityLevel.R_MAC


HOST_CHALLENGE_LEN = 8  # SCP02 and SCP03 with 8-byte (S8) challenges, as the engine opens them


def initialize_update_apdu(kvn: int, host_challenge: bytes) -> bytes:
    """INITIALIZE UPDATE: 80 50 KVN 00 Lc host-challenge 00 (GP 2.3.1 §11.13.2), the same bytes the
    host channels build, without needing the static keys."""
    return bytes((0x80, 0x50, kvn, 0x00, len(host_challenge))) + host_challenge + b"\x00"


class SessionRejected(Exception):
    """Integrity failure (bad MAC, bad cryptogram, identity mismatch): the session ends, nothing is done."""


class JobFailed(Exception):
    """The job cannot be done (policy refused a token, no keys): it fails for good."""


class StepFailed(Exception):
    """The card refused a step or did not show its effect: the job goes back to pending and is
    tried again at the next presentation, until it has had ``MAX_ATTEMPTS`` attempts.

    ``effects`` are what the card did prove before the failure (``updates.engine.effects``): the
    runner still records them."""

    def __init__(self, message: str, effects: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.effects = effects


class Unconfirmed(StepFailed):
    """The card's answer could not prove the step's effect (an error status word carries no
    R-MAC, so a relay could have made it up): nothing is recorded, the job is tried again."""


@contextmanager
def _card_reply(what: str) -> Iterator[None]:
    """Around code that parses or verifies bytes the card sent through the relay: their defects
    reject the session (``what`` says which reply); the engine's own misuse of ``gp`` passes
    through as the bug it is (see ``updates.ota.SessionEngine.advance``)."""
    try:
        yield
    except LocalProtocolError:
        raise
    except GPError as exc:  # remote, or a direction-free EncodingError from the card's bytes
        raise SessionRejected(f"{what}: {exc}") from exc


class NeedsProof(Exception):
    """A stage cannot confirm its effect from what the card has proven so far, and knows a script
    whose authenticated answers would (see ``updates.ota.IsdDeleteSsd.finish``)."""

    def __init__(self, commands: list[Command]) -> None:
        super().__init__("more evidence needed")
        self.commands = commands


MAX_ATTEMPTS = 5
# Card.key_scheme (a CharField) to the diversification schemes custody.card_isd_keys knows.
ISD_KEY_SCHEMES: dict[str, Literal["kdf3", "emv", "visa2"]] = {"kdf3": "kdf3", "emv": "emv", "visa2": "visa2"}
INTEGRITY_SWS = frozenset({SW.SECURITY_STATUS_NOT_SATISFIED, SW.SM_DATA_OBJECTS_INCORRECT, SW.AUTHENTICATION_FAILED})


@dataclass
class Command:
    """One C-APDU of a batch with what the engine needs to check its answer."""

    apdu: bytes  # plain C-APDU
    label: str
    expect: tuple[int, ...] = (SW.SUCCESS,)
    secure: bool = True
    receipt: dict[str, Any] | None = None  # {"op": load|install|delete, "fields": [hex, ...]}
    status_p1: int | None = None  # a GET STATUS of this P1
    proves: str | None = None  # a fact an authenticated 9000 to this command proves, e.g. "deleted:<AID>"
    # For a channel held by a bank's key service: what the service builds itself instead of a
    # plain APDU, e.g. {"put_key": {"kvn": 0x31, "replace": 0}} (docs/keyservice.md).
    service: dict[str, Any] | None = None
    # The last LOAD block of a load carrying DAP blocks: there 6982 is the card refusing the
    # signature (GPC 2.3.1 §9.2.1), not an altered command.
    dap_checked: bool = False
    # Upper-case hex the R-MAC'd answer's data must equal for ``proves`` to hold (a read-back, or
    # PUT KEY's key check values); None: any R-MAC'd 9000 proves it.
    proves_data: str | None = None


@dataclass(frozen=True)
class InFlight:
    """A command of the batch in flight as the engine keeps it between exchanges (JSON in
    ``CardSession.engine_state``): what its answer must be and what an R-MAC'd 9000 to it proves."""

    label: str
    expect: tuple[int, ...]
    secure: bool = True
    receipt: dict[str, Any] | None = None
    status_p1: int | None = None
    proves: str | None = None
    dap_checked: bool = False
    proves_data: str | None = None

    @classmethod
    def of(cls, command: Command) -> InFlight:
        return cls(
            command.label,
            tuple(command.expect),
            command.secure,
            command.receipt,
            command.status_p1,
            command.proves,
            command.dap_checked,
            command.proves_data,
        )

    def proven_by(self, data: bytes) -> str | None:
        """The fact an R-MAC'd 9000 carrying ``data`` proves, if any."""
        if self.proves is None or (self.proves_data is not None and data.hex().upper() != self.proves_data):
            return None
        return self.proves

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "expect": list(self.expect),
            "secure": self.secure,
            "receipt": self.receipt,
            "status_p1": self.status_p1,
            "proves": self.proves,
            "dap_checked": self.dap_checked,
            "proves_data": self.proves_data,
        }

    @classmethod
    def from_json(cls, data: Any) -> InFlight:
        """The stored form back; a state that does not have it is the engine's own bug."""
        try:
            expect = tuple(int(sw) for sw in data["expect"])
            return cls(
                str(data["label"]),
                expect,
                bool(data.get("secure", True)),
                data.get("receipt"),
                data.get("status_p1"),
                data.get("proves"),
                bool(data.get("dap_checked", False)),
                data.get("proves_data"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LocalProtocolError(f"a command in flight is stored malformed: {exc!r}") from None


@dataclass
class KeyChoice:
    """Which keys open a stage's channel: the card's diversified ISD keys, or a stored key set."""

    kind: str  # "isd" | "keyset" | "bank" (SCP03 at the bank's key service) | "scp11b" (SD key KID 13)
    kvn: int
    keyset_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "kvn": self.kvn, "keyset_id": self.keyset_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyChoice:
        return cls(kind=data["kind"], kvn=data["kvn"], keyset_id=data.get("keyset_id"))


@dataclass
class Registry:
    """What the card proved inside one secure channel: its R-MAC'd GET STATUS listings, and the
    facts proven by authenticated answers to the script (DESIGN.md §7a).

    Only authenticated entries are ever listed, so :meth:`app` and :meth:`elf` returning an
    entry proves presence. ``None`` proves nothing by itself: a listing answered ``6A88`` (no
    R-MAC) may be a relay's invention. Absence is proven only by :meth:`app_absent` and
    :meth:`elf_absent`.
    """

    apps: list[commands.RegistryEntry] = field(default_factory=list)
    elfs: list[commands.RegistryEntry] = field(default_factory=list)
    proven_listings: frozenset[int] = frozenset()  # P1s whose whole listing carried R-MACs
    proofs: frozenset[str] = frozenset()  # facts from authenticated answers (Command.proves)

    def app(self, aid: str) -> commands.RegistryEntry | None:
        return next((e for e in self.apps if e.aid.hex().upper() == aid), None)

    def elf(self, aid: str) -> commands.RegistryEntry | None:
        return next((e for e in self.elfs if e.aid.hex().upper() == aid), None)

    def app_absent(self, aid: str) -> bool:
        """Proven absent: a complete authenticated listing without it, or an authenticated DELETE."""
        if self.app(aid) is not None:
            return False
        return STATUS_APPS in self.proven_listings or f"deleted:{aid}" in self.proofs

    def elf_absent(self, aid: str) -> bool:
        if self.elf(aid) is not None:
            return False
        return STATUS_ELF_MODULES in self.proven_listings or f"deleted:{aid}" in self.proofs


def expected_first(choices: list[KeyChoice], kvn: int | None) -> list[KeyChoice]:
    """The key set the records say the SD holds first, the others after it, in their order.
    INITIALIZE UPDATE of an absent key version is answered 6A88 and the next one is tried, so
    the order costs at most an exchange, never a try (only a verified card cryptogram opens)."""
    if kvn is None and len(choices) > 1:
        return [*choices[1:], choices[0]]  # not recorded yet: the key set the job replaces
    return sorted(choices, key=lambda c: c.kvn != kvn)


@dataclass
class Batch:
    """What the server answers an exchange with: commands for the agent, or the end of the session."""

    commands: list[dict[str, Any]]
    done: bool = False
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)


def refused(label: str, sw: int, *, dap_checked: bool = False) -> None:
    """The card answered a secured command with an unexpected status word. A security status
    (bad C-MAC, bad SM data) means the command was altered on the way: the session is rejected.
    Anything else is the card refusing the step: tried again at the next presentation.

    ``dap_checked``: the last LOAD block of a load with DAP blocks, where ``6982`` is the card
    refusing the signature (§9.2.1). Unauthenticated like every error status word, it fails the
    attempt with that reason (never a record), and the job fails with it once out of attempts."""
    if dap_checked and sw == SW.SECURITY_STATUS_NOT_SATISFIED:
        raise StepFailed(
            f"{label}: the card refused the load's DAP signature (6982): the code is not signed with the "
            "key the security domain verifies"
        )
    if sw in INTEGRITY_SWS:
        raise SessionRejected(f"{label}: the card refused the command's integrity ({sw:04X} {sw_name(sw)})")
    raise StepFailed(f"{label}: the card answered {sw:04X} ({sw_name(sw)})")


def sw_of(rapdu: bytes) -> int:
    return int.from_bytes(rapdu[-2:], "big")


def parse_answers(responses: object, *, limit: int) -> list[bytes]:
    """The agent's responses as R-APDUs: a non-empty list of at most ``limit`` hex strings, each
    at least a status word. Anything else is the relay's fault (the session is rejected)."""
    if not isinstance(responses, list) or not responses or len(responses) > limit:
        raise SessionRejected("responses must be a non-empty list")
    raw: list[bytes] = []
    for item in responses:
        try:
            value = bytes.fromhex(item)
        except (TypeError, ValueError):
            raise SessionRejected("responses must be hexadecimal R-APDUs") from None
        if len(value) < 2:
            raise SessionRejected("an R-APDU has at least a status word")
        raw.append(value)
    return raw


def check_answers(expects: Sequence[Collection[int]], answers: Sequence[bytes]) -> None:
    """The answers must answer the batch in flight (``expects``: each command's expected status
    words) in order: all expected but possibly the last, and a short list only when its last
    status word was unexpected, since the agent stops there (DESIGN.md §6). A reply that breaks
    this was replayed, reordered, truncated or continued past a refusal: the relay's fault.

    A batch whose script was computed from the expected registry relies on this: a stop midway
    arrives as a short list ending on the refused command, and nothing after it is read."""
    if len(answers) > len(expects):
        raise SessionRejected("more responses than commands in the batch")
    for index, (value, expect) in enumerate(zip(answers, expects, strict=False)):
        expected = sw_of(value) in expect
        last = index == len(answers) - 1
        if not expected and not last:
            raise SessionRejected("the relay went on after an unexpected status word")
        if last and len(answers) < len(expects) and expected:
            raise SessionRejected("truncated batch: responses stop before the script ends")
