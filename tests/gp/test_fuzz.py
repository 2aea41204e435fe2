"""Robustness: mutated CAP files and TLV blobs raise only gp.errors exceptions (or parse).

Seeded ``random.Random`` so every run is the same; a failure names the iteration to replay.
Also hypothesis properties of the TLV codec and of LOAD block splitting.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Callable
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gp import commands as c
from gp import dm
from gp.apdu import CommandAPDU
from gp.cap import LoadFile
from gp.errors import GPError, LoadError
from gp.tlv import Tlv, decode_all, encode_tlv
from tests.shared_data import cap_file

CAP_NAMES = [
    "Empty_0102030405_8d5ac9e2_2.2.1.cap",
    "openjavacard-lib-ber.cap",
    "openjavacard-lib-debug.cap",
    "openjavacard-svc-debug.cap",
    "AlgTest_v1.6_supportOnly_jc212.cap",
]
N_CAP = 10_000
N_TLV = 10_000


@cache
def _originals() -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    out = []
    for name in CAP_NAMES:
        raw = cap_file(name).read_bytes()
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            entries = [(i.filename, zf.read(i)) for i in zf.infolist()]
        out.append((raw, entries))
    return out


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rng.randrange(6)
    if op == 0 and b:  # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncation
        del b[rng.randint(0, len(b)) :]
    elif op == 2:  # inserted bytes
        i = rng.randint(0, len(b))
        b[i:i] = rng.randbytes(rng.randint(1, 16))
    elif op == 3 and b:  # removed bytes
        i = rng.randrange(len(b))
        del b[i : i + rng.randint(1, 16)]
    elif op == 4 and b:  # overwritten byte with an interesting value
        b[rng.randrange(len(b))] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0x81, 0xFF))
    elif op == 5 and len(b) >= 3:  # corrupt a size field at the start (components) or anywhere
        i = rng.choice((1, 2, rng.randrange(len(b))))
        b[i] = rng.randrange(256)
    return bytes(b)


def _zip(entries: list[tuple[str, bytes]], compress: bool) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return buf.getvalue()


def _mutated_cap(rng: random.Random) -> bytes:
    raw, entries = rng.choice(_originals())
    kind = rng.randrange(10)
    if kind < 3:  # zip level: broken archive bytes
        return _mutate_bytes(rng, raw)
    entries = list(entries)
    comps = [i for i, (n, _) in enumerate(entries) if n.endswith(".cap")]
    if kind < 8:  # component level, valid zip around mutated components
        for _ in range(rng.randint(1, 2)):
            i = rng.choice(comps)
            name, data = entries[i]
            data = _mutate_bytes(rng, data)
            if rng.random() < 0.6 and len(data) >= 3:
                # keep the component self-consistent so the mutation reaches the field parsers
                data = data[:1] + min(len(data) - 3, 0xFFFF).to_bytes(2, "big") + data[3:]
            entries[i] = (name, data)
    elif kind == 8:  # structural: drop, duplicate or move components, add a second package
        op = rng.randrange(4)
        i = rng.choice(comps)
        if op == 0:
            del entries[i]
        elif op == 1:
            entries.append(("other/javacard/" + entries[i][0].rsplit("/", 1)[-1], entries[i][1]))
        elif op == 2:
            entries = [(("x/" + n.rsplit("/", 1)[-1]) if n.endswith(".cap") else n, d) for n, d in entries]
        else:
            rng.shuffle(entries)
    else:  # IJC: mutated raw load file data block
        lf = LoadFile.from_bytes(raw)
        return _mutate_bytes(rng, lf.load_file_data_block(include_descriptor=rng.random() < 0.5))
    return _zip(entries, compress=rng.random() < 0.5)


def _exercise_cap(data: bytes) -> None:
    lf = LoadFile.from_bytes(data, name="fuzz.cap")
    lf.load_file_data_block()
    lf.load_file_data_block_hash("sha1")
    _ = (lf.code_size, lf.applet_aids, lf.import_aids, lf.package_aid, lf.package_version, repr(lf))
    if lf.has_descriptor:
        lf.load_file_data_block(include_descriptor=True)


def test_fuzz_cap_files() -> None:
    rng = random.Random(0xCAFE)
    parsed = failed = 0
    for n in range(N_CAP):
        data = _mutated_cap(rng)
        try:
            _exercise_cap(data)
            parsed += 1
        except GPError:
            failed += 1
        except Exception as exc:  # pragma: no cover - the point of the test
            pytest.fail(f"iteration {n}: {type(exc).__name__} escaped: {exc!r}")
    # both outcomes must actually occur, or the mutations are not reaching the parser
    assert parsed > 100 and failed > 1000, (parsed, failed)


def _random_tlv(rng: random.Random, depth: int = 0) -> bytes:
    out = b""
    for _ in range(rng.randint(1, 4)):
        if depth < 3 and rng.random() < 0.4:
            tag = rng.choice((0x6F, 0xA5, 0x73, 0xE3, 0xE0, 0x66, 0x60, 0x64, 0xBF0C, 0xEF))
            out += encode_tlv(tag, _random_tlv(rng, depth + 1))
        else:
            tag = rng.choice((0x4F, 0x84, 0x9F70, 0xC5, 0xC4, 0xCC, 0xCE, 0xC0, 0x06, 0x9F65, 0x9F7F, 0x42, 0xC1))
            out += encode_tlv(tag, rng.randbytes(rng.choice((0, 1, 2, 3, 5, 8, 42, 130, 300))))
    return out


def _walk(objs: list[Tlv]) -> None:
    for t in objs:
        if t.constructed:
            _walk(t.children())


PARSERS: list[Callable[[bytes], object]] = [
    lambda d: _walk(decode_all(d)),
    c.parse_fci,
    c.parse_cplc,
    c.parse_card_data,
    c.parse_key_information,
    c.parse_get_status,
    lambda d: c.parse_get_status(d, c.STATUS_ELF_MODULES),
    lambda d: c.parse_get_status_legacy(d, c.STATUS_APPS),
    lambda d: c.parse_get_status_legacy(d, c.STATUS_ELF_MODULES),
    lambda d: c.parse_sequence_counter(d),
    dm.parse_confirmation,
    lambda d: c.parse_install(d[0] if d else 0x02, d[1:]),
    lambda d: c.parse_install(0x0C, d),
    c.parse_delete,
    dm.token_data_for_command,
    dm.extract_token,
]


def test_fuzz_tlv_and_response_parsers() -> None:
    rng = random.Random(0x71F)
    ok = bad = 0
    for n in range(N_TLV):
        r = rng.random()
        if r < 0.3:
            data = rng.randbytes(rng.randint(0, 64))
        elif r < 0.5:
            data = _random_tlv(rng)
        else:
            data = _mutate_bytes(rng, _random_tlv(rng))
        for parser in PARSERS:
            try:
                parser(data)
                ok += 1
            except GPError:
                bad += 1
            except Exception as exc:  # pragma: no cover
                pytest.fail(f"iteration {n}, {parser}: {type(exc).__name__} escaped on {data.hex()}: {exc!r}")
    assert ok > 1000 and bad > 1000


# --- hypothesis properties ------------------------------------------------------------------

_tags = st.one_of(
    st.integers(1, 0xFE).filter(lambda b: b & 0x1F != 0x1F),
    st.tuples(st.sampled_from([0x1F, 0x5F, 0x9F, 0xBF, 0xDF]), st.integers(1, 0x7F)).map(lambda t: (t[0] << 8) | t[1]),
)


@given(st.lists(st.tuples(_tags, st.binary(max_size=400)), max_size=6))
def test_tlv_round_trip(items: list[tuple[int, bytes]]) -> None:
    enc = b"".join(encode_tlv(t, v) for t, v in items)
    assert [(x.tag, x.value) for x in decode_all(enc)] == items


@given(st.binary(max_size=20_000), st.integers(1, 255))
@settings(max_examples=150, deadline=None)
def test_load_commands_properties(lfdb: bytes, max_block: int) -> None:
    stream = encode_tlv(0xC4, lfdb)
    n_blocks = -(-len(stream) // max_block)
    if n_blocks > 256:
        with pytest.raises(LoadError):
            c.load_commands(lfdb, max_block)
        return
    cmds = [CommandAPDU.from_bytes(x) for x in c.load_commands(lfdb, max_block)]
    assert b"".join(x.data for x in cmds) == stream
    assert [x.p2 for x in cmds] == list(range(len(cmds)))
    assert [x.p1 for x in cmds] == [0x00] * (len(cmds) - 1) + [0x80]
    assert all(0 < len(x.data) <= max_block for x in cmds)
    assert all((x.cla, x.ins) == (0x80, 0xE8) for x in cmds)


@given(st.integers(1, 255), st.integers(0, 300))
@settings(max_examples=60, deadline=None)
def test_more_than_256_blocks_raise(max_block: int, extra: int) -> None:
    # exactly enough data for 257+ blocks (stream = C4 + length + lfdb)
    lfdb = bytes(256 * max_block - 1 + extra)  # + at least 2 header bytes: more than 256 blocks
    assert len(encode_tlv(0xC4, lfdb)) > 256 * max_block
    with pytest.raises(LoadError):
        c.load_commands(lfdb, max_block)
