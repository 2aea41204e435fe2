"""Java Card load files: CAP (zip) and IJC (raw components), and the Load File Data Block.

References: Java Card Virtual Machine Specification (Classic) 2.2.2 chapter 6 and 3.1 chapter 6
("The CAP File Format"); GlobalPlatform Card Spec 2.3.1 §11.6 (LOAD) and §C.2 (Load File Data
Block hash).

* A CAP file is a zip holding one package's components as ``<pkg path>/javacard/<Name>.cap``.
  Components are found by file name in any folder and in any order; other entries (MANIFEST,
  ``APPLET-INF``, class files) are ignored; no MANIFEST is needed.
* An IJC file is the components concatenated in load order (optionally wrapped in the ``C4``
  Load File Data Block tag, which is stripped).
* Each component is ``u1 tag, u2 size, info[size]`` (JCVM §6.1); the CAP 2.3 Static Resources
  component (tag 13) has a ``u4`` size (JCVM 3.1 §6.15).
* Load order (JCVM 2.2.2 §6.2 / 3.1 §6.2 "install order"): Header, Directory, Import, Applet,
  Class, Method, Static Field, Export, Constant Pool, Reference Location, [Static Resources],
  [Descriptor]. Debug (tag 12) is never loaded. The Descriptor is left out by default, as the
  most widely used tools do (DESIGN §9); the hash covers exactly the bytes sent.

Supported: CAP format 2.1, 2.2 and 2.3 compact. The CAP 2.3 *extended* format (flag
``ACC_EXTENDED``, several packages, u4 sizes) is refused with :class:`CAPError`. Custom
components (tags 128..255 listed in the Directory) are not loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from gp.errors import CAPError, GPError

__all__ = [
    "COMPONENT_NAMES",
    "LOAD_ORDER",
    "AppletInfo",
    "ImportedPackage",
    "LoadFile",
]

MAGIC = 0xDECAFFED

# JCVM §6.1 component tags.
HEADER, DIRECTORY, APPLET, IMPORT, CONSTANT_POOL, CLASS, METHOD = 1, 2, 3, 4, 5, 6, 7
STATIC_FIELD, REFERENCE_LOCATION, EXPORT, DESCRIPTOR, DEBUG, STATIC_RESOURCES = 8, 9, 10, 11, 12, 13

COMPONENT_NAMES: dict[int, str] = {
    HEADER: "Header",
    DIRECTORY: "Directory",
    APPLET: "Applet",
    IMPORT: "Import",
    CONSTANT_POOL: "ConstantPool",
    CLASS: "Class",
    METHOD: "Method",
    STATIC_FIELD: "StaticField",
    REFERENCE_LOCATION: "RefLocation",
    EXPORT: "Export",
    DESCRIPTOR: "Descriptor",
    DEBUG: "Debug",
    STATIC_RESOURCES: "StaticResources",
}
_FILE_TO_TAG: dict[str, int] = {f"{n}.cap": t for t, n in COMPONENT_NAMES.items()}
_FILE_TO_TAG["StaticResources.capx"] = STATIC_RESOURCES

# JCVM 2.2.2/3.1 §6.2: the order components are sent to the card (Descriptor appended optionally).
LOAD_ORDER: tuple[int, ...] = (
    HEADER,
    DIRECTORY,
    IMPORT,
    APPLET,
    CLASS,
    METHOD,
    STATIC_FIELD,
    EXPORT,
    CONSTANT_POOL,
    REFERENCE_LOCATION,
    STATIC_RESOURCES,
)
_REQUIRED = (HEADER, DIRECTORY, IMPORT, CONSTANT_POOL, CLASS, METHOD, STATIC_FIELD, REFERENCE_LOCATION)

# Header flags (JCVM §6.3; ACC_EXTENDED from JCVM 3.1).
ACC_INT, ACC_EXPORT, ACC_APPLET, ACC_EXTENDED = 0x01, 0x02, 0x04, 0x08

_MAX_COMPONENT = 8 * 1024 * 1024  # refuse absurd entries (zip bombs) early
_MAX_TOTAL = 32 * 1024 * 1024
_HASHES = ("sha1", "sha256", "sha384", "sha512")


class ImportedPackage(NamedTuple):
    """An entry of the Import component: package AID and (major, minor) version."""

    aid: bytes
    version: tuple[int, int]


@dataclass(frozen=True)
class AppletInfo:
    """An entry of the Applet component (JCVM §6.5)."""

    aid: bytes
    install_method_offset: int


class _Reader:
    """Bounds-checked big-endian reader; every overrun is a CAPError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CAPError(f"{self.what} component truncated (needs {n} bytes at offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u1(self) -> int:
        return self.take(1)[0]

    def u2(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u4(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def aid(self) -> bytes:
        n = self.u1()
        if not 5 <= n <= 16:  # ISO 7816-5: an AID is 5..16 bytes
            raise CAPError(f"{self.what} component: AID length {n} outside 5..16")
        return self.take(n)

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def end(self) -> None:
        if self.remaining:
            raise CAPError(f"{self.what} component: {self.remaining} unexpected trailing bytes")


def _size_header(tag: int) -> int:
    return 5 if tag == STATIC_RESOURCES else 3


def _check_component(tag: int, raw: bytes) -> int:
    """Validate tag and size field of one component; return its declared ``size`` (info length)."""
    name = COMPONENT_NAMES.get(tag, f"tag {tag}")
    hl = _size_header(tag)
    if len(raw) < hl:
        raise CAPError(f"{name} component truncated: {len(raw)} bytes")
    if raw[0] != tag:
        raise CAPError(f"{name} component starts with tag {raw[0]}, expected {tag}")
    size = int.from_bytes(raw[1:hl], "big")
    if size != len(raw) - hl:
        raise CAPError(
            f"{name} component size field says {size} bytes but {len(raw) - hl} follow (truncated or padded component)"
        )
    return size


@dataclass
class LoadFile:
    """A parsed Java Card load file (one package)."""

    name: str
    components: dict[int, bytes]
    cap_format_version: tuple[int, int] = (0, 0)  # (major, minor)
    flags: int = 0
    package_version: tuple[int, int] = (0, 0)  # (major, minor)
    package_aid: bytes = b""
    package_name: str | None = None
    applets: list[AppletInfo] = field(default_factory=list)
    imports: list[ImportedPackage] = field(default_factory=list)
    component_sizes: dict[int, int] = field(default_factory=dict)
    _dir_import_count: int = field(default=0, repr=False, compare=False)
    _dir_applet_count: int = field(default=0, repr=False, compare=False)

    # --- constructors ----------------------------------------------------------------------

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> LoadFile:
        """Read a ``.cap`` (zip) or ``.ijc`` file."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise CAPError(f"cannot read load file {p}: {exc}") from exc
        return cls.from_bytes(data, name=p.name)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "") -> LoadFile:
        """Parse a CAP zip (detected by its ``PK`` signature) or IJC bytes."""
        data = bytes(data)
        if len(data) > _MAX_TOTAL:
            raise CAPError(f"load file too large: {len(data)} bytes")
        if data[:2] == b"PK":
            comps = _components_from_zip(data)
        elif data[:1] in (b"\x01", b"\xc4"):
            comps = _components_from_ijc(data)
        else:
            raise CAPError("not a load file: neither a zip (CAP) nor raw components starting with Header (IJC)")
        lf = cls(name=name, components=comps)
        lf._parse()
        return lf

    # --- parsing ---------------------------------------------------------------------------

    def _parse(self) -> None:
        missing = [COMPONENT_NAMES[t] for t in _REQUIRED if t not in self.components]
        if HEADER in self.components:
            self._parse_header(self.components[HEADER])
        if missing:
            raise CAPError(f"missing required component(s): {', '.join(missing)}")
        self._parse_directory(self.components[DIRECTORY])
        if self.flags & ACC_APPLET and APPLET not in self.components:
            raise CAPError("Header flags ACC_APPLET but the Applet component is missing")
        if not self.flags & ACC_APPLET and APPLET in self.components:
            raise CAPError("Applet component present but Header flag ACC_APPLET is not set")
        if self.flags & ACC_EXPORT and EXPORT not in self.components:
            raise CAPError("Header flags ACC_EXPORT but the Export component is missing")
        if APPLET in self.components:
            self._parse_applet(self.components[APPLET])
        self._parse_import(self.components[IMPORT])
        self._check_counts()

    def _parse_header(self, raw: bytes) -> None:
        # JCVM §6.3 header_component: magic, minor, major, flags, package_info, [package_name_info]
        _check_component(HEADER, raw)
        r = _Reader(raw[3:], "Header")
        magic = r.u4()
        if magic != MAGIC:
            raise CAPError(f"bad Header magic {magic:08X} (expected DECAFFED)")
        minor, major = r.u1(), r.u1()
        self.cap_format_version = (major, minor)
        if major != 2 or minor not in (1, 2, 3):
            raise CAPError(f"unsupported CAP format {major}.{minor} (supported: 2.1, 2.2, 2.3 compact)")
        self.flags = r.u1()
        if self.flags & ACC_EXTENDED:
            raise CAPError("extended CAP format (ACC_EXTENDED, CAP 2.3) is not supported")
        pminor, pmajor = r.u1(), r.u1()
        self.package_version = (pmajor, pminor)
        self.package_aid = r.aid()
        if r.remaining and minor >= 2:  # package_name_info, CAP 2.2+ (JCVM 2.2.2 §6.3)
            n = r.u1()
            try:
                self.package_name = r.take(n).decode("ascii")
            except UnicodeDecodeError as exc:
                raise CAPError("Header package name is not ASCII") from exc
        r.end()

    def _parse_directory(self, raw: bytes) -> None:
        # JCVM §6.4 directory_component: component_sizes[...], static_field_size_info,
        # import_count, applet_count, custom_count, custom_components[]
        _check_component(DIRECTORY, raw)
        r = _Reader(raw[3:], "Directory")
        minor = self.cap_format_version[1]
        n_sizes = 11 if minor == 1 else 12  # Debug size added in CAP 2.2
        sizes = {tag: r.u2() for tag in range(1, n_sizes + 1)}
        if minor >= 3:
            sizes[STATIC_RESOURCES] = r.u4()  # CAP 2.3: u4 Static Resources size
        self.component_sizes = sizes
        r.take(6)  # static_field_size_info: image_size, array_init_count, array_init_size
        self._dir_import_count, self._dir_applet_count = r.u1(), r.u1()
        custom_count = r.u1()
        for _ in range(custom_count):
            tag = r.u1()
            if tag < 128:
                raise CAPError(f"Directory: custom component tag {tag} below 128")
            r.u2()
            r.aid()
        r.end()
        for tag, raw_comp in self.components.items():
            size = _check_component(tag, raw_comp)
            if tag not in sizes:
                raise CAPError(f"{COMPONENT_NAMES[tag]} component is not allowed in CAP format 2.{minor}")
            if sizes[tag] != size:
                raise CAPError(f"{COMPONENT_NAMES[tag]} component is {size} bytes but the Directory says {sizes[tag]}")
        for tag, size in sizes.items():
            # Descriptor and Debug may be absent from the file (IJC, stripped CAP): they are not loaded.
            if size and tag not in self.components and tag not in (DESCRIPTOR, DEBUG):
                raise CAPError(f"Directory lists a {COMPONENT_NAMES[tag]} component of {size} bytes, not present")

    def _parse_applet(self, raw: bytes) -> None:
        # JCVM §6.5 applet_component: count, {AID_length, AID, install_method_offset}
        r = _Reader(raw[3:], "Applet")
        count = r.u1()
        if count == 0:
            raise CAPError("Applet component with zero applets")
        self.applets = [AppletInfo(r.aid(), r.u2()) for _ in range(count)]
        r.end()

    def _parse_import(self, raw: bytes) -> None:
        # JCVM §6.6 import_component: count, package_info{minor, major, AID_length, AID}
        r = _Reader(raw[3:], "Import")
        count = r.u1()
        out = []
        for _ in range(count):
            minor, major = r.u1(), r.u1()
            out.append(ImportedPackage(r.aid(), (major, minor)))
        r.end()
        self.imports = out

    def _check_counts(self) -> None:
        if self._dir_import_count != len(self.imports):
            raise CAPError(f"Directory import_count {self._dir_import_count} != {len(self.imports)} imports")
        if self._dir_applet_count != len(self.applets):
            raise CAPError(f"Directory applet_count {self._dir_applet_count} != {len(self.applets)} applets")
        aids = [a.aid for a in self.applets]
        if len(set(aids)) != len(aids):
            raise CAPError("duplicate applet AID in the Applet component")

    # --- public view -----------------------------------------------------------------------

    @property
    def applet_aids(self) -> list[bytes]:
        return [a.aid for a in self.applets]

    @property
    def import_aids(self) -> list[bytes]:
        return [i.aid for i in self.imports]

    @property
    def has_descriptor(self) -> bool:
        return DESCRIPTOR in self.components

    def load_file_data_block(self, include_descriptor: bool = False) -> bytes:
        """Components in load order (JCVM §6.2), without the ``C4`` tag (GP §11.6.2.3)."""
        order = list(LOAD_ORDER)
        if include_descriptor:
            if DESCRIPTOR not in self.components:
                raise CAPError("this load file has no Descriptor component")
            order.append(DESCRIPTOR)
        return b"".join(self.components[t] for t in order if t in self.components)

    def load_file_data_block_hash(self, alg: str = "sha256", include_descriptor: bool = False) -> bytes:
        """Hash of the Load File Data Block for INSTALL [for load] / DAP (GP 2.3.1 §C.2)."""
        alg = alg.lower().replace("-", "")
        if alg not in _HASHES:
            raise CAPError(f"unsupported hash algorithm {alg!r} (use one of {', '.join(_HASHES)})")
        return hashlib.new(alg, self.load_file_data_block(include_descriptor)).digest()

    @property
    def code_size(self) -> int:
        """Bytes loaded onto the card (LFDB without Descriptor), for memory quota checks."""
        return len(self.load_file_data_block())

    def __repr__(self) -> str:
        return (
            f"LoadFile({self.name!r}, package={self.package_aid.hex().upper()} "
            f"v{self.package_version[0]}.{self.package_version[1]}, "
            f"applets={[a.hex().upper() for a in self.applet_aids]}, "
            f"CAP {self.cap_format_version[0]}.{self.cap_format_version[1]})"
        )


def _components_from_zip(data: bytes) -> dict[int, bytes]:
    try:
        return _read_zip(data)
    except GPError:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        IndexError,
        NotImplementedError,
        RuntimeError,
        UnicodeDecodeError,
        OverflowError,
    ) as exc:
        # zipfile raises all of these on corrupt archives
        raise CAPError(f"not a valid CAP zip: {type(exc).__name__}: {exc}") from exc


def _read_zip(data: bytes) -> dict[int, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        groups: dict[str, dict[int, zipfile.ZipInfo]] = {}
        for info in zf.infolist():
            path = PurePosixPath(info.filename.replace("\\", "/"))
            tag = _FILE_TO_TAG.get(path.name)
            if tag is None or info.is_dir():
                continue
            folder = str(path.parent)
            group = groups.setdefault(folder, {})
            if tag in group:
                raise CAPError(f"duplicate {path.name} in {folder}/")
            group[tag] = info
        headers = [f for f, g in groups.items() if HEADER in g]
        if not headers:
            raise CAPError("no Header.cap component in the zip (not a CAP file)")
        if len(headers) > 1:
            raise CAPError(f"duplicate package: Header.cap found in {', '.join(sorted(headers))}")
        group = groups[headers[0]]
        out: dict[int, bytes] = {}
        total = 0
        for tag, info in group.items():
            if info.file_size > _MAX_COMPONENT:
                raise CAPError(f"{info.filename}: {info.file_size} bytes is too large for a component")
            with zf.open(info) as fh:
                raw = fh.read(_MAX_COMPONENT + 1)
            if len(raw) > _MAX_COMPONENT:
                raise CAPError(f"{info.filename}: too large for a component")
            total += len(raw)
            if total > _MAX_TOTAL:
                raise CAPError("CAP components too large in total")
            out[tag] = raw
        return out


def _components_from_ijc(data: bytes) -> dict[int, bytes]:
    if data[:1] == b"\xc4":  # tolerate an LFDB already wrapped in tag C4 (GP §11.6.2.3)
        from gp.tlv import decode_length  # local: keeps cap importable on its own

        try:
            length, off = decode_length(data, 1)
        except GPError as exc:
            raise CAPError(f"IJC with a bad C4 header: {exc}") from exc
        if off + length != len(data):
            raise CAPError("IJC C4 length does not match the data")
        data = data[off:]
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        tag = data[pos]
        if tag not in COMPONENT_NAMES:
            raise CAPError(f"IJC: unknown component tag {tag} at offset {pos}")
        if tag in out:
            raise CAPError(f"IJC: duplicate {COMPONENT_NAMES[tag]} component at offset {pos}")
        hl = _size_header(tag)
        if pos + hl > len(data):
            raise CAPError(f"IJC: truncated {COMPONENT_NAMES[tag]} component header at offset {pos}")
        size = int.from_bytes(data[pos + 1 : pos + hl], "big")
        end = pos + hl + size
        if end > len(data):
            raise CAPError(f"IJC: {COMPONENT_NAMES[tag]} component truncated ({size} bytes declared)")
        out[tag] = data[pos:end]
        pos = end
    return out
