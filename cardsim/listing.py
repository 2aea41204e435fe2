"""Card manager style listing of a card state (``python -m cardsim show``). Never shows key values."""

from __future__ import annotations

from typing import Any

from cardsim.state import State, hx, unhx, validity
from gp.aids import ISD_AID
from gp.commands import Privileges, lifecycle_name

_KEY_NAMES = {"aes": "AES", "des": "3DES", "rsa": "RSA public", "ec": "EC P-256 public"}


def _privileges(text: str) -> str:
    names = Privileges.from_bytes(unhx(text)).names
    return ", ".join(n.replace("_", " ").title().replace(" ", "") for n in names) or "none"


def _key_lines(keys: dict[str, Any]) -> list[str]:
    out = []
    for kvn, rec in keys.items():
        kind = _KEY_NAMES.get(rec["type"], rec["type"])
        if rec["type"] in ("aes", "des"):
            bits = len(rec["keys"][0]) // 2 * 8
            size = f"-{bits}" if rec["type"] == "aes" else f" {bits // 8} bytes"
            what = f"{kind}{size} x{len(rec['keys'])}"
            extra = f" counter={rec['counter']} failed-auth={rec['failures']}"
        elif rec["type"] == "rsa":
            what, extra = f"{kind} {len(rec['n']) // 2 * 8} bits", ""
        else:
            what, extra = kind, ""
        role = {"70": " (token verification)", "71": " (receipt)", "73": " (DAP verification)"}.get(kvn, "")
        out.append(f"     Key: KVN {kvn} {what}{role}{extra}")
    return out


def render(state: State) -> str:
    isd = hx(ISD_AID)
    apps, elfs, sds = state["apps"], state["elfs"], state["sds"]
    used = sum(e["size"] for e in elfs.values() if not e["rom"])
    lines = [
        f"Card: {lifecycle_name('card', state['lifecycle'])}  IIN {state['iin']}  CIN {state['cin']}  "
        f"KDD {state['kdd']}",
        f"      load files {used} of {state['memory_total']} bytes; auth limit {state['auth_limit']}; "
        f"receipts issued {state['confirmation_counter']}",
    ]
    valid_from, valid_until = validity(state)
    if valid_from or valid_until:
        shown = [
            f"from {valid_from.isoformat()}" if valid_from else "",
            f"until {valid_until.isoformat()}" if valid_until else "",
        ]
        lines.append(f"      valid {' '.join(s for s in shown if s)} (ISD 5F25/5F24)")
    load = state.get("load")
    if load:
        lines.append(f"      LOAD in progress: {load['elf']} ({len(load['data']) // 2} bytes)")
    session = state.get("upgrade")
    if session:
        lines.append(
            f"      ELF UPGRADE in progress: {session['elf']} (status {session['status']:02X}, "
            f"{len(session['instances'])} saved instances)"
        )
    for aid, app in apps.items():
        is_sd = aid in sds
        if aid == isd:
            head = f"ISD: {aid} ({lifecycle_name('card', state['lifecycle'])})"
        else:
            kind = "SSD" if is_sd else "APP"
            head = f"{kind}: {aid} ({lifecycle_name('sd' if is_sd else 'app', app['lifecycle'])})"
        lines.append(head)
        if aid != isd:
            lines.append(f"     Parent:  {app['sd']}")
            lines.append(f"     From:    {app['elf']} module {app['module']}")
        lines.append(f"     Privs:   {_privileges(app['privileges'])}")
        if app.get("perso") is not None:  # its size only: personalisation data is never shown
            lines.append(f"     Perso:   {len(app['perso']) // 2} bytes")
        if is_sd:
            sd = sds[aid]
            lines.append(f"     SCP:     {sd['scp']:02X} i={sd['i']:02X}")
            lines.extend(_key_lines(sd["keys"]))
    for aid, elf in elfs.items():
        major, minor = elf["version"]
        rom = " ROM" if elf["rom"] else f" {elf['size']} bytes"
        name = f" {elf['name']}" if elf.get("name") else ""
        lines.append(f"PKG: {aid} (LOADED) v{major}.{minor}{rom}{name}")
        lines.append(f"     Parent:  {elf['sd']}")
        for module in elf["modules"]:
            lines.append(f"     Applet:  {module['aid']}")
    return "\n".join(lines) + "\n"
