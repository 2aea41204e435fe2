"""The card's persistent state: one JSON-serialisable dict (the card's non-volatile memory).

Layout (all AIDs and byte strings are upper-case hex)::

    format        "cardsim/1"
    lifecycle     card life cycle state (GP 2.3.1 §11.1.1 Table 11-3), int
    atr iin cin kdd cplc
    memory_total  bytes of NVM for load files and instances
    auth_limit    consecutive failed EXTERNAL AUTHENTICATEs before a key set is blocked
    confirmation_counter   Delegated Management receipt counter (GP 2.3.1 §C.4)
    token_scheme  gp.dm scheme used with the ISD token verification key (KVN 70)
    ssd_initial_key        initial key set value of a new SSD (ENC = MAC = DEK)
    behaviours    {AID prefix: behaviour name} for applet instances (cardsim.applets)
    elfs          {ELF AID: {version, sd, modules[{aid, offset}], imports[[aid, major, minor]], rom, size, name}}
    apps          {AID: {elf, module, lifecycle, privileges, sd, params, data, perso?}}   (ISD and SSDs included;
                  ``data``: an SD's own STORE DATA objects by tag; ``perso``: an application's
                  personalisation, the blocks of its last complete STORE DATA sequence, hex)
    sds           {SD AID: {scp, i, keys {KVN: key record}, scp11 (optional, see cardsim.scp11)}}
    load          in-progress LOAD or null; discarded at power-up (a card pulled mid-LOAD)
    attestation   optional: the card's own signing key and certificate (cardsim.scp11)
    elf_upgrade   optional bool: the card implements GP Amendment H (MANAGE ELF UPGRADE); absent
                  in a file written before the card knew it, which reads as False
    upgrade       optional: the ELF upgrade session in progress or null (cardsim.handlers.upgrade)

Key records: ``{"type": "aes"|"des", "keys": [hex, ...], "counter": n, "failures": n}`` for
symmetric sets (ENC, MAC, DEK or a single key) and ``{"type": "ec", "q": hex}`` /
``{"type": "rsa", "n": hex, "e": hex}`` for public keys.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any, NotRequired, TypedDict, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cardsim.applets import DEFAULT_BEHAVIOURS
from cardsim.constants import (
    DEFAULT_ATR,
    DEFAULT_AUTH_LIMIT,
    DEFAULT_KEY,
    DEFAULT_KVN,
    DEFAULT_MEMORY,
    ISD_PRIVILEGES,
    RECEIPT_KVN,
    TOKEN_KVN,
)
from gp import dap
from gp.aids import ISD_AID, SSD_MODULE_AID, SSD_PACKAGE_AID
from gp.commands import CPLC_FIELDS, CardLifeCycle, Privileges, SecurityDomainLifeCycle
from gp.dap import DAP_KVN
from gp.dm import SCHEME_ECDSA_P256_SHA256, SCHEME_RSA_PKCS1V15_SHA256
from gp.errors import GPError, KeyMaterialError
from gp.javacard import ROM_PACKAGES
from gp.keys import StaticKeys, diversify
from gp.validity import TAG_EFFECTIVE_DATE, TAG_EXPIRATION_DATE, decode_date, encode_date

FORMAT = "cardsim/1"

# One record of elfs / apps / sds / load, or a key record: JSON objects whose fields are listed above.
Record = dict[str, Any]


class State(TypedDict):
    """The state file's top level (see the module docstring for what each field holds)."""

    format: str
    lifecycle: int
    atr: str
    iin: str
    cin: str
    kdd: str
    cplc: str
    memory_total: int
    auth_limit: int
    confirmation_counter: int
    token_scheme: str
    ssd_initial_key: str
    behaviours: dict[str, str]
    elfs: dict[str, Record]
    apps: dict[str, Record]
    sds: dict[str, Record]
    load: Record | None
    attestation: NotRequired[Record]
    elf_upgrade: NotRequired[bool]
    upgrade: NotRequired[Record | None]


def hx(data: bytes) -> str:
    return bytes(data).hex().upper()


def unhx(text: str) -> bytes:
    return bytes.fromhex(text)


def kvn_key(kvn: int) -> str:
    return f"{kvn:02X}"


def symmetric_record(kind: str, keys: list[bytes]) -> dict[str, Any]:
    return {"type": kind, "keys": [hx(k) for k in keys], "counter": 0, "failures": 0}


def public_key_record(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name != "secp256r1":
            raise KeyMaterialError("token verification key must be P-256 or RSA")
        q = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return {"type": "ec", "q": hx(q)}
    nums = key.public_numbers()
    n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
    e = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
    return {"type": "rsa", "n": hx(n), "e": hx(e)}


def load_public_key(record: dict[str, Any]) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if record["type"] == "ec":
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unhx(record["q"]))
    if record["type"] == "rsa":
        n = int.from_bytes(unhx(record["n"]), "big")
        e = int.from_bytes(unhx(record["e"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    raise KeyMaterialError(f"key of type {record['type']} is not a public key")


def static_keys(record: dict[str, Any], kvn: int) -> StaticKeys:
    keys = [unhx(k) for k in record["keys"]]
    if len(keys) != 3:
        raise KeyMaterialError("not a secure channel key set (ENC, MAC, DEK)")
    return StaticKeys(keys[0], keys[1], keys[2], kvn)


def default_cplc(cin: bytes) -> bytes:
    """42-byte CPLC (GP 2.3.1 §H.4 / gp.commands.CPLC_FIELDS) with the CIN's tail as IC serial number."""
    values = {
        "ic_fabricator": bytes.fromhex("4543"),
        "ic_type": bytes.fromhex("0001"),
        "os_id": bytes.fromhex("4353"),
        "os_release_date": bytes.fromhex("6330"),
        "os_release_level": bytes.fromhex("0100"),
        "ic_serial_number": cin[-4:].rjust(4, b"\x00"),
    }
    return b"".join(values.get(name, bytes(n)) for name, n in CPLC_FIELDS)


def new_state(
    *,
    scp: int = 0x03,
    key: bytes = DEFAULT_KEY,
    kvn: int | None = None,
    i: int | None = None,
    iin: bytes = b"ECARD",
    cin: bytes | None = None,
    kdd: bytes | None = None,
    diversify_scheme: str | None = None,
    memory: int = DEFAULT_MEMORY,
    auth_limit: int = DEFAULT_AUTH_LIMIT,
    token_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | None = None,
    token_scheme: str | None = None,
    receipt_key: bytes | None = None,
    ssd_initial_key: bytes = DEFAULT_KEY,
    lifecycle: int = CardLifeCycle.SECURED,
    behaviours: dict[str, str] | None = None,
    atr: bytes = DEFAULT_ATR,
    mandated_dap: bool = False,
    elf_upgrade: bool = True,
    mandated_dap_key: bytes | None = None,
    valid_from: dt.date | None = None,
    valid_until: dt.date | None = None,
    isd_keys: StaticKeys | None = None,
    cplc: bytes | None = None,
) -> State:
    """A fresh card (GP 2.3.1 §5.1: ISD in the card's life cycle state, ROM packages registered).

    ``key`` is the ISD's static key (ENC = MAC = DEK), or with ``diversify_scheme`` the master key
    from which the ISD keys are diversified with the card's KDD (``gp.keys.diversify``).
    ``mandated_dap`` gives the ISD the DAP Verification and Mandated DAP Verification privileges
    (GP 2.3.1 §6.6.1, §9.2.1: every load then needs the issuer's DAP, key put at KVN 73);
    ``elf_upgrade=False`` makes a card without GP Amendment H (MANAGE ELF UPGRADE answers 6D00).
    ``mandated_dap_key`` (an uncompressed P-256 point) is the issuer's DAP key, written at KVN 73 in
    the ISD as a personalisation bureau would. ``valid_from``/``valid_until`` are written as the
    ISD's ``5F25``/``5F24`` data objects (YYMMDD BCD, gp.validity), as a renewal's STORE DATA would.
    ``isd_keys`` (instead of ``key``) are the ISD's own ENC/MAC/DEK at their KVN, and ``cplc`` the
    card's CPLC: a card as its manufacturer's file describes it (``gp.manufacturer_file``).
    """
    if scp not in (0x02, 0x03):
        raise KeyMaterialError(f"SCP{scp:02X} is not supported (02 or 03)")
    cin = bytes(cin) if cin is not None else os.urandom(8)
    kdd = bytes(kdd) if kdd is not None else cin[-10:].rjust(10, b"\x00")
    if len(kdd) != 10:
        raise KeyMaterialError("key diversification data must be 10 bytes")
    if isd_keys is not None:
        kvn = isd_keys.version
    kvn = DEFAULT_KVN[scp] if kvn is None else kvn
    i = (0x70 if scp == 0x03 else 0x55) if i is None else i
    if isd_keys is not None:
        isd_keys_list = [isd_keys.enc, isd_keys.mac, isd_keys.dek]
    elif diversify_scheme:
        sk = diversify(diversify_scheme, key, kdd, kvn)
        isd_keys_list = [sk.enc, sk.mac, sk.dek]
    else:
        StaticKeys.single(key, kvn)  # validates the length
        isd_keys_list = [key, key, key]
    if scp == 0x02 and len(isd_keys_list[0]) != 16:
        raise KeyMaterialError("SCP02 needs a 16-byte (2-key 3DES) key")
    kind = "des" if scp == 0x02 else "aes"
    isd_sd: dict[str, Any] = {"scp": scp, "i": i, "keys": {kvn_key(kvn): symmetric_record(kind, isd_keys_list)}}
    if token_key is not None:
        isd_sd["keys"][kvn_key(TOKEN_KVN)] = public_key_record(token_key)
    if receipt_key is not None:
        isd_sd["keys"][kvn_key(RECEIPT_KVN)] = symmetric_record(
            "aes" if len(receipt_key) != 16 or scp == 3 else "des", [receipt_key]
        )
    if token_scheme is None:
        token_scheme = (
            SCHEME_RSA_PKCS1V15_SHA256 if isinstance(token_key, rsa.RSAPublicKey) else SCHEME_ECDSA_P256_SHA256
        )
    isd_privileges = ISD_PRIVILEGES
    if mandated_dap:
        isd_privileges |= Privileges.DAP_VERIFICATION | Privileges.MANDATED_DAP_VERIFICATION
    if mandated_dap_key is not None:
        dap.load_public_point(mandated_dap_key)  # a P-256 point, or KeyMaterialError
        isd_sd["keys"][kvn_key(DAP_KVN)] = {"type": "ec", "q": hx(mandated_dap_key)}
    elfs: dict[str, Any] = {}
    for aid, version, name in ROM_PACKAGES:
        modules = [{"aid": hx(SSD_MODULE_AID), "offset": 0}] if aid == SSD_PACKAGE_AID else []
        elfs[hx(aid)] = {
            "version": list(version),
            "sd": hx(ISD_AID),
            "modules": modules,
            "imports": [],
            "rom": True,
            "size": 0,
            "name": name,
        }
    isd_data: dict[str, str] = {}
    if valid_from is not None:
        isd_data[f"{TAG_EFFECTIVE_DATE:X}"] = hx(encode_date(valid_from))
    if valid_until is not None:
        isd_data[f"{TAG_EXPIRATION_DATE:X}"] = hx(encode_date(valid_until))
    apps = {
        hx(ISD_AID): {
            "elf": hx(SSD_PACKAGE_AID),
            "module": hx(SSD_MODULE_AID),
            "lifecycle": SecurityDomainLifeCycle.PERSONALIZED,
            "privileges": hx(isd_privileges.to_bytes()),
            "sd": hx(ISD_AID),
            "params": "",
            "data": isd_data,
        }
    }
    return {
        "format": FORMAT,
        "lifecycle": lifecycle,
        "atr": hx(atr),
        "iin": hx(iin),
        "cin": hx(cin),
        "kdd": hx(kdd),
        "cplc": hx(default_cplc(cin) if cplc is None else cplc),
        "memory_total": int(memory),
        "auth_limit": int(auth_limit),
        "confirmation_counter": 0,
        "token_scheme": token_scheme,
        "ssd_initial_key": hx(ssd_initial_key),
        "behaviours": dict(DEFAULT_BEHAVIOURS if behaviours is None else behaviours),
        "elfs": elfs,
        "apps": apps,
        "sds": {hx(ISD_AID): isd_sd},
        "load": None,
        "elf_upgrade": bool(elf_upgrade),
        "upgrade": None,
    }


_INT_FIELDS = ("lifecycle", "memory_total", "auth_limit", "confirmation_counter")
_TEXT_FIELDS = ("atr", "iin", "cin", "kdd", "cplc", "token_scheme", "ssd_initial_key")


def check_state(state: object) -> State:
    """Structural checks on a loaded state file (e.g. ``json.loads`` output); returns it as a
    :class:`State`, or raises ValueError when it is not a cardsim state."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("not a cardsim state file (format cardsim/1 expected)")
    for key in ("elfs", "apps", "sds", "behaviours"):
        if not isinstance(state.get(key), dict):
            raise ValueError(f"state file lacks {key!r}")
    for key in _INT_FIELDS:
        if not isinstance(state.get(key), int):
            raise ValueError(f"state file field {key!r} is not an integer")
    for key in _TEXT_FIELDS:
        if not isinstance(state.get(key), str):
            raise ValueError(f"state file field {key!r} is not a string")
    if state.get("load") is not None and not isinstance(state["load"], dict):
        raise ValueError("state file field 'load' is neither null nor an object")
    if "elf_upgrade" in state and not isinstance(state["elf_upgrade"], bool):
        raise ValueError("state file field 'elf_upgrade' is not a boolean")
    if state.get("upgrade") is not None and not isinstance(state["upgrade"], dict):
        raise ValueError("state file field 'upgrade' is neither null nor an object")
    if hx(ISD_AID) not in state["apps"] or hx(ISD_AID) not in state["sds"]:
        raise ValueError("state file has no Issuer Security Domain")
    # Every top-level field of State was checked above (the "load", "elf_upgrade" and "upgrade"
    # keys may be absent in a file written before they existed; readers use state.get()).
    return cast(State, state)


# ------------------------------------------------------------------ read-only views (tests, tools)


def key_versions(state: State, sd_aid: str | bytes) -> dict[int, str]:
    """The key versions an SD holds, with their kind (``aes``, ``des``, ``ec``, ``rsa``): never a value."""
    sd = state["sds"].get(sd_aid if isinstance(sd_aid, str) else hx(sd_aid))
    if sd is None:
        return {}
    return {int(kvn, 16): rec["type"] for kvn, rec in sd["keys"].items()}


def dap_key(state: State, sd_aid: str | bytes) -> bytes | None:
    """The SD's DAP verification key (public P-256 point at KVN 73, gp.dap), or None."""
    sd = state["sds"].get(sd_aid if isinstance(sd_aid, str) else hx(sd_aid))
    record = sd["keys"].get(kvn_key(DAP_KVN)) if sd is not None else None
    if record is None or record["type"] != "ec":
        return None
    return unhx(record["q"])


def personalization(state: State, aid: str | bytes) -> bytes | None:
    """The personalisation an application instance keeps (its last complete STORE DATA sequence,
    the blocks concatenated), or None if it has none or is not on the card. During an ELF upgrade
    the saved instances are looked up too: their data is kept for RESUME."""
    text = aid if isinstance(aid, str) else hx(aid)
    app = state["apps"].get(text)
    if app is None:
        session = state.get("upgrade")
        app = session["instances"].get(text) if session else None
    if app is None or app.get("perso") is None:
        return None
    return unhx(app["perso"])


def validity(state: State) -> tuple[dt.date | None, dt.date | None]:
    """The card's validity as its ISD holds it: effective (``5F25``) and expiration (``5F24``)
    dates, None where absent or not a date."""
    data = state["apps"][hx(ISD_AID)].get("data", {})
    dates: list[dt.date | None] = []
    for tag in (TAG_EFFECTIVE_DATE, TAG_EXPIRATION_DATE):
        value = data.get(f"{tag:X}")
        try:
            dates.append(decode_date(unhx(value)) if value else None)
        except (ValueError, GPError):
            dates.append(None)
    return dates[0], dates[1]
