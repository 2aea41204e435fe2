"""Opening secure channels for the platform and wrapping its commands (docs/keyservice.md).

The channel's state between two calls travels through the platform as an opaque blob: the
channel's ``session_state()`` (session keys), and for SCP03 the static keys PUT KEY needs,
sealed with AES-256-GCM under a key that lives only in this process, bound (AAD) to the bank and
the platform's card session id, and good for 15 minutes.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gp import commands, dap, sealed
from gp.apdu import SW
from gp.commands.card_data import parse_key_information
from gp.errors import AuthenticationError, GPError, MACError
from gp.keys import StaticKeys, encode_put_key_symmetric
from gp.scp import SCP03
from gp.scp.common import SecuredResponse, SecurityLevel
from gp.scp11 import KeyUsage, SCP11b, parse_certificates
from gp.scp11.certificates import Certificate
from gp.tlv import decode_one
from keyservice import personalization, signing
from keyservice.journal import Journal
from keyservice.policy import CallChecker, CommandSummary, Policy, PolicyRefusal, summarize
from keyservice.token import DAP_LABEL, PERSO_LABEL, BankToken

SECURITY_LEVEL = 0x33  # C-MAC, C-DECRYPTION, R-MAC, R-ENCRYPTION (GP Amd D §5.1, docs/keyservice.md)
STATE_LIFETIME = 15 * 60  # seconds a sealed state stays good
SCP11B_KEY_USAGE = 0x3C  # C-MAC, R-MAC, C-ENC, R-ENC session keys (Amd F §6.5.2.1)
SCP11_SD_KEY_IDS = frozenset({0x11, 0x13, 0x15})  # SK.SD.ECKA of SCP11a/b/c (Amd F §6.1)


class ServiceError(Exception):
    """An answer other than 200: the HTTP status, the error code, whose fault, a message that
    names what failed (never key material)."""

    def __init__(self, status: int, code: str, whose: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.whose, self.message = status, code, whose, message

    def as_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "whose": self.whose}}


def bad_request(message: str) -> ServiceError:
    return ServiceError(400, "malformed", "platform", message)


def channel_error(message: str, whose: str = "platform") -> ServiceError:
    return ServiceError(409, "channel", whose, message)


class Sealer:
    """AES-256-GCM under a random per-process key; AAD = bank slug || 00 || session id."""

    def __init__(self, bank: str, clock: Callable[[], float] = time.time) -> None:
        self._aead = AESGCM(AESGCM.generate_key(256))
        self._bank = bank
        self._clock = clock

    def _aad(self, session: str) -> bytes:
        return self._bank.encode() + b"\x00" + session.encode()

    def seal(self, session: str, payload: dict[str, Any]) -> str:
        body = dict(payload, expires=self._clock() + STATE_LIFETIME)
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, json.dumps(body).encode(), self._aad(session))
        return base64.urlsafe_b64encode(sealed).decode()

    def open(self, session: str, state: str) -> dict[str, Any]:
        try:
            raw = base64.urlsafe_b64decode(state.encode())
            body: dict[str, Any] = json.loads(self._aead.decrypt(raw[:12], raw[12:], self._aad(session)))
        except (InvalidTag, ValueError, binascii.Error, UnicodeError):
            raise channel_error(
                "the state does not open: not sealed by this service run, altered, or bound to another session"
            ) from None
        if body.get("expires", 0) < self._clock():
            raise channel_error("the state has expired (15 minutes): open a new channel")
        return body


# --- request fields ----------------------------------------------------------------------


def _field(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise bad_request(f"{name!r} must be a {kind.__name__}")
    return value


def _hex(body: dict[str, Any], name: str, *, min_len: int = 0, max_len: int = 65535) -> bytes:
    text = _field(body, name, str)
    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise bad_request(f"{name!r} is not hex") from None
    if not min_len <= len(value) <= max_len:
        raise bad_request(f"{name!r} must be {min_len}..{max_len} bytes, got {len(value)}")
    return value


def _byte(body: dict[str, Any], name: str) -> int:
    value = _field(body, name, int)
    if not 0 <= value <= 0xFF:
        raise bad_request(f"{name!r} must be a byte (0..255)")
    return int(value)


def _session(body: dict[str, Any]) -> str:
    session = _field(body, "session", str)
    if not 1 <= len(session) <= 200:
        raise bad_request("'session' must be 1..200 characters")
    return str(session)


# --- certificate chain -------------------------------------------------------------------


def verify_card_chain(
    certificates: bytes, card_ca: ec.EllipticCurvePublicKey, card: bytes, sd_aid: bytes, today: dt.date
) -> bytes:
    """The SD's PK.SD.ECKA from its GET DATA BF21 chain (Amd F §7.4.2), once the chain checks:
    the first certificate (the card's attestation certificate) signed by the agency's card CA
    and naming the card's CIN, each next one signed by the previous and naming it as issuer,
    all valid today, the last one a key-agreement key naming this SD (its first 16 bytes)."""
    try:
        if certificates[:2] == b"\xbf\x21":  # the whole BF21 object rather than its value
            certificates = decode_one(certificates)[0].value
        chain: list[Certificate] = parse_certificates(certificates)
    except GPError as exc:
        raise channel_error(f"the certificate chain does not parse: {exc}", "card") from None
    issuer_key = card_ca
    for position, cert in enumerate(chain):
        if not cert.signed_by(issuer_key):
            raise channel_error(f"certificate {position} of the chain is not signed by its issuer", "card")
        if position and cert.issuer_id != chain[position - 1].subject_id:
            raise channel_error(f"certificate {position} does not name the previous one as its issuer", "card")
        if not cert.valid_on(today):
            raise channel_error(f"certificate {position} is not valid on {today.isoformat()}", "card")
        leaf = position == len(chain) - 1
        usage = KeyUsage.KEY_AGREEMENT if leaf else KeyUsage.SIGNATURE_VERIFICATION
        if not cert.allows(usage):
            raise channel_error(f"certificate {position} does not allow {usage.name}", "card")
        issuer_key = cert.public_key()
    if len(chain) < 2:
        raise channel_error("the chain has no card attestation certificate before the SD's", "card")
    if chain[0].subject_id != card:
        raise channel_error(f"the attestation certificate names card {chain[0].subject_id.hex().upper()}", "card")
    if chain[-1].subject_id != sd_aid[:16]:
        raise channel_error(f"the SD certificate names {chain[-1].subject_id.hex().upper()}, not this SD", "card")
    return bytes(chain[-1].public_key_point)


# --- the service -------------------------------------------------------------------------


class KeyService:
    def __init__(
        self,
        policy: Policy,
        token: BankToken,
        journal: Journal,
        card_ca: ec.EllipticCurvePublicKey,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy, self.token, self.journal, self.card_ca = policy, token, journal, card_ca
        self.sealer = Sealer(policy.bank, clock)
        self.oce_certificate: dict[str, Any] | None = None

    # --- open -------------------------------------------------------------------------

    def open(self, body: dict[str, Any]) -> dict[str, Any]:
        session = _session(body)
        card = _hex(body, "card", min_len=1, max_len=32)
        sd_aid = _hex(body, "sd_aid", min_len=5, max_len=16)
        protocol = _field(body, "protocol", str)
        if protocol not in ("scp03", "scp11b"):
            raise bad_request("'protocol' must be 'scp03' or 'scp11b'")
        context = {"session": session, "card": card.hex().upper(), "sd_aid": sd_aid.hex().upper()}
        if not self.policy.in_range(sd_aid):
            reason = f"AID {sd_aid.hex().upper()} is outside {self.policy.bank}'s range"
            self.journal.append(**context, action="refused", commands=[], outcome="refused", reason=reason)
            raise ServiceError(403, "policy", "platform", reason)
        try:
            if protocol == "scp03":
                opened, payload = self._open_scp03(body, card, sd_aid)
            else:
                opened, payload = self._open_scp11b(body, card, sd_aid)
        except ServiceError as exc:
            self.journal.append(**context, action="open", commands=[], outcome="failed", reason=exc.message)
            raise
        state = self.sealer.seal(session, payload)
        self.journal.append(
            **context,
            action="open",
            protocol=protocol,
            commands=[summarize(c).as_json() for c in opened],
            outcome="ok",
            reason="",
        )
        return {"commands": [c.hex().upper() for c in opened], "state": state, "max_data_length": self._mdl(payload)}

    @staticmethod
    def _mdl(payload: dict[str, Any]) -> int:
        return int(payload["max_data_length"])

    def _open_scp03(self, body: dict[str, Any], card: bytes, sd_aid: bytes) -> tuple[list[bytes], dict[str, Any]]:
        kvn, i = _byte(body, "kvn"), _byte(body, "i")
        host_challenge = _hex(body, "host_challenge", min_len=8, max_len=8)
        response = _hex(body, "initialize_update_response", min_len=2, max_len=64)
        keys = self.token.derive_static_keys(card, sd_aid, kvn)
        channel = SCP03(keys, SECURITY_LEVEL, host_challenge, sd_aid=sd_aid)
        channel.initialize_update()
        try:
            external_authenticate = channel.external_authenticate(response)
        except AuthenticationError:
            raise channel_error("the card cryptogram does not verify (wrong card or keys)", "card") from None
        except GPError as exc:
            raise channel_error(f"INITIALIZE UPDATE answer refused: {exc}", "card") from None
        if channel.key_version != kvn or channel.i != i:
            raise channel_error(
                f"the card answered KVN {channel.key_version:02X} i {channel.i or 0:02X}, not {kvn:02X} {i:02X}", "card"
            )
        payload = {
            "protocol": "scp03",
            "card": card.hex(),
            "sd_aid": sd_aid.hex(),
            "channel": channel.session_state(),
            "keys": _keys_json(keys),
            "max_data_length": channel.max_data_length(),
        }
        return [external_authenticate], payload

    def _open_scp11b(self, body: dict[str, Any], card: bytes, sd_aid: bytes) -> tuple[list[bytes], dict[str, Any]]:
        kid, kvn = _byte(body, "kid"), _byte(body, "kvn")
        certificates = _hex(body, "certificates", min_len=1, max_len=4096)
        today = dt.datetime.now(dt.UTC).date()
        point = verify_card_chain(certificates, self.card_ca, card, sd_aid, today)
        channel = SCP11b(point, kvn, kid, SCP11B_KEY_USAGE)
        internal_authenticate = channel.internal_authenticate()
        payload = {
            "protocol": "scp11b",
            "card": card.hex(),
            "sd_aid": sd_aid.hex(),
            "channel": channel.session_state(),
            "max_data_length": channel.max_data_length(),
        }
        return [internal_authenticate], payload

    # --- exchange ---------------------------------------------------------------------

    def exchange(self, body: dict[str, Any]) -> dict[str, Any]:
        session = _session(body)
        state = _field(body, "state", str)
        responses = [_response(item) for item in _list(body, "responses")]
        requested = [_command(item) for item in _list(body, "commands")]
        payload = self.sealer.open(session, state)
        card, sd_aid = bytes.fromhex(payload["card"]), bytes.fromhex(payload["sd_aid"])
        context = {"session": session, "card": card.hex().upper(), "sd_aid": sd_aid.hex().upper()}

        # The policy first: a refused call moves nothing (docs/keyservice.md, exchange step 3).
        # Sealed personalisation data is opened here too, so a bad envelope moves nothing either.
        channel = self._restore(payload)
        checker = CallChecker(self.policy, sd_aid)
        plan: list[tuple[str, Any]] = []
        summaries: list[CommandSummary] = []
        try:
            for kind, value in requested:
                if kind == "apdu":
                    summaries.append(checker.check(value))
                    plan.append(("apdu", value))
                elif kind == "put_key":
                    summaries.append(summarize(bytes((0x80, 0xD8, value[1], 0x81)), ()))
                    plan.append((kind, value))
                elif kind == "put_dap_key":
                    plain = self._put_dap_key(replace=value)
                    summaries.append(summarize(plain))
                    plan.append(("apdu", plain))
                else:
                    for plain, summary in self._store_data(checker, value, card, channel, payload):
                        summaries.append(summary)
                        plan.append(("apdu", plain))
            checker.finish()
        except PolicyRefusal as refusal:
            self.journal.append(
                **context,
                action="refused",
                commands=[s.as_json() for s in summaries],
                outcome="refused",
                reason=str(refusal),
            )
            raise ServiceError(403, "policy", "platform", str(refusal)) from None
        except ServiceError as exc:
            self.journal.append(
                **context,
                action="refused",
                commands=[s.as_json() for s in summaries],
                outcome="refused",
                reason=exc.message,
            )
            raise

        answers: list[dict[str, Any]] = []
        for position, response in enumerate(responses):
            try:
                if isinstance(channel, SCP11b) and not channel.is_authenticated:
                    channel.complete(response)  # INTERNAL AUTHENTICATE: the receipt (Amd F §6.5.2.3)
                    answers.append(
                        {"sw": response[-2:].hex().upper(), "data": response[:-2].hex().upper(), "authenticated": True}
                    )
                    continue
                unwrapped = channel.unwrap_response(response)
                awaiting = payload.setdefault("awaiting", [])
                if awaiting:
                    self._note_key_information(payload, awaiting.pop(0), unwrapped)
            except MACError as exc:
                answers.append({"error": "integrity", "message": f"response {position}: {exc}"})
                self.journal.append(
                    **context,
                    action="integrity_failure",
                    commands=[],
                    outcome="channel closed",
                    reason=f"response {position}: R-MAC does not verify",
                )
                return {"responses": answers, "commands": [], "state": None}
            except AuthenticationError as exc:
                self.journal.append(
                    **context, action="integrity_failure", commands=[], outcome="channel closed", reason=str(exc)
                )
                raise channel_error(f"response {position}: {exc}", "card") from None
            except GPError as exc:
                raise channel_error(f"response {position} cannot be used: {exc}", "card") from None
            answers.append(
                {
                    "sw": f"{unwrapped.sw:04X}",
                    "data": unwrapped.data.hex().upper(),
                    "authenticated": unwrapped.authenticated,
                }
            )

        puts_keys = any(kind in ("put_key", "put_dap_key") for kind, _ in requested)
        if puts_keys and payload["protocol"] == "scp11b":
            not_yet = _enrolment_refusal(payload.get("enrolment", "unchecked"))
            if not_yet:
                self.journal.append(
                    **context,
                    action="refused",
                    commands=[s.as_json() for s in summaries],
                    outcome="refused",
                    reason=not_yet,
                )
                raise ServiceError(403, "policy", "platform", not_yet)

        wrapped: list[bytes] = []
        try:
            for kind, value in plan:
                plain = value if kind == "apdu" else self._put_key(channel, card, sd_aid, *value)
                wrapped.append(channel.wrap(plain))
        except GPError as exc:
            raise channel_error(f"cannot wrap: {exc}") from None
        payload["channel"] = channel.session_state()
        payload.setdefault("awaiting", []).extend(f"{x.ins:02X}{x.p1:02X}{x.p2:02X}" for x in summaries)
        new_state = self.sealer.seal(session, payload)
        self.journal.append(
            **context,
            action="wrap",
            commands=[s.as_json() for s in summaries],
            responses=[a.get("sw", "integrity") for a in answers],
            outcome="ok",
            reason="",
        )
        return {"responses": answers, "commands": [w.hex().upper() for w in wrapped], "state": new_state}

    @staticmethod
    def _note_key_information(payload: dict[str, Any], header: str, answer: SecuredResponse) -> None:
        """The SD's Key Information Template (GET DATA ``E0``, GP 2.3.1 §11.3.3.1), read inside
        the SCP11b channel: PUT KEY of the bank's keys is safe only if no one put keys before
        (only the SD's own SCP11 key pairs, KID 11/13/15 of Amd F §6.1, may be there)."""
        if header != "CA00E0" or payload["protocol"] != "scp11b":
            return
        if not answer.authenticated or answer.sw != SW.SUCCESS:
            payload["enrolment"] = "unchecked"
            return
        try:
            entries = parse_key_information(answer.data)
        except GPError:
            payload["enrolment"] = "unreadable"
            return
        foreign = sorted({f"{e.key_id:02X}/{e.kvn:02X}" for e in entries if e.key_id not in SCP11_SD_KEY_IDS})
        payload["enrolment"] = "clean" if not foreign else "foreign:" + ",".join(foreign)

    def _restore(self, payload: dict[str, Any]) -> SCP03 | SCP11b:
        try:
            if payload["protocol"] == "scp03":
                return SCP03.from_session_state(_keys_from_json(payload["keys"]), payload["channel"])
            restored = SCP11b.from_session_state(payload["channel"])
            assert isinstance(restored, SCP11b)  # noqa: S101 - from_session_state on SCP11b
            return restored
        except (GPError, KeyError, ValueError):
            raise channel_error("the state does not restore a channel") from None

    def _put_key(self, channel: SCP03 | SCP11b, card: bytes, sd_aid: bytes, kvn: int, replace: int) -> bytes:
        """PUT KEY of the bank's SCP03 key set ``kvn`` (AES-128, key ids 1..3), encrypted for the
        card by the channel (GP 2.3.1 §11.8.2.3, Amd D §7.2)."""
        keys = self.token.derive_static_keys(card, sd_aid, kvn)
        data = encode_put_key_symmetric(kvn, keys, channel.encrypt_key, algorithm="aes")
        # encode_put_key_symmetric starts with the new KVN, which put_key writes itself (§11.8.2.3).
        return commands.put_key(kvn, data[1:], old_kvn=replace, key_id=0x01)

    def _put_dap_key(self, *, replace: bool) -> bytes:
        """PUT KEY of the bank's DAP verification key (the token's ``dap`` public key) at KVN
        ``73``, key id 01 (GPC 2.3.1 §11.1.8, Amd E encoding; gp.dap.put_key_data); P1 ``73``
        when it replaces the SD's DAP key, ``00`` when it adds it (§11.8.2.1)."""
        data = dap.put_key_data(self.token.public_point(DAP_LABEL))
        # put_key_data starts with the new KVN, which put_key writes itself (§11.8.2.3).
        return commands.put_key(
            dap.DAP_KVN, data[1:], old_kvn=dap.DAP_KVN if replace else 0, key_id=dap.DAP_KEY_ID, multiple=False
        )

    def _store_data(
        self,
        checker: CallChecker,
        item: personalization.StoreDataItem,
        card: bytes,
        channel: SCP03 | SCP11b,
        payload: dict[str, Any],
    ) -> list[tuple[bytes, CommandSummary]]:
        """INSTALL [for personalization] and the STORE DATA blocks of a sealed envelope, opened
        in the token for this card and instance. The journal keeps the instance and the
        envelope's SHA-256 for each block, never the data (nor a hash of it)."""
        if not channel.security_level & SecurityLevel.C_DEC:  # the data goes to the card encrypted, or not at all
            raise ServiceError(403, "policy", "platform", "store_data needs a channel with C-DECRYPTION")
        install = commands.install_for_personalization(item.instance)
        out = [(install, checker.check(install))]  # the instance must be in the bank's range
        try:
            data = sealed.open_sealed(item.envelope, self.token.perso_ecdh, cin=card, aid=item.instance)
        except GPError as exc:
            raise ServiceError(
                400, "sealed", "platform", f"store_data for {item.instance.hex().upper()}: {exc}"
            ) from None
        block_size = min(item.block_size, self._mdl(payload))
        try:
            plains = personalization.personalization_commands(item.instance, data, item.format, block_size)
        except personalization.PersonalizationError as exc:
            raise bad_request(f"store_data for {item.instance.hex().upper()}: {exc}") from None
        envelope_hash = hashlib.sha256(item.envelope).hexdigest()
        if item.block is not None:  # one STORE DATA block; the platform sent INSTALL [for personalization]
            if item.block >= len(plains) - 1:
                raise bad_request(
                    f"store_data for {item.instance.hex().upper()}: block {item.block} of {len(plains) - 1}"
                )
            plain = plains[1 + item.block]
            return [(plain, CommandSummary(plain[1], plain[2], plain[3], (item.instance,), envelope_hash))]
        for plain in plains[1:]:
            ins, p1, p2 = plain[1], plain[2], plain[3]
            out.append((plain, CommandSummary(ins, p1, p2, (item.instance,), envelope_hash)))
        return out

    # --- code signing and personalisation keys ----------------------------------------

    def dap_public_key(self) -> dict[str, Any]:
        return {"point": self.token.public_point(DAP_LABEL).hex().upper()}

    def personalization_public_key(self) -> dict[str, Any]:
        return {"point": self.token.public_point(PERSO_LABEL).hex().upper()}

    def dap_signature(self, body: dict[str, Any]) -> dict[str, Any]:
        """The DAP (r || s) over an LFDB hash the bank approved with ``sign-release``; 403 otherwise."""
        digest = _hex(body, "lfdb_sha256", min_len=32, max_len=32)
        context = {"session": "", "card": "", "sd_aid": "", "commands": [], "lfdb_sha256": digest.hex()}
        approval = signing.approval_of(self.journal, digest)
        # A release the bank approved in its policy (approve-release: the code it lets into its
        # SSDs) is also code it signs; sign-release approves signing alone.
        in_policy = next((r for r in self.policy.releases if r.lfdb_sha256 == digest), None)
        if approval is None and in_policy is None:
            reason = (
                f"LFDB hash {digest.hex()} is not a release {self.policy.bank} approved "
                "(python -m keyservice approve-release or sign-release)"
            )
            self.journal.append(**context, action="refused", outcome="refused", reason=reason)
            raise ServiceError(403, "policy", "platform", reason)
        signature = self.token.dap_sign(digest)
        why = (
            f"approved at journal entry {approval['seq']}"
            if approval is not None
            else f"release approved in the policy by {in_policy.approved_by if in_policy else ''}"
        )
        self.journal.append(**context, action=signing.SIGNED, outcome="ok", reason=why)
        return {"signature": signature.hex().upper()}

    # --- the rest ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "bank": self.policy.bank,
            "status": "ok",
            "token": self.token.label,
            "oce_certificate": self.oce_certificate,
            "journal": {"size": self.journal.refresh().size, "head": self.journal.head.hash},
            "key_versions": self.token.key_versions(),
        }

    def journal_page(self, after: int) -> dict[str, Any]:
        head = self.journal.refresh()
        return {"entries": self.journal.entries(after), "head": {"size": head.size, "hash": head.hash}}


def _enrolment_refusal(enrolment: str) -> str:
    """Why ``put_key`` may not go into this SCP11b channel yet ("" when it may)."""
    if enrolment == "clean":
        return ""
    if enrolment.startswith("foreign:"):
        return f"put_key: the SD already holds other keys (KID/KVN {enrolment[8:]}): this is not its first enrolment"
    return (
        "put_key under SCP11b needs, earlier in this channel, the SD's authenticated answer to "
        "GET DATA E0 (key information) showing only its SCP11 keys"
    )


def _keys_json(keys: StaticKeys) -> dict[str, Any]:
    return {"enc": keys.enc.hex(), "mac": keys.mac.hex(), "dek": keys.dek.hex(), "kvn": keys.version}


def _keys_from_json(raw: dict[str, Any]) -> StaticKeys:
    return StaticKeys(bytes.fromhex(raw["enc"]), bytes.fromhex(raw["mac"]), bytes.fromhex(raw["dek"]), int(raw["kvn"]))


def _is_hex(value: object) -> bool:
    if not isinstance(value, str) or len(value) % 2 or len(value) < 4:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def _response(item: object) -> bytes:
    """One card answer: hex of data || SW (at least the two SW bytes)."""
    if not _is_hex(item):
        raise bad_request("every entry of 'responses' must be hex (data + SW)")
    return bytes.fromhex(str(item))


def _list(body: dict[str, Any], name: str) -> list[Any]:
    value = body.get(name, [])
    if not isinstance(value, list) or len(value) > 256:
        raise bad_request(f"{name!r} must be a list of at most 256 entries")
    return value


def _command(item: object) -> tuple[str, Any]:
    if isinstance(item, dict) and set(item) == {"apdu"} and _is_hex(item["apdu"]):
        return "apdu", bytes.fromhex(item["apdu"])
    if isinstance(item, dict) and set(item) == {"put_key"} and isinstance(item["put_key"], dict):
        spec = item["put_key"]
        kvn, replace = spec.get("kvn"), spec.get("replace", 0)
        if isinstance(kvn, int) and isinstance(replace, int) and 1 <= kvn <= 0x7F and 0 <= replace <= 0x7F:
            return "put_key", (kvn, replace)
        raise bad_request("put_key needs 'kvn' 1..127 and 'replace' 0..127")
    if isinstance(item, dict) and set(item) == {"put_dap_key"}:
        spec = item["put_dap_key"]
        if isinstance(spec, dict) and set(spec) <= {"replace"} and isinstance(spec.get("replace", False), bool):
            return "put_dap_key", bool(spec.get("replace", False))
        raise bad_request("put_dap_key is {} or {'replace': true|false}")
    if isinstance(item, dict) and set(item) == {"store_data"}:
        try:
            return "store_data", personalization.parse_item(item["store_data"])
        except personalization.PersonalizationError as exc:
            raise bad_request(str(exc)) from None
    raise bad_request(
        "each command is {'apdu': hex}, {'put_key': {'kvn': K, 'replace': R}}, {'put_dap_key': {}} "
        "or {'store_data': {'instance': hex, 'sealed': base64, 'format': 'raw'}}"
    )
