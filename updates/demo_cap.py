"""Synthetic CAP files for the demo and benchmarks: the real CAP 2.1 structure (JCVM 3.0.5 ch. 6)
with placeholder bytecode.

The emulated card links a load file by its Header, Import and Applet components and never executes
bytecode (cardsim), so a demo bank applet needs only those to be right. Everything else is sized
and framed exactly as the Directory component says, so the platform's parser and the card treat
the file like any other CAP.
"""

from __future__ import annotations

import io
import zipfile

# Imports of a typical applet: java.lang 1.0 and javacard.framework 1.3 (JC 2.2.x API level).
DEFAULT_IMPORTS: tuple[tuple[str, tuple[int, int]], ...] = (
    ("A0000000620001", (1, 0)),
    ("A0000000620101", (1, 3)),
)
HEADER, DIRECTORY, APPLET, IMPORT, CONSTANT_POOL, CLASS, METHOD, STATIC_FIELD, REF_LOCATION = range(1, 10)
NAMES = {
    HEADER: "Header",
    DIRECTORY: "Directory",
    APPLET: "Applet",
    IMPORT: "Import",
    CONSTANT_POOL: "ConstantPool",
    CLASS: "Class",
    METHOD: "Method",
    STATIC_FIELD: "StaticField",
    REF_LOCATION: "RefLocation",
}


def _component(tag: int, body: bytes) -> bytes:
    # JCVM §6.1: tag u1, size u2, info[size]
    return bytes((tag,)) + len(body).to_bytes(2, "big") + body


def _aid(aid: bytes) -> bytes:
    return bytes((len(aid),)) + aid


def build_cap(
    package_aid: str,
    applet_aids: list[str],
    version: tuple[int, int] = (1, 0),
    *,
    name: str = "demo",
    code_size: int = 256,
    imports: tuple[tuple[str, tuple[int, int]], ...] = DEFAULT_IMPORTS,
) -> bytes:
    """A CAP file (zip) for ``package_aid`` at ``version`` with the given applets; ``code_size``
    bytes of placeholder Method component (roughly the Load File Data Block size)."""
    package = bytes.fromhex(package_aid)
    applets = [bytes.fromhex(a) for a in applet_aids]
    components: dict[int, bytes] = {}
    # Header (§6.3): magic, CAP 2.1, flags (ACC_APPLET when it has applets), package version, AID.
    flags = 0x04 if applets else 0x00
    components[HEADER] = bytes.fromhex("DECAFFED") + bytes((1, 2, flags, version[1], version[0])) + _aid(package)
    if applets:
        # Applet (§6.5): count, {AID, install_method_offset}
        components[APPLET] = bytes((len(applets),)) + b"".join(_aid(a) + (1).to_bytes(2, "big") for a in applets)
    # Import (§6.6): count, {minor, major, AID}
    components[IMPORT] = bytes((len(imports),)) + b"".join(
        bytes((minor, major)) + _aid(bytes.fromhex(aid)) for aid, (major, minor) in imports
    )
    components[CONSTANT_POOL] = (0).to_bytes(2, "big")  # count 0
    components[CLASS] = (0).to_bytes(2, "big") + bytes(4)  # no interfaces; one empty class slot
    method_body = max(code_size, 2)
    components[METHOD] = bytes((0,)) + bytes((0x01,) * (method_body - 1))  # handler_count 0, code
    components[STATIC_FIELD] = bytes(10)  # image size, reference counts, no array inits, no values
    components[REF_LOCATION] = bytes(4)  # no byte/byte2 offsets
    # Directory (§6.4): 11 component sizes, static field size info, import/applet/custom counts.
    sizes = []
    for tag in range(1, 12):
        if tag == DIRECTORY:
            sizes.append(2 * 11 + 6 + 3)
        else:
            sizes.append(len(components.get(tag, b"")))
    directory = b"".join(s.to_bytes(2, "big") for s in sizes) + bytes(6)
    directory += bytes((len(imports), len(applets), 0))
    components[DIRECTORY] = directory
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        folder = f"{name.replace('.', '/')}/javacard/"
        for tag in sorted(components):
            # A fixed timestamp: the same package gives the same bytes (and the same hash) whenever
            # it is built; the clock made two builds a second apart differ.
            entry = zipfile.ZipInfo(folder + NAMES[tag] + ".cap", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(entry, _component(tag, components[tag]), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()
