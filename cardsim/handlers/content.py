"""Card content management: INSTALL (GP 2.3.1 §11.5), LOAD (§11.6) and DELETE (§11.2)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from cardsim import scp11
from cardsim.constants import INSTANCE_COST, ISSUER_ONLY_PRIVILEGES
from cardsim.handlers import upgrade
from cardsim.handlers.common import ISD, _ok, _Reply, _sw
from cardsim.parsing import InstallData, ParseError, parse_delete, parse_install, split_load_stream
from cardsim.state import dap_key, hx, kvn_key, symmetric_record, unhx
from gp import dap, dm
from gp.aids import SSD_MODULE_AID
from gp.apdu import SW, CommandAPDU
from gp.cap import LoadFile
from gp.commands import LOCKED_BIT, ApplicationLifeCycle, Privileges
from gp.errors import GPError
from gp.tlv import Tlv, decode_all, find

if TYPE_CHECKING:
    from cardsim.card import Card

_HASH_BY_LENGTH = {20: "sha1", 32: "sha256", 48: "sha384", 64: "sha512"}


def _hash_alg(length: int) -> str:
    alg = _HASH_BY_LENGTH.get(length)
    if alg is None:
        raise _Reply(SW.WRONG_DATA)
    return alg


# ------------------------------------------------------------------ INSTALL (§11.5)


def install(card: Card, cmd: CommandAPDU, plain: bytes) -> bytes:
    card._require_session()
    card._require_card_open()
    kind = cmd.p1 & 0x7E
    if cmd.p2 != 0x00 or cmd.p1 & 0x81 or kind not in (0x02, 0x04, 0x0C, 0x08, 0x10, 0x20, 0x40):
        return _sw(SW.INCORRECT_P1P2)
    try:
        data = parse_install(cmd.p1, cmd.data)
    except ParseError:
        return _sw(SW.WRONG_DATA)
    if kind == 0x20:
        return _install_for_personalization(card, data)
    mode = card._management_mode()
    if mode == "dm":
        card._check_token(plain)
    if kind == 0x02:
        return _install_for_load(card, data, mode)
    upgrade.refuse_during_session(card)  # the registry is frozen during an ELF upgrade
    if kind in (0x04, 0x0C):
        return _install_for_install(card, data, mode, make_selectable=bool(cmd.p1 & 0x08))
    if kind == 0x08:
        return _make_selectable(card, data)
    if kind == 0x10:
        return _extradite(card, data, mode)
    return _registry_update(card, data, mode)


def _install_for_load(card: Card, data: InstallData, mode: str) -> bytes:
    elf = hx(data.elf_aid)
    target = hx(data.sd_aid) if data.sd_aid else card.selected
    upgrade.refuse_during_session(card, loading_elf=elf, target_sd=target)  # only the awaited new version
    if elf in card._elfs or elf in card._apps:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # a Load File with this AID is already on the card
    if not card._is_sd(target):
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    if mode != "isd" and target != card.selected:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # an SSD loads only into itself
    daps = dap_sds(card, target)
    if data.lfdb_hash:
        _hash_alg(len(data.lfdb_hash))
        if daps and len(data.lfdb_hash) != len(dap.lfdb_hash(b"")):
            return _sw(SW.WRONG_DATA)  # the DAP scheme signs a SHA-256 LFDB hash (gp.dap)
    elif mode == "dm" or daps:
        # §C.3.1: the Load Token covers the LFDB hash; §9.2.1, §11.5.2.3.1: so does the DAP, so
        # the hash is mandatory whenever a DAP will be verified.
        return _sw(SW.WRONG_DATA)
    free = card._free()
    if data.params:
        try:
            ef = find(decode_all(data.params), 0xEF)
            c6 = find(ef.children(), 0xC6) if ef is not None else None
        except GPError:
            return _sw(SW.WRONG_DATA)
        if c6 is not None and int.from_bytes(c6.value, "big") > free:
            return _sw(SW.NOT_ENOUGH_MEMORY)  # §11.5.3.2: the declared code size does not fit
    if free <= 0:
        return _sw(SW.NOT_ENOUGH_MEMORY)
    card.state["load"] = {
        "elf": elf,
        "sd": target,
        "by": card.selected,
        "hash": hx(data.lfdb_hash),
        "next": 0,
        "data": "",
        "mode": mode,
        "daps": daps,
    }
    card._changed()
    return _ok(b"\x00")


def _install_for_install(card: Card, data: InstallData, mode: str, *, make_selectable: bool) -> bytes:
    elf_aid, module, app_aid = hx(data.elf_aid), hx(data.module_aid), hx(data.app_aid)
    elf = card._elfs.get(elf_aid)
    if elf is None or not (elf["rom"] or card._visible(elf["sd"])):
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)  # §11.5.3.2: ELF not found
    if module not in [m["aid"] for m in elf["modules"]]:
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    if app_aid in card._apps or app_aid in card._elfs:
        return _sw(SW.WRONG_DATA)  # the application AID is already in the registry
    priv = Privileges.from_bytes(data.privileges)
    is_sd = Privileges.SECURITY_DOMAIN in priv
    if is_sd != (module == hx(SSD_MODULE_AID)):
        return _sw(SW.WRONG_DATA)  # only the SSD module makes Security Domains (§7.2)
    if (Privileges.DELEGATED_MANAGEMENT in priv and Privileges.AUTHORIZED_MANAGEMENT in priv) or (
        not is_sd
        and priv & (Privileges.DELEGATED_MANAGEMENT | Privileges.AUTHORIZED_MANAGEMENT | Privileges.DAP_VERIFICATION)
    ):
        return _sw(SW.WRONG_DATA)  # §11.1.2: inconsistent privileges
    if mode != "isd" and priv & ISSUER_ONLY_PRIVILEGES:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # card-wide privileges stay with the issuer
    if Privileges.MANDATED_DAP_VERIFICATION in priv:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # Mandated DAP stays with the ISD (the issuer's own signature)
    scp, i = card._sds[ISD]["scp"], card._sds[ISD]["i"]
    if data.params:
        try:
            objs = decode_all(data.params)
        except GPError:
            return _sw(SW.WRONG_DATA)
        c9 = find(objs, 0xC9)
        if c9 is None:
            return _sw(SW.WRONG_DATA)  # §11.5.2.3.7: C9 is mandatory in install parameters
        if is_sd and c9.value:
            try:
                scp_param = find(decode_all(c9.value), 0x81)
            except GPError:
                scp_param = None
            if scp_param is not None:
                if len(scp_param.value) != 2 or scp_param.value[0] not in (0x02, 0x03, 0x11):
                    return _sw(SW.WRONG_DATA)
                scp, i = scp_param.value[0], scp_param.value[1]
    if card._free() < INSTANCE_COST * (2 if is_sd else 1):
        return _sw(SW.NOT_ENOUGH_MEMORY)
    owner = card.selected if elf["rom"] else elf["sd"]
    lifecycle = ApplicationLifeCycle.SELECTABLE if make_selectable else ApplicationLifeCycle.INSTALLED
    card._apps[app_aid] = {
        "elf": elf_aid,
        "module": module,
        "privileges": hx(priv.to_bytes()),
        "lifecycle": lifecycle,
        "sd": owner,
        "params": hx(data.params),
        "data": {},
    }
    if is_sd:
        # A new SSD gets the card's initial key set at the default KVN of its SCP (DESIGN §5.3:
        # its owner replaces it with PUT KEY in a session with the SSD).
        if scp == 0x11:
            # An SSD installed for SCP11 (81 02 11 i) gets no shared key at all: the card generates
            # its SCP11b key pair, certified by the card, in this same state change (Amd F §6.1).
            card._sds[app_aid] = {"scp": scp, "i": 0x00, "keys": {}}
            scp11.generate_sd_key(card.state, app_aid, random=card._random)
            card._sds[app_aid]["scp11"]["i"] = i
        else:
            key = unhx(card.state["ssd_initial_key"])
            kind = "des" if scp == 0x02 else "aes"
            kvn = 0x20 if scp == 0x02 else 0x30
            card._sds[app_aid] = {"scp": scp, "i": i, "keys": {kvn_key(kvn): symmetric_record(kind, [key] * 3)}}
    card._changed()
    return _ok(card._confirmation(mode, lambda c, u: dm.install_receipt_data(c, u, data.elf_aid, data.app_aid)))


def owned_app(card: Card, aid: str) -> dict[str, Any]:
    app = card._apps.get(aid)
    if app is None or aid == ISD or not card._visible(app["sd"]):
        raise _Reply(SW.REFERENCED_DATA_NOT_FOUND)
    return app


def _make_selectable(card: Card, data: InstallData) -> bytes:
    app = owned_app(card, hx(data.app_aid))
    if app["lifecycle"] != ApplicationLifeCycle.INSTALLED:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)
    app["lifecycle"] = ApplicationLifeCycle.SELECTABLE
    card._changed()
    return _ok(b"\x00")


def _descendant_sds(card: Card, sd: str) -> set[str]:
    out = {sd}
    grew = True
    while grew:
        grew = False
        for aid, app in card._apps.items():
            if aid not in out and aid != ISD and app["sd"] in out and card._is_sd(aid):
                out.add(aid)
                grew = True
    return out


def _extradite(card: Card, data: InstallData, mode: str) -> bytes:
    """INSTALL [for extradition] (§11.5.2.3.4): associate an application or ELF with another SD."""
    aid, target = hx(data.app_aid), hx(data.sd_aid)
    obj = card._apps.get(aid) or card._elfs.get(aid)
    if obj is None or aid == ISD or not card._visible(obj["sd"]):
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    if obj.get("rom"):
        return _sw(SW.CONDITIONS_NOT_SATISFIED)
    if not card._is_sd(target):
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    if card._is_sd(aid) and target in _descendant_sds(card, aid):
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # an SD cannot be associated with itself or its own SDs
    old = obj["sd"]
    obj["sd"] = target
    card._changed()
    return _ok(
        card._confirmation(mode, lambda c, u: dm.extradition_receipt_data(c, u, unhx(old), data.app_aid, data.sd_aid))
    )


def _registry_update(card: Card, data: InstallData, mode: str) -> bytes:
    """INSTALL [for registry update] (§11.5.2.3.5): privileges, parameters or association."""
    aid = hx(data.app_aid)
    app = owned_app(card, aid)
    old = app["sd"]
    if data.sd_aid:
        target = hx(data.sd_aid)
        if not card._is_sd(target):
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
        if card._is_sd(aid) and target in _descendant_sds(card, aid):
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
    if data.privileges:
        priv = Privileges.from_bytes(data.privileges)
        if (Privileges.SECURITY_DOMAIN in priv) != card._is_sd(aid):
            return _sw(SW.WRONG_DATA)
        if mode != "isd" and priv & ISSUER_ONLY_PRIVILEGES:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
        if Privileges.MANDATED_DAP_VERIFICATION in priv:
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # only the ISD holds Mandated DAP
        if Privileges.DAP_VERIFICATION in priv and not card._is_sd(aid):
            return _sw(SW.WRONG_DATA)
        app["privileges"] = hx(priv.to_bytes())
    if data.sd_aid:
        app["sd"] = hx(data.sd_aid)
    if data.params:
        app["params"] = hx(data.params)
    card._changed()
    return _ok(
        card._confirmation(
            mode,
            lambda c, u: dm.registry_update_receipt_data(
                c, u, unhx(old), data.app_aid, unhx(app["sd"]), data.privileges, data.params
            ),
        )
    )


def _install_for_personalization(card: Card, data: InstallData) -> bytes:
    """INSTALL [for personalization] (§11.5.2.3.6): the following STORE DATA go to that application,
    which must be associated with the SD receiving the command (the ISD included: it personalises
    only its own applications, not a bank's); otherwise 6A88 (§11.5.3.2, referenced data not found)."""
    aid = hx(data.app_aid)
    app = card._apps.get(aid)
    if app is None or aid == ISD or aid == card.selected or app["sd"] != card.selected:
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    if app["lifecycle"] & LOCKED_BIT:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)
    card.perso_target = aid
    card.store_next_block = 0
    card.perso_pending = b""
    return _ok(b"\x00")


# ------------------------------------------------------------------ LOAD (§11.6)


def load(card: Card, cmd: CommandAPDU, plain: bytes) -> bytes:
    card._require_session()
    load = card.state.get("load")
    if load is None or load["by"] != card.selected:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # LOAD without a preceding INSTALL [for load]
    if cmd.p1 not in (0x00, 0x80):
        card._abort_load()
        return _sw(SW.INCORRECT_P1P2)
    if cmd.p2 != load["next"]:
        card._abort_load()
        return _sw(SW.INCORRECT_P1P2)  # blocks must come in sequence from 00 (§11.6.2.2)
    if not cmd.data:
        card._abort_load()
        return _sw(SW.WRONG_LENGTH)
    stream = unhx(load["data"]) + cmd.data
    if len(cmd.data) > card._free():
        card._abort_load()
        return _sw(SW.NOT_ENOUGH_MEMORY)  # §11.6.3.2: not enough memory space
    try:
        header = split_load_stream(stream)
    except ParseError:
        card._abort_load()
        return _sw(SW.WRONG_DATA)
    if header is not None and len(stream) > header[1] + header[2]:
        card._abort_load()
        return _sw(SW.WRONG_DATA)  # more data than the C4 length announced
    if cmd.p1 == 0x00:
        load["data"] = hx(stream)
        load["next"] += 1
        card._changed()
        return _ok()
    return _finish_load(card, load, stream, header)


def _finish_load(card: Card, load: dict[str, Any], stream: bytes, header: tuple[Any, int, int] | None) -> bytes:
    card._abort_load()  # whatever the outcome, the LOAD sequence is over
    if header is None or len(stream) != header[1] + header[2]:
        return _sw(SW.WRONG_DATA)
    lfdb = stream[header[1] :]
    if load.get("daps") and not _daps_verify(card, load["daps"], header[0], dap.lfdb_hash(lfdb)):
        return _sw(SW.SECURITY_STATUS_NOT_SATISFIED)  # §9.2.1: DAP verification failed
    if load["hash"]:
        expected = unhx(load["hash"])
        if hashlib.new(_hash_alg(len(expected)), lfdb).digest() != expected:
            return _sw(SW.WRONG_DATA)  # §C.2: LFDB hash differs from INSTALL [for load]
    try:
        lf = LoadFile.from_bytes(lfdb)
    except GPError:
        return _sw(SW.WRONG_DATA)
    if hx(lf.package_aid) != load["elf"]:
        return _sw(SW.WRONG_DATA)
    for imp in lf.imports:
        dep = card._elfs.get(hx(imp.aid))
        # Linking: same major version, minor version at least the imported one (JCVM §4.5.2).
        if dep is None or dep["version"][0] != imp.version[0] or dep["version"][1] < imp.version[1]:
            # GP 2.3.1 §11.6.3.2 lists only 6581/6A84 for LOAD itself; the missing object is a
            # package the Load File references, and GP answers 6A88 for a referenced AID absent
            # from the registry (INSTALL §11.5.3.2, DELETE §11.2.3.2): the same here.
            return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    for applet in lf.applets:
        if hx(applet.aid) in card._apps or hx(applet.aid) in card._elfs:
            return _sw(SW.WRONG_DATA)
    card._elfs[load["elf"]] = {
        "version": list(lf.package_version),
        "sd": load["sd"],
        "modules": [{"aid": hx(a.aid), "offset": a.install_method_offset} for a in lf.applets],
        "imports": [[hx(i.aid), i.version[0], i.version[1]] for i in lf.imports],
        "rom": False,
        "size": len(lfdb),
        "name": lf.package_name or "",
    }
    upgrade.new_version_loaded(card, load["elf"])  # Amendment H: in the same state change
    card._changed()
    return _ok(
        card._confirmation(load["mode"], lambda c, u: dm.load_receipt_data(c, u, unhx(load["elf"]), unhx(load["sd"])))
    )


def dap_sds(card: Card, target: str) -> list[str]:
    """The Security Domains whose DAP a load into ``target`` needs (GP 2.3.1 §9.2.1): the associated
    SD when it has the DAP Verification privilege, and every SD with Mandated DAP Verification
    (on this card only the ISD can hold it) whatever the target."""
    out = []
    if Privileges.DAP_VERIFICATION in card._privileges(target):
        out.append(target)
    for aid in card._sds:
        if aid != target and aid in card._apps and Privileges.MANDATED_DAP_VERIFICATION in card._privileges(aid):
            out.append(aid)
    return out


def _daps_verify(card: Card, required: list[str], blocks: list[Tlv], lfdb_hash: bytes) -> bool:
    """Every required SD has a DAP block ``E2 { 4F <SD AID>, C3 <signature> }`` (§11.6.2.3) whose
    signature verifies under its DAP key (KVN 73, gp.dap) over the hash of the LFDB as received."""
    signatures: dict[str, bytes] = {}
    for block in blocks:
        try:
            inner = {t.tag: t.value for t in decode_all(block.value)}
        except GPError:
            return False
        if 0x4F in inner and 0xC3 in inner:
            signatures.setdefault(hx(inner[0x4F]), inner[0xC3])
    for sd in required:
        point = dap_key(card.state, sd)
        signature = signatures.get(sd)
        if point is None or signature is None:
            return False  # no DAP key to verify with, or no DAP block for this SD
        try:
            if not dap.verify(point, lfdb_hash, signature):
                return False
        except GPError:
            return False
    return True


# ------------------------------------------------------------------ DELETE (§11.2)


def delete(card: Card, cmd: CommandAPDU, plain: bytes) -> bytes:
    card._require_session()
    card._require_card_open()
    if cmd.p1 != 0x00 or cmd.p2 not in (0x00, 0x80):
        return _sw(SW.INCORRECT_P1P2)
    try:
        data = parse_delete(cmd.data)
    except ParseError:
        return _sw(SW.WRONG_DATA)
    if not data.aid:
        return _delete_key(card, data.kvn, data.key_id)
    mode = card._management_mode()
    if mode == "dm":
        card._check_token(plain)
    upgrade.refuse_during_session(card)  # the registry is frozen during an ELF upgrade
    aid = hx(data.aid)
    obj = card._apps.get(aid) or card._elfs.get(aid)
    if obj is None or not card._visible(obj["sd"]):
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    if aid == ISD or obj.get("rom") or aid == card.selected:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)  # §11.2.2.1: the ISD and ROM content cannot be deleted
    apps, elfs = _deletion_set(card, aid, related=cmd.p2 == 0x80)
    for other, elf in card._elfs.items():
        if other not in elfs and any(i[0] in elfs for i in elf["imports"]):
            return _sw(SW.CONDITIONS_NOT_SATISFIED)  # another Load File still imports it
    for other, app in card._apps.items():
        if other not in apps and (app["elf"] in elfs or app["sd"] in apps):
            return _sw(SW.CONDITIONS_NOT_SATISFIED)
    if card.selected in apps:
        return _sw(SW.CONDITIONS_NOT_SATISFIED)
    for a in apps:
        del card._apps[a]
        card._sds.pop(a, None)
    if card.perso_target in apps:
        card.perso_target, card.perso_pending = None, b""
    for e in elfs:
        del card._elfs[e]
    card._changed()
    return _ok(card._confirmation(mode, lambda c, u: dm.delete_receipt_data(c, u, data.aid)))


def _deletion_set(card: Card, aid: str, *, related: bool) -> tuple[set[str], set[str]]:
    """The object and, with P2 80, its related objects (§11.2.2.1): an ELF's applications,
    an SD's associated applications and Load Files (recursively). Without P2 80 an object
    with dependants is refused (6985)."""
    apps: set[str] = set()
    elfs: set[str] = set()
    todo = [aid]
    while todo:
        cur = todo.pop()
        if cur in card._elfs:
            if cur in elfs:
                continue
            elfs.add(cur)
            children = [a for a, app in card._apps.items() if app["elf"] == cur]
        else:
            if cur in apps:
                continue
            apps.add(cur)
            children = []
            if card._is_sd(cur):
                children = [a for a, app in card._apps.items() if app["sd"] == cur and a != cur]
                children += [e for e, elf in card._elfs.items() if elf["sd"] == cur]
        if children and not related:
            raise _Reply(SW.CONDITIONS_NOT_SATISFIED)
        todo.extend(children)
    if any(card._elfs[e]["rom"] for e in elfs) or ISD in apps:
        raise _Reply(SW.CONDITIONS_NOT_SATISFIED)
    return apps, elfs


def _delete_key(card: Card, kvn: int | None, key_id: int | None) -> bytes:
    keys = card._sds[card.selected]["keys"]
    if kvn is None or kvn_key(kvn) not in keys:
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)
    if key_id not in (None, 1):
        return _sw(SW.REFERENCED_DATA_NOT_FOUND)  # keys are deleted as whole key sets
    del keys[kvn_key(kvn)]
    card._changed()
    return _ok(b"\x00")
