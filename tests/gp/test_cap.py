"""CAP / IJC parsing and the Load File Data Block (gp.cap), on the real CAP files in ../shared."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from gp.cap import LoadFile
from gp.errors import CAPError, GPError
from tests.shared_data import cap_file

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
LIB_BER = "openjavacard-lib-ber.cap"
LIB_DEBUG = "openjavacard-lib-debug.cap"
SVC_DEBUG = "openjavacard-svc-debug.cap"
ALGTEST = "AlgTest_v1.6_supportOnly_jc212.cap"
ALL = [EMPTY, LIB_BER, LIB_DEBUG, SVC_DEBUG, ALGTEST]

JAVA_LANG = bytes.fromhex("A0000000620001")
FRAMEWORK = bytes.fromhex("A0000000620101")
SECURITY = bytes.fromhex("A0000000620102")
JAVACARDX_CRYPTO = bytes.fromhex("A0000000620201")

# Verified by hand-decoding Header.cap / Applet.cap / Import.cap (hex dumps) and, where present,
# cross-checked against each MANIFEST.MF: (package AID, version, applets, imports, CAP format).
EXPECTED: dict[str, tuple[bytes, tuple[int, int], list[bytes], list[tuple[bytes, tuple[int, int]]]]] = {
    EMPTY: (
        bytes.fromhex("0102030405"),
        (0, 0),
        [bytes.fromhex("0102030405060708")],
        [(FRAMEWORK, (1, 2)), (SECURITY, (1, 2)), (JAVA_LANG, (1, 0))],
    ),
    LIB_BER: (
        bytes.fromhex("A00000FFFFA0"),
        (0, 0),
        [],
        [(JAVA_LANG, (1, 0)), (FRAMEWORK, (1, 3))],
    ),
    LIB_DEBUG: (
        bytes.fromhex("A00000FFFFA3"),
        (0, 0),
        [],
        [(JAVA_LANG, (1, 0)), (FRAMEWORK, (1, 3)), (SECURITY, (1, 3))],
    ),
    SVC_DEBUG: (
        bytes.fromhex("A00000FFFFA4"),
        (0, 0),
        [bytes.fromhex("A00000FFFFA401")],
        [
            (FRAMEWORK, (1, 3)),
            (bytes.fromhex("A00000FFFFA3"), (0, 0)),
            (bytes.fromhex("A00000FFFFA0"), (0, 0)),
            (JAVA_LANG, (1, 0)),
        ],
    ),
    ALGTEST: (
        b"mypackag1",
        (1, 0),
        [b"mypac0001"],
        [(JAVA_LANG, (1, 0)), (JAVACARDX_CRYPTO, (1, 1)), (SECURITY, (1, 1)), (FRAMEWORK, (1, 0))],
    ),
}


def _zip_entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _component(path: Path, name: str) -> bytes:
    for fname, raw in _zip_entries(path).items():
        if fname.endswith("/javacard/" + name):
            return raw
    raise AssertionError(name)


def _make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _replace_component(path: Path, name: str, new: bytes | None) -> bytes:
    entries = {}
    for fname, raw in _zip_entries(path).items():
        if fname.endswith("/javacard/" + name):
            if new is None:
                continue
            raw = new
        entries[fname] = raw
    return _make_zip(entries)


def _independent_header(raw: bytes) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """Minimal independent Header decoder: returns AID, package version, CAP version."""
    assert raw[0] == 1 and raw[3:7] == bytes.fromhex("DECAFFED")
    cap_minor, cap_major = raw[7], raw[8]
    pminor, pmajor, alen = raw[10], raw[11], raw[12]
    return raw[13 : 13 + alen], (pmajor, pminor), (cap_major, cap_minor)


def _independent_imports(raw: bytes) -> list[tuple[bytes, tuple[int, int]]]:
    """Import component: count, then (minor, major, AID length, AID) per package."""
    assert raw[0] == 4 and int.from_bytes(raw[1:3], "big") == len(raw) - 3
    out, pos = [], 4
    for _ in range(raw[3]):
        minor, major, n = raw[pos], raw[pos + 1], raw[pos + 2]
        out.append((raw[pos + 3 : pos + 3 + n], (major, minor)))
        pos += 3 + n
    assert pos == len(raw)
    return out


def _independent_applets(raw: bytes) -> list[bytes]:
    """Applet component: count, then (AID length, AID, u2 install method offset) per applet."""
    assert raw[0] == 3
    out, pos = [], 4
    for _ in range(raw[3]):
        n = raw[pos]
        out.append(raw[pos + 1 : pos + 1 + n])
        pos += 1 + n + 2
    assert pos == len(raw)
    return out


@pytest.mark.parametrize("name", ALL)
def test_independent_decoding_agrees_with_expected(name: str) -> None:
    path = cap_file(name)
    _, _, applets, imports = EXPECTED[name]
    assert _independent_imports(_component(path, "Import.cap")) == imports
    has_applet = any(n.endswith("/Applet.cap") for n in _zip_entries(path))
    assert (_independent_applets(_component(path, "Applet.cap")) if has_applet else []) == applets


@pytest.mark.parametrize("name", ALL)
def test_real_cap_files_parse(name: str) -> None:
    path = cap_file(name)
    lf = LoadFile.from_path(path)
    aid, version, applets, imports = EXPECTED[name]
    assert lf.package_aid == aid
    assert lf.package_version == version
    assert lf.applet_aids == applets
    assert [(i.aid, i.version) for i in lf.imports] == imports
    assert lf.imports == imports  # plain tuples compare equal too
    assert lf.import_aids == [a for a, _ in imports]
    assert lf.cap_format_version == (2, 1)
    # the independent decoder agrees
    assert _independent_header(_component(path, "Header.cap")) == (aid, version, (2, 1))


def test_empty_lfdb_hash_matches_file_name() -> None:
    lf = LoadFile.from_path(cap_file(EMPTY))
    digest = lf.load_file_data_block_hash("sha256")
    assert digest.hex().startswith("8d5ac9e2")
    assert digest == hashlib.sha256(lf.load_file_data_block()).digest()
    assert lf.load_file_data_block_hash("sha1") == hashlib.sha1(lf.load_file_data_block()).digest()  # noqa: S324
    assert lf.code_size == len(lf.load_file_data_block())
    assert lf.applets[0].install_method_offset == 0x13


def test_empty_lfdb_is_in_load_order() -> None:
    path = cap_file(EMPTY)
    lf = LoadFile.from_path(path)
    order = ["Header", "Directory", "Import", "Applet", "Class", "Method", "StaticField", "ConstantPool", "RefLocation"]
    expected = b"".join(_component(path, n + ".cap") for n in order)
    assert lf.load_file_data_block() == expected
    # no C4 header, starts with the Header component
    assert lf.load_file_data_block()[:1] == b"\x01"


@pytest.mark.parametrize("name", ALL)
def test_descriptor_inclusion_differs_by_exactly_the_descriptor(name: str) -> None:
    path = cap_file(name)
    lf = LoadFile.from_path(path)
    without = lf.load_file_data_block()
    with_desc = lf.load_file_data_block(include_descriptor=True)
    descriptor = _component(path, "Descriptor.cap")
    assert with_desc == without + descriptor
    assert lf.load_file_data_block_hash(include_descriptor=True) == hashlib.sha256(with_desc).digest()


def test_libraries_have_no_applets_and_svc_imports_both() -> None:
    ber = LoadFile.from_path(cap_file(LIB_BER))
    dbg = LoadFile.from_path(cap_file(LIB_DEBUG))
    svc = LoadFile.from_path(cap_file(SVC_DEBUG))
    assert ber.applet_aids == [] and dbg.applet_aids == []
    assert ber.package_aid in svc.import_aids and dbg.package_aid in svc.import_aids


def test_algtest_has_no_manifest() -> None:
    names = _zip_entries(cap_file(ALGTEST)).keys()
    assert not any("MANIFEST" in n for n in names)
    assert LoadFile.from_path(cap_file(ALGTEST)).package_aid == b"mypackag1"


def test_ijc_round_trip(tmp_path: Path) -> None:
    lf = LoadFile.from_path(cap_file(SVC_DEBUG))
    ijc = lf.load_file_data_block(include_descriptor=True)
    p = tmp_path / "svc.ijc"
    p.write_bytes(ijc)
    lf2 = LoadFile.from_path(p)
    assert lf2.package_aid == lf.package_aid and lf2.applet_aids == lf.applet_aids
    assert lf2.load_file_data_block() == lf.load_file_data_block()
    # without the descriptor as well, and wrapped in C4
    lf3 = LoadFile.from_bytes(lf.load_file_data_block(), name="x.ijc")
    assert lf3.load_file_data_block() == lf.load_file_data_block()
    assert not lf3.has_descriptor
    with pytest.raises(CAPError):
        lf3.load_file_data_block(include_descriptor=True)
    lfdb = lf.load_file_data_block()
    wrapped = b"\xc4\x82" + len(lfdb).to_bytes(2, "big") + lfdb
    assert LoadFile.from_bytes(wrapped).load_file_data_block() == lfdb


def test_components_in_any_folder_and_extra_entries() -> None:
    entries = _zip_entries(cap_file(EMPTY))
    moved = {"x/y/" + n.rsplit("/", 1)[-1]: v for n, v in entries.items() if n.endswith(".cap")}
    moved["README.txt"] = b"hello"
    lf = LoadFile.from_bytes(_make_zip(dict(reversed(list(moved.items())))))
    assert lf.load_file_data_block_hash().hex().startswith("8d5ac9e2")


def test_not_a_zip_and_garbage() -> None:
    for data in (b"", b"hello world", b"PK\x03\x04garbage", b"\x01\x00"):
        with pytest.raises(CAPError):
            LoadFile.from_bytes(data)
    with pytest.raises(CAPError):
        LoadFile.from_path("/nonexistent/file.cap")


def test_bad_magic() -> None:
    path = cap_file(EMPTY)
    header = bytearray(_component(path, "Header.cap"))
    header[3] ^= 0xFF
    with pytest.raises(CAPError, match="magic"):
        LoadFile.from_bytes(_replace_component(path, "Header.cap", bytes(header)))


def test_truncated_component() -> None:
    path = cap_file(EMPTY)
    method = _component(path, "Method.cap")
    with pytest.raises(CAPError, match="Method"):
        LoadFile.from_bytes(_replace_component(path, "Method.cap", method[:-1]))


def test_size_mismatch_with_directory() -> None:
    path = cap_file(EMPTY)
    method = _component(path, "Method.cap")
    # consistent component (size field fixed) but one byte longer than the Directory says
    longer = method[:1] + (len(method) - 2).to_bytes(2, "big") + method[3:] + b"\x00"
    with pytest.raises(CAPError, match="Directory"):
        LoadFile.from_bytes(_replace_component(path, "Method.cap", longer))


def test_missing_required_component() -> None:
    path = cap_file(EMPTY)
    with pytest.raises(CAPError, match="missing"):
        LoadFile.from_bytes(_replace_component(path, "Class.cap", None))
    with pytest.raises(CAPError):
        LoadFile.from_bytes(_replace_component(path, "Applet.cap", None))


def test_duplicate_package() -> None:
    a = _zip_entries(cap_file(EMPTY))
    b = _zip_entries(cap_file(LIB_BER))
    with pytest.raises(CAPError, match="duplicate"):
        LoadFile.from_bytes(_make_zip({**a, **b}))


def test_unsupported_hash() -> None:
    lf = LoadFile.from_path(cap_file(EMPTY))
    with pytest.raises(CAPError):
        lf.load_file_data_block_hash("md5")


def test_errors_are_gp_errors() -> None:
    assert issubclass(CAPError, GPError)


def _synthetic_cap(minor: int, *, static_resources: bytes | None = None, name: bytes = b"pkg.empty") -> bytes:
    """The Empty package re-encoded as CAP format 2.``minor`` (2.2 adds a package name and the
    Debug size; 2.3 a u4 Static Resources size), to exercise those layouts."""
    entries = _zip_entries(cap_file(EMPTY))
    comps = {n.rsplit("/", 1)[-1]: v for n, v in entries.items() if n.endswith(".cap")}
    info = bytes.fromhex("DECAFFED") + bytes([minor, 2, 0x04, 0, 0, 5]) + bytes.fromhex("0102030405")
    info += bytes([len(name)]) + name
    comps["Header.cap"] = b"\x01" + len(info).to_bytes(2, "big") + info
    if static_resources is not None:
        comps["StaticResources.cap"] = b"\x0d" + len(static_resources).to_bytes(4, "big") + static_resources
    order = [
        "Header",
        "Directory",
        "Applet",
        "Import",
        "ConstantPool",
        "Class",
        "Method",
        "StaticField",
        "RefLocation",
        "Export",
        "Descriptor",
        "Debug",
    ]
    old_dir = comps["Directory.cap"]
    tail = old_dir[3 + 22 :]  # static field size info, counts, custom components (CAP 2.1: 11 sizes)

    def size(n: str, hl: int = 3) -> int:
        return len(comps[n + ".cap"]) - hl if n + ".cap" in comps else 0

    dir_len = 2 * 12 + (4 if minor >= 3 else 0) + len(tail)
    sizes = b"".join((dir_len if n == "Directory" else size(n)).to_bytes(2, "big") for n in order)
    if minor >= 3:
        sizes += size("StaticResources", 5).to_bytes(4, "big")
    comps["Directory.cap"] = b"\x02" + dir_len.to_bytes(2, "big") + sizes + tail
    return _make_zip({"pkg/empty/javacard/" + n: v for n, v in comps.items()})


def test_cap_format_2_2_with_package_name() -> None:
    lf = LoadFile.from_bytes(_synthetic_cap(2))
    assert lf.cap_format_version == (2, 2)
    assert lf.package_name == "pkg.empty"
    assert lf.package_aid == bytes.fromhex("0102030405") and lf.applet_aids == [bytes.fromhex("0102030405060708")]


def test_cap_format_2_3_static_resources_load_order() -> None:
    resources = b"\x00\x01" + b"\x00\x00\x00\x04" + b"DATA"
    lf = LoadFile.from_bytes(_synthetic_cap(3, static_resources=resources))
    assert lf.cap_format_version == (2, 3)
    lfdb = lf.load_file_data_block()
    static = b"\x0d\x00\x00\x00" + bytes([len(resources)]) + resources
    ref_location = _component(cap_file(EMPTY), "RefLocation.cap")
    # Static Resources comes right after the Reference Location component, and before the Descriptor
    assert lfdb.endswith(ref_location + static)
    descriptor = _component(cap_file(EMPTY), "Descriptor.cap")
    assert lf.load_file_data_block(include_descriptor=True) == lfdb + descriptor
    # IJC of a 2.3 file parses too (u4 size of the Static Resources component)
    assert LoadFile.from_bytes(lfdb).load_file_data_block() == lfdb
    # a StaticResources component in a CAP 2.2 file is refused
    with pytest.raises(CAPError):
        LoadFile.from_bytes(_synthetic_cap(2, static_resources=resources))


def test_extended_cap_format_refused() -> None:
    data = bytearray(_zip_entries(cap_file(EMPTY))["testapplets/empty/javacard/Header.cap"])
    data[9] |= 0x08  # ACC_EXTENDED
    with pytest.raises(CAPError, match="extended"):
        LoadFile.from_bytes(_replace_component(cap_file(EMPTY), "Header.cap", bytes(data)))
