"""SET STATUS (GP 2.3.1 §11.10), STORE DATA (§11.11) and PUT KEY (§11.8)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cardsim import scp11
from cardsim.handlers import content
from cardsim.handlers.common import ISD, _ok, _Reply, _sw
from cardsim.parsing import ParseError, parse_dgis, parse_tlvs
from cardsim.state import hx, kvn_key, public_key_record, symmetric_record
from gp.apdu import SW, CommandAPDU
from gp.commands import LOCKED_BIT, ApplicationLifeCycle, CardLifeCycle, Privileges, SecurityDomainLifeCycle
from gp.errors import EncodingError, GPError, KeyMaterialError
from gp.keys import (
    KEY_TYPE_AES,
    KEY_TYPE_DES,
    KEY_TYPE_EC_PARAM_REF,
    KEY_TYPE_EC_PRIVATE,
    KEY_TYPE_EC_PUBLIC,
    KEY_TYPE_RSA_E,
    KEY_TYPE_RSA_N,
    decode_put_key,
    kcv_aes,
    kcv_des,
    scp02_decrypt_key,
    scp03_decrypt_key,
)
from gp.scp.card import CardSCP02
from gp.scp11 import CardSCP11, parse_certificates
from gp.validity import VALIDITY_TAGS, decode_date

if TYPE_CHECKING:
    from cardsim.card import Card


# ------------------------------------------------------------------ SET STATUS (§11.10)


def set_status(card: Card, cmd: CommandAPDU, plain: bytes) -> bytes:
    card._require_session()
    priv = card._privileges(card.selected)
    if cmd.p1 == 0x80:
        if cmd.data:
            return _sw(SW.WRONG_DATA)
        return _set_card_state(card, cmd.p2, priv)
    if cmd.p1 not in (0x40, 0x60):
        return _sw(SW.INCORRECT_P1P2)
    aid = hx(cmd.data)
    if aid == ISD:
        return _sw(SW.WRONG_DATA)  # the ISD's state is the card's (P1 80)
    if aid == card.selected and cmd.p1 == 0x40 and cmd.p2 == SecurityDomainLifeCycle.PERSONALIZED:
        # GP 2.3.1 §11.10, §5.3.2: an SD may move itself from SELECTABLE to PERSONALIZED (the
        # bank's SSD closes its SCP11b window this way, docs/keyservice.md).
        return _personalise(card, card._apps[aid])
    app = content.owned_app(card, aid)
    targets = [aid]
    if cmd.p1 == 0x60:
        if not card._is_sd(aid):
            return _sw(SW.WRONG_DATA)
        targets += [a for a, other in card._apps.items() if other["sd"] == aid and a not in (aid, ISD)]
    if cmd.p2 == LOCKED_BIT:  # lock
        for a in targets:
            card._apps[a]["lifecycle"] |= LOCKED_BIT
    elif cmd.p2 == 0x00:  # unlock
        if not app["lifecycle"] & LOCKED_BIT:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
        for a in targets:
            card._apps[a]["lifecycle"] &= ~LOCKED_BIT & 0xFF
    elif cmd.p2 == SecurityDomainLifeCycle.PERSONALIZED and cmd.p1 == 0x40 and card._is_sd(aid):
        return _personalise(card, app)
    else:
        return _sw(SW.WRONG_DATA)  # application specific states are the application's own business
    card._changed()
    return _ok()


def _personalise(card: Card, sd: dict[str, Any]) -> bytes:
    if sd["lifecycle"] != ApplicationLifeCycle.SELECTABLE:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # §5.3.2: SELECTABLE → PERSONALIZED only
    sd["lifecycle"] = SecurityDomainLifeCycle.PERSONALIZED
    card._changed()
    return _ok()


def _set_card_state(card: Card, new: int, priv: Privileges) -> bytes:
    cur = card.state["lifecycle"]
    order = (CardLifeCycle.OP_READY, CardLifeCycle.INITIALIZED, CardLifeCycle.SECURED)
    isd = card.selected == ISD
    allowed = (
        (new == CardLifeCycle.TERMINATED and Privileges.CARD_TERMINATE in priv)
        or (new == CardLifeCycle.CARD_LOCKED and cur == CardLifeCycle.SECURED and Privileges.CARD_LOCK in priv)
        # §5.1.1.4: only the ISD unlocks
        or (new == CardLifeCycle.SECURED and cur == CardLifeCycle.CARD_LOCKED and isd)
        # §5.1.1: OP_READY → INITIALIZED → SECURED, never backwards
        or (cur in order and new in order and order.index(new) > order.index(cur) and isd)
    )
    if not allowed:
        lifecycle_change = new in (CardLifeCycle.CARD_LOCKED, CardLifeCycle.TERMINATED, CardLifeCycle.SECURED)
        return _sw(SW.CONDITIONS_NOT_SATISFIED if lifecycle_change else SW.WRONG_DATA)
    card.state["lifecycle"] = new
    card._changed()
    return _ok()


# ------------------------------------------------------------------ STORE DATA (§11.11)


def store_data(card: Card, cmd: CommandAPDU, plain: bytes) -> bytes:
    card._require_session()
    card._require_card_open()
    target = card.perso_target or card.selected
    if target not in card._apps:  # the application being personalised was deleted meanwhile
        card.perso_target = None
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    if cmd.p2 != card.store_next_block:
        return _sw(SW.INCORRECT_P1P2)  # block numbers run from 00 in sequence
    if target != card.selected and not card._is_sd(target):
        return _store_for_application(card, target, cmd)
    fmt = cmd.p1 & 0x18
    if target == card.selected and "scp11" in card._sds.get(target, {}) and cmd.data[:1] == b"\xa6":
        out = _store_scp11_data(card, target, cmd.data)
        if out[-2:] == b"\x90\x00":
            card.store_next_block = 0 if cmd.p1 & 0x80 else (card.store_next_block + 1) & 0xFF
        return out
    try:
        if fmt == 0x08:
            items = [(f"{dgi:04X}", value) for dgi, value in parse_dgis(cmd.data)]
        elif fmt in (0x10, 0x00):
            items = [(f"{t.tag:X}", t.value) for t in parse_tlvs(cmd.data)]
        else:
            return _sw(SW.INCORRECT_P1P2)
    except ParseError:
        return _sw(SW.WRONG_DATA)
    if target == ISD and not _validity_ok(items):
        return _sw(SW.WRONG_DATA)
    store = card._apps[target].setdefault("data", {})
    for tag, value in items:
        store[tag] = hx(value)
    card._changed()
    if cmd.p1 & 0x80:  # last block
        card.store_next_block = 0
        card.perso_target = None
    else:
        card.store_next_block = (card.store_next_block + 1) & 0xFF
    return _ok()


_VALIDITY_TAGS = {f"{tag:X}" for tag in VALIDITY_TAGS}


def _validity_ok(items: list[tuple[str, bytes]]) -> bool:
    """The ISD's validity data objects (``5F25`` effective, ``5F24`` expiration date) must be
    YYMMDD BCD dates, as EMV codes them (gp.validity); both are taken in the same state change."""
    for tag, value in items:
        if tag in _VALIDITY_TAGS:
            try:
                decode_date(value)
            except EncodingError:
                return False
    return True


def _store_for_application(card: Card, target: str, cmd: CommandAPDU) -> bytes:
    """STORE DATA the SD forwards to the application named by INSTALL [for personalization]
    (§11.11.1; the secure channel has already removed C-ENC and checked C-MAC). The application's
    format is its own business, so the blocks are kept as sent: pending (volatile) until the last
    block (P1 b8), then their concatenation *replaces* the instance's personalisation in one state
    change. A card pulled before the last block keeps the previous personalisation."""
    if len(cmd.data) > card._free():
        card.perso_target, card.perso_pending, card.store_next_block = None, b"", 0
        return _sw(SW.NOT_ENOUGH_MEMORY)
    card.perso_pending += cmd.data
    if not cmd.p1 & 0x80:
        card.store_next_block = (card.store_next_block + 1) & 0xFF
        return _ok()
    card._apps[target]["perso"] = hx(card.perso_pending)
    card.perso_target, card.perso_pending, card.store_next_block = None, b"", 0
    card._changed()
    return _ok()


def _store_scp11_data(card: Card, sd: str, data: bytes) -> bytes:
    """STORE DATA to an SD about its own SCP11 keys (Amd F §7.4): ``A6 { 83 KID KVN }`` names the
    key, then ``BF21`` is the certificate chain of an SD key (CERT.SD.ECKA last), or ``A6`` holds
    ``42`` with the CA-KLOC identifier of a trust anchor (``80`` 00 KLOC / 01 KLCC)."""
    try:
        tlvs = parse_tlvs(data)
        control = {t.tag: t.value for t in parse_tlvs(tlvs[0].value)}
    except ParseError:
        return _sw(SW.WRONG_DATA)
    reference = control.get(0x83, b"")
    if len(reference) != 2:
        return _sw(SW.WRONG_DATA)
    record = card._sds[sd]["scp11"]["keys"].get(scp11.ref(reference[0], reference[1]))
    if record is None:
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    rest = tlvs[1:]
    if len(rest) == 1 and rest[0].tag == 0xBF21 and record["use"] == "sd":
        try:
            chain = parse_certificates(rest[0].value)
        except GPError:
            return _sw(SW.WRONG_DATA)
        if not chain or chain[-1].public_key_point != scp11.public_point(record):
            return _sw(SW.WRONG_DATA)  # the chain must end with this key's own certificate
        record["certs"] = [hx(cert.encode()) for cert in chain]
    elif not rest and 0x42 in control and record["use"] == "anchor" and 0 < len(control[0x42]) <= 20:
        record["ca_id"] = hx(control[0x42])
    elif rest and rest[0].tag == 0x70:
        return _sw(SW.FUNCTION_NOT_SUPPORTED)  # certificate serial allowlists (not modelled)
    else:
        return _sw(SW.WRONG_DATA)
    card.scp11_pending = None
    card._changed()
    return _ok()


# ------------------------------------------------------------------ PUT KEY (§11.8)


def put_key(card: Card, cmd: CommandAPDU, plain: bytes) -> bytes:
    card._require_session()
    card._require_card_open()
    channel = card.channel
    if channel is None:  # _require_session() has checked; this narrows the type
        raise _Reply(SW.SECURITY_STATUS_NOT_SATISFIED)
    info = card._sds[card.selected]
    keys = info["keys"]
    if not cmd.data or cmd.p1 & 0x80 or not cmd.p2 & 0x7F:
        return _sw(SW.INCORRECT_P1P2 if cmd.data else SW.WRONG_DATA)
    if isinstance(channel, CardSCP02):
        dek02 = channel.session_dek

        def decrypt(enc: bytes, n: int | None) -> bytes:
            return scp02_decrypt_key(dek02, enc)
    else:
        # SCP03: the static DEK (Amd D §7.2); SCP11: the session's S-DEK (Amd F §6.5.3)
        dek03 = channel.session_dek if isinstance(channel, CardSCP11) else channel.keys.dek

        def decrypt(enc: bytes, n: int | None) -> bytes:
            return scp03_decrypt_key(dek03, enc, n)

    try:
        put = decode_put_key(cmd.data, decrypt)
    except (EncodingError, KeyMaterialError):
        return _sw(SW.WRONG_DATA)  # malformed key data or a key check value that does not match
    new = put.new_version
    if new in (0x00, 0xFF) or not put.components:
        return _sw(SW.WRONG_DATA)
    kid = cmd.p2 & 0x7F
    if kid in scp11.SCP11_KIDS and {c.key_type for c in put.components} & _EC_TYPES:
        return _put_scp11_key(card, info, kid, cmd.p1, new, put.components)
    record = _key_record(put.components, info["scp"])
    old = cmd.p1
    if old == 0x00:
        if kvn_key(new) in keys:
            return _sw(SW.WRONG_DATA)  # adding a key set whose version already exists
    else:
        if kvn_key(old) not in keys:
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if new != old and kvn_key(new) in keys:
            return _sw(SW.WRONG_DATA)
        del keys[kvn_key(old)]
    keys[kvn_key(new)] = record
    card._changed()
    kcvs = b""
    for comp in put.components:
        if comp.key_type == KEY_TYPE_AES:
            kcvs += kcv_aes(comp.value)
        elif comp.key_type == KEY_TYPE_DES:
            kcvs += kcv_des(comp.value)
    return _ok(bytes((new,)) + kcvs)  # §11.8.3.1: KVN followed by the key check values


_EC_TYPES = frozenset({KEY_TYPE_EC_PUBLIC, KEY_TYPE_EC_PRIVATE})


def _put_scp11_key(card: Card, info: dict[str, Any], kid: int, old: int, new: int, components: Any) -> bytes:
    """An SCP11 key by PUT KEY (Amd F §7.3): SK.SD.ECKA (B1 + F0) under KID 11/13/15, or a trust
    anchor PK.CA-KLOC.ECDSA (B0 + F0) under KID 10/20..2F. P1 names the version replaced (00:
    a new key). The answer is the KVN alone: ECC keys have no key check value."""
    try:
        record = scp11.ec_key_record(kid, {c.key_type: c.value for c in components})
    except (EncodingError, KeyMaterialError):
        return _sw(SW.WRONG_DATA)  # wrong kind of key for the KID, unknown curve, point off the curve
    store = info.setdefault("scp11", {"i": scp11.DEFAULT_I, "failures": 0, "keys": {}})["keys"]
    if old == 0x00:
        if scp11.ref(kid, new) in store:
            return _sw(SW.WRONG_DATA)
    else:
        if scp11.ref(kid, old) not in store:
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if new != old and scp11.ref(kid, new) in store:
            return _sw(SW.WRONG_DATA)
        del store[scp11.ref(kid, old)]
    store[scp11.ref(kid, new)] = record
    card.scp11_pending = None
    card._changed()
    return _ok(bytes((new,)))


def _key_record(components: tuple[Any, ...], scp: int) -> dict[str, Any]:
    types = {c.key_type for c in components}
    if types <= {KEY_TYPE_AES, KEY_TYPE_DES}:
        if len(types) != 1 or len(components) not in (1, 3):
            raise _Reply(SW.WRONG_DATA)
        kind = "aes" if KEY_TYPE_AES in types else "des"
        if len(components) == 3 and kind != ("des" if scp == 0x02 else "aes"):
            raise _Reply(SW.WRONG_DATA)  # a secure channel key set must suit the SD's SCP
        lengths = {len(c.value) for c in components}
        if len(lengths) != 1:
            raise _Reply(SW.WRONG_DATA)
        return symmetric_record(kind, [c.value for c in components])
    by_type = {c.key_type: c.value for c in components}
    try:
        if types == {KEY_TYPE_RSA_N, KEY_TYPE_RSA_E}:
            n = int.from_bytes(by_type[KEY_TYPE_RSA_N], "big")
            e = int.from_bytes(by_type[KEY_TYPE_RSA_E], "big")
            return public_key_record(rsa.RSAPublicNumbers(e, n).public_key())
        if types == {KEY_TYPE_EC_PUBLIC, KEY_TYPE_EC_PARAM_REF} and by_type[KEY_TYPE_EC_PARAM_REF] == b"\x00":
            return public_key_record(
                ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), by_type[KEY_TYPE_EC_PUBLIC])
            )
    except (ValueError, GPError) as exc:
        raise _Reply(SW.WRONG_DATA) from exc
    raise _Reply(SW.WRONG_DATA)
