"""SCP11 on the emulated card (GPC Amendment F): each SD's ECKA keys, its trust anchors, its
certificate store, and the card's own attestation key that certifies keys generated on the card.

State (all inside the JSON state, see :mod:`cardsim.state`)::

    sds[SD].scp11   {"i": int, "failures": n, "keys": {"KID/KVN": key record}}
    attestation     {"curve": int, "d": hex, "certs": [hex], "issued": n}   (card-wide, optional)

Key records, named by key identifier and version as PUT KEY's P2 and data name them:

* ``{"use": "sd", "curve": c, "d": hex, "certs": [hex, ...]}`` — SK.SD.ECKA of SCP11a/b/c
  (KID 11, 13, 15; Amd F §6.1) with its certificate chain, CERT.SD.ECKA last (GET DATA BF21);
* ``{"use": "anchor", "curve": c, "q": hex, "ca_id": hex}`` — PK.CA-KLOC.ECDSA, a trust anchor
  for OCE chains (KID 10 or 20..2F), with the CA-KLOC identifier its certificates name.

``curve`` is the key parameter reference (GPC 2.3.1 Table B-2: 00 P-256, 01 P-384).

A key pair generated on the card (an SSD installed for SCP11, or ``init --scp 11`` for the ISD)
is written in the same state change as what caused it, so a card pulled mid-generation keeps
either no key or the whole key with its chain (the state file is replaced atomically).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec

from cardsim.state import hx, unhx
from gp.aids import ISD_AID
from gp.errors import EncodingError, KeyMaterialError
from gp.keys import KEY_TYPE_EC_PARAM_REF, KEY_TYPE_EC_PRIVATE, KEY_TYPE_EC_PUBLIC
from gp.scp11 import CardSCP11, CertificateAuthority, Curve, KeyPair, KeyUsage, SCP11Variant, SDKey, TrustAnchor
from gp.scp11.crypto import encode_point, private_key, public_key
from gp.tlv import encode_tlv

if TYPE_CHECKING:
    from cardsim.state import State

SD_KIDS = frozenset(v.value for v in SCP11Variant)  # 11 SCP11a, 13 SCP11b, 15 SCP11c (Amd F §6.1)
ANCHOR_KIDS = frozenset({0x10, *range(0x20, 0x30)})  # PK.CA-KLOC.ECDSA (Amd F §6.1, Table 6-1)
SCP11_KIDS = SD_KIDS | ANCHOR_KIDS
DEFAULT_SD_KEY = (SCP11Variant.B.value, 0x01)  # DESIGN §8: SCP11b, KID 13, KVN 01
DEFAULT_I = 0x00  # SCP11 "i" (Amd F §5.1): no options beyond the mandatory ones
ATTESTATION_LIFETIME = dt.timedelta(days=20 * 365)


def ref(kid: int, kvn: int) -> str:
    return f"{kid:02X}/{kvn:02X}"


def parse_ref(text: str) -> tuple[int, int]:
    kid, _, kvn = text.partition("/")
    return int(kid, 16), int(kvn, 16)


def _scalar_hex(keys: KeyPair) -> str:
    return hx(keys.private_scalar.to_bytes(keys.curve.field_bytes, "big"))


def default_ca_identifier(point: bytes) -> bytes:
    """The CA-KLOC identifier assumed for an anchor put without one: SHA-1 of the public key
    (RFC 5280 §4.2.1.2, method 1, the key identifier X.509 CAs usually carry)."""
    return hashlib.sha1(point).digest()  # noqa: S324 - an identifier, not a security hash


# ------------------------------------------------------------------ the card's attestation key


def provision_attestation(
    state: State, ca: CertificateAuthority, today: dt.date, *, curve: Curve = Curve.P256, random: Callable[[int], bytes]
) -> None:
    """Give the card its own signing key, certified by the issuer's CA (as an eUICC carries an
    EUM-certified key): it certifies the SD keys the card generates from then on."""
    keys = KeyPair.generate(curve, random)
    cin = unhx(state["cin"])
    cert = ca.sub_ca(
        keys,
        cin,
        serial_number=cin,
        expiration_date=today + ATTESTATION_LIFETIME,
    )[1]
    state["attestation"] = {
        "curve": int(curve),
        "d": _scalar_hex(keys),
        "certs": [hx(cert.encode())],
        "expires": (today + ATTESTATION_LIFETIME).isoformat(),
        "issued": 0,
    }


def generate_sd_key(
    state: State,
    sd_aid: str,
    *,
    kid: int = DEFAULT_SD_KEY[0],
    kvn: int = DEFAULT_SD_KEY[1],
    curve: Curve = Curve.P256,
    random: Callable[[int], bytes],
) -> ec.EllipticCurvePublicKey:
    """Generate SK.SD.ECKA for ``sd_aid`` on the card and certify it with the card's attestation
    key when it has one (chain: the attestation certificate, then CERT.SD.ECKA). The caller
    marks the state changed; nothing is written before the key and its chain are complete."""
    if kid not in SD_KIDS:
        raise KeyMaterialError(f"KID {kid:02X} is not an SCP11 SD key")
    keys = KeyPair.generate(curve, random)
    certs: list[str] = []
    attestation = state.get("attestation")
    if attestation is not None:
        issuer_keys = KeyPair(private_key(Curve(attestation["curve"]), int(attestation["d"], 16)))
        issuer = CertificateAuthority(issuer_keys, unhx(state["cin"]), "E-Card card attestation")
        attestation["issued"] += 1
        cert = issuer.issue(
            serial_number=attestation["issued"].to_bytes(4, "big"),
            subject_identifier=unhx(sd_aid)[:16],
            public_key=keys.public_key,
            key_usage=KeyUsage.KEY_AGREEMENT,
            expiration_date=dt.date.fromisoformat(attestation["expires"]),
        )
        certs = [*attestation["certs"], hx(cert.encode())]
    sd = state["sds"][sd_aid].setdefault("scp11", {"i": DEFAULT_I, "failures": 0, "keys": {}})
    sd["keys"][ref(kid, kvn)] = {
        "use": "sd",
        "curve": int(curve),
        "d": _scalar_hex(keys),
        "certs": certs,
    }
    return keys.public_key


# ------------------------------------------------------------------ records -> gp.scp11


def card_channel(sd_record: dict[str, Any], today: Callable[[], dt.date], random: Callable[[int], bytes]) -> CardSCP11:
    """The card side of SCP11 for one SD, from its records."""
    sd_keys, anchors = [], []
    for text, rec in sd_record["scp11"]["keys"].items():
        kid, kvn = parse_ref(text)
        curve = Curve(rec["curve"])
        if rec["use"] == "sd":
            certs = tuple(unhx(c) for c in rec["certs"])
            sd_keys.append(SDKey(private_key(curve, int(rec["d"], 16)), kvn, kid, certs))
        else:
            anchors.append(TrustAnchor(curve, unhx(rec["q"]), unhx(rec["ca_id"]), kvn, kid))
    return CardSCP11(sd_keys, anchors, today=today, random=random)


def certificate_store(sd_record: dict[str, Any], kid: int | None = None, kvn: int | None = None) -> bytes | None:
    """``BF21`` with the chain of the named SD key (or the first SD key), or None (Amd F §7.4.2)."""
    keys = sd_record.get("scp11", {}).get("keys", {})
    if kid is None or kvn is None:
        names = sorted(k for k, r in keys.items() if r["use"] == "sd")
        preferred = ref(*DEFAULT_SD_KEY)
        name = preferred if preferred in names else (names[0] if names else None)
    else:
        name = ref(kid, kvn)
    rec = keys.get(name) if name else None
    if rec is None or rec["use"] != "sd":
        return None
    return encode_tlv(0xBF21, b"".join(unhx(c) for c in rec["certs"]))


def key_information(sd_record: dict[str, Any]) -> bytes:
    """``C0`` entries of the SCP11 keys for the Key Information Template (GPC 2.3.1 §11.3.3.1):
    KID, KVN, then key type and length pairs (B1 or B0 with the key's length, F0 of length 1)."""
    out = b""
    for text, rec in sorted(sd_record.get("scp11", {}).get("keys", {}).items()):
        kid, kvn = parse_ref(text)
        curve = Curve(rec["curve"])
        if rec["use"] == "sd":
            kind, length = KEY_TYPE_EC_PRIVATE, curve.field_bytes
        else:
            kind, length = KEY_TYPE_EC_PUBLIC, curve.point_length
        out += encode_tlv(0xC0, bytes((kid, kvn, kind, length, KEY_TYPE_EC_PARAM_REF, 1)))
    return out


def ec_key_record(kid: int, components: dict[int, bytes]) -> dict[str, Any]:
    """A key record from PUT KEY's ECC components (B1 or B0 with F0; GPC 2.3.1 §11.8.2.3,
    Amd F §7.3). Raises EncodingError for anything else: the wrong kind of key for the KID, an
    unknown curve, a scalar out of range or a point not on the curve."""
    if set(components) not in (
        {KEY_TYPE_EC_PRIVATE, KEY_TYPE_EC_PARAM_REF},
        {KEY_TYPE_EC_PUBLIC, KEY_TYPE_EC_PARAM_REF},
    ):
        raise EncodingError("an ECC key is a private or public key with its parameter reference (F0)")
    param = components[KEY_TYPE_EC_PARAM_REF]
    try:
        curve = Curve(param[0]) if len(param) == 1 else None
    except ValueError:
        curve = None
    if curve is None:
        raise EncodingError("unsupported key parameter reference")
    if KEY_TYPE_EC_PRIVATE in components:
        if kid not in SD_KIDS:
            raise EncodingError(f"KID {kid:02X} does not take an ECC private key")
        scalar = components[KEY_TYPE_EC_PRIVATE]
        if len(scalar) != curve.field_bytes or not 0 < int.from_bytes(scalar, "big") < curve.order:
            raise EncodingError("ECC private key out of range for its curve")
        return {"use": "sd", "curve": int(curve), "d": hx(scalar), "certs": []}
    if kid not in ANCHOR_KIDS:
        raise EncodingError(f"KID {kid:02X} does not take an ECC public key")
    point = components[KEY_TYPE_EC_PUBLIC]
    public_key(curve, point)  # raises for a point not on the curve
    return {"use": "anchor", "curve": int(curve), "q": hx(point), "ca_id": hx(default_ca_identifier(point))}


def public_point(rec: dict[str, Any]) -> bytes:
    """The public point of a key record (the SD key's PK.SD.ECKA, or the anchor)."""
    if rec["use"] == "sd":
        return encode_point(private_key(Curve(rec["curve"]), int(rec["d"], 16)).public_key())
    return unhx(rec["q"])


def provision_card(
    state: State,
    *,
    today: dt.date,
    ca: CertificateAuthority | None = None,
    curve: Curve = Curve.P256,
    random: Callable[[int], bytes],
) -> CertificateAuthority:
    """``init --scp 11`` (DESIGN §8): the card gets its attestation key, certified by ``ca`` (the
    card issuer's CA; a fresh one when None), and the ISD an SCP11b key pair (KID 13, KVN 01)
    with its chain, beside its SCP03 keys. The CA's public key is kept with the attestation
    record for whoever checks the chain; its private key never enters the card."""
    if ca is None:
        ca = CertificateAuthority.generate(b"ECARD-CA", curve, "E-Card card issuer CA", random)
    provision_attestation(state, ca, today, curve=curve, random=random)
    state["attestation"]["issuer"] = {
        "curve": int(ca.keys.curve),
        "q": hx(ca.keys.public_point),
        "ca_id": hx(ca.identifier),
    }
    generate_sd_key(state, hx(ISD_AID), curve=curve, random=random)
    return ca


def issuer_anchor(state: State) -> TrustAnchor | None:
    """The card issuer CA that certified the card (for hosts checking a BF21 chain)."""
    attestation = state.get("attestation")
    if attestation is None or "issuer" not in attestation:
        return None
    issuer = attestation["issuer"]
    return TrustAnchor(Curve(issuer["curve"]), unhx(issuer["q"]), unhx(issuer["ca_id"]))
