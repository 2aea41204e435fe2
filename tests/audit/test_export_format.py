"""audit.export_format: canonical leaf bytes (RFC 8785 subset), entry schema, export lines."""

from __future__ import annotations

import datetime as dt
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import merkle
from audit.export_format import (
    FORMAT,
    ExportFormatError,
    ExportHeader,
    ExportWriter,
    canonical_json,
    canonical_leaf_bytes,
    entry_leaf_hash,
    format_time,
    make_entry,
    parse_json_strict,
    read_export,
    validate_entry,
)


def sample_entry(index: int = 0, **overrides: object) -> dict:
    entry = make_entry(
        index=index,
        time=dt.datetime(2026, 11, 27, 13, 0, 0, 123456, tzinfo=dt.UTC),
        actor_type="user",
        actor_id="42",
        actor_organisation="agency",
        action="card.issued",
        subject_type="card",
        subject_id="CIN-0001",
        card="CIN-0001",
        organisation="agency",
        receipt=b"\x01\xab",
        details={"kvn": 48, "scp": "03", "ok": True, "list": [1, None, "x"]},
    )
    entry.update(overrides)
    return entry


# --------------------------------------------------------------------------- RFC 8785 vectors


def test_rfc8785_string_escaping_example() -> None:
    # RFC 8785 §3.2.2 sample input "string" member and its canonical form (§3.2.4 output).
    value = json.loads(r'"\u20ac$\u000F\u000aA' + "'" + r'\u0042\u0022\u005c\\\"\/"')
    doc = {"string": value, "literals": [None, True, False]}
    expected = '{"literals":[null,true,false],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    assert canonical_json(doc) == expected.encode("utf-8")


def test_rfc8785_property_sorting_example() -> None:
    # RFC 8785 §3.2.3: members sorted by UTF-16 code units (the emoji sorts before U+FB33).
    doc = {
        "€": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "ö": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control","ö":"Latin Small Letter O With Diaeresis",'
        '"€":"Euro Sign","\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonical_json(doc) == expected.encode("utf-8")


def test_canonical_json_basics() -> None:
    assert (
        canonical_json({"b": 1, "a": {"d": 2, "c": 3}, "arr": [3, 2, 1]}) == b'{"a":{"c":3,"d":2},"arr":[3,2,1],"b":1}'
    )
    assert canonical_json('\x00\x1f\b\t\n\f\r"\\\u2028') == '"\\u0000\\u001f\\b\\t\\n\\f\\r\\"\\\\\u2028"'.encode()
    assert canonical_json(-(2**53 - 1)) == b"-9007199254740991"
    for bad in [1.5, 2**53, float("nan"), b"x", {1: "x"}, "\ud800", dt.datetime.now(dt.UTC)]:
        with pytest.raises(ExportFormatError):
            canonical_json(bad)


def ref_jcs_string(s: str) -> str:
    """RFC 8785 §3.2.2.2 string serialisation, character by character (independent reference)."""
    short = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
    out = []
    for ch in s:
        if ch in short:
            out.append(short[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_string_escaping_matches_reference(s: str) -> None:
    assert canonical_json(s) == ref_jcs_string(s).encode("utf-8")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53 - 1), 2**53 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_canonical_json_round_trips_and_is_stable(value: object) -> None:
    encoded = canonical_json(value)
    decoded = parse_json_strict(encoded)
    assert decoded == value
    assert canonical_json(decoded) == encoded
    # For BMP-only keys, JCS order equals Python's code point order used by json.dumps.
    dumped = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    if not any(ord(ch) > 0xFFFF for ch in dumped):
        assert encoded == dumped.encode("utf-8")


# --------------------------------------------------------------------------- entries


def test_leaf_bytes_are_the_canonical_entry() -> None:
    entry = sample_entry()
    assert entry["receipt"] == "01ab"
    assert entry["time"] == "2026-11-27T13:00:00.123456Z"
    expected = (
        b'{"action":"card.issued","actor":{"id":"42","organisation":"agency","type":"user"},'
        b'"card":"CIN-0001","details":{"kvn":48,"list":[1,null,"x"],"ok":true,"scp":"03"},'
        b'"index":0,"organisation":"agency","outcome":"success","reason":null,"receipt":"01ab",'
        b'"subject":{"id":"CIN-0001","type":"card"},"time":"2026-11-27T13:00:00.123456Z"}'
    )
    assert canonical_leaf_bytes(entry) == expected
    assert entry_leaf_hash(entry) == merkle.leaf_hash(expected)
    reordered = dict(reversed(list(entry.items())))
    assert canonical_leaf_bytes(reordered) == expected


def test_make_entry_normalises_empty_strings() -> None:
    entry = make_entry(
        index=3,
        time="2026-01-01T00:00:00Z",
        actor_type="system",
        actor_id="",
        actor_organisation="",
        action="job.done",
        subject_type="job",
        subject_id=7,  # type: ignore[arg-type]
        reason="",
        receipt="ABCD",
    )
    assert entry["actor"] == {"type": "system", "id": None, "organisation": None}
    assert entry["subject"] == {"type": "job", "id": "7"}
    assert entry["reason"] is None and entry["receipt"] == "abcd" and entry["details"] == {}


@pytest.mark.parametrize(
    "change",
    [
        {"index": -1},
        {"index": True},
        {"time": "2026-11-27 13:00:00Z"},
        {"time": "2026-11-27T13:00:00+01:00"},
        {"time": "2026-02-30T13:00:00Z"},
        {"actor": {"type": "robot", "id": None, "organisation": None}},
        {"actor": {"type": "user", "id": 5, "organisation": None}},
        {"actor": {"type": "user", "id": None}},
        {"action": ""},
        {"subject": {"type": "card", "id": 1}},
        {"outcome": "ok"},
        {"reason": 3},
        {"receipt": "ABCD"},
        {"receipt": "abc"},
        {"receipt": ""},
        {"details": []},
        {"details": {"x": 1.5}},
        {"extra": 1},
    ],
)
def test_invalid_entries_rejected(change: dict) -> None:
    entry = sample_entry()
    entry.update(change)
    with pytest.raises(ExportFormatError):
        validate_entry(entry)
    with pytest.raises(ExportFormatError):
        canonical_leaf_bytes(entry)


def test_missing_member_rejected() -> None:
    entry = sample_entry()
    del entry["reason"]
    with pytest.raises(ExportFormatError):
        validate_entry(entry)


def test_format_time() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    assert format_time(dt.datetime(2026, 1, 1, 1, 0, tzinfo=cet)) == "2026-01-01T00:00:00.000000Z"
    with pytest.raises(ExportFormatError):
        format_time(dt.datetime(2026, 1, 1))  # naive


# --------------------------------------------------------------------------- strict JSON and files


def test_strict_json_rejects_duplicates_floats_and_constants() -> None:
    for text in ['{"a":1,"a":2}', '{"a":1.0}', '{"a":NaN}', '{"a":Infinity}', '{"a":1e3}', "{"]:
        with pytest.raises(ExportFormatError):
            parse_json_strict(text)


def test_writer_and_reader_round_trip() -> None:
    header = ExportHeader(
        origin="o",
        verifier_key="k",
        checkpoint="c",
        checkpoints=["c0"],
        consistency_proofs={2: [b"\x01" * 32]},
        exported_at="2026-01-01T00:00:00Z",
    )
    buf = io.StringIO()
    writer = ExportWriter(buf, header)
    entries = [sample_entry(i) for i in range(3)]
    for e in entries:
        writer.write_entry(e, leaf_hash=entry_leaf_hash(e))
    assert writer.count == 3
    with pytest.raises(ExportFormatError):
        writer.write_entry(sample_entry(7))
    text = buf.getvalue()
    first = json.loads(text.splitlines()[0])
    assert first["format"] == FORMAT
    got_header, lines = read_export(io.BytesIO(text.encode()))
    assert got_header == header
    got = list(lines)
    assert [g.index for g in got] == [0, 1, 2]
    assert [g.entry for g in got] == entries
    assert [g.lineno for g in got] == [2, 3, 4]
    assert got[1].leaf_hash == entry_leaf_hash(entries[1])


@pytest.mark.parametrize(
    "header",
    [
        {"format": "other/1", "origin": "o", "verifier_key": "k", "checkpoint": "c"},
        {"format": FORMAT, "origin": "o", "verifier_key": "k"},
        {"format": FORMAT, "origin": "o", "verifier_key": "k", "checkpoint": "c", "surprise": 1},
        {"format": FORMAT, "origin": "o", "verifier_key": "k", "checkpoint": "c", "consistency_proofs": [{}]},
        {
            "format": FORMAT,
            "origin": "o",
            "verifier_key": "k",
            "checkpoint": "c",
            "consistency_proofs": [{"from_size": 1, "proof": ["AAAA"]}],
        },
    ],
)
def test_bad_headers_rejected(header: dict) -> None:
    with pytest.raises(ExportFormatError):
        read_export(io.BytesIO((json.dumps(header) + "\n").encode()))


def test_bad_lines_rejected() -> None:
    head = json.dumps({"format": FORMAT, "origin": "o", "verifier_key": "k", "checkpoint": "c"}) + "\n"
    for body in [
        '{"index":0}\n',
        '{"index":0,"entry":{},"x":1}\n',
        '{"index":0,"entry":{},"leaf_hash":"zz"}\n',
        '{"index":0,"entry":{}}',  # no final newline
        "[]\n",
    ]:
        _, lines = read_export(io.BytesIO((head + body).encode()))
        with pytest.raises(ExportFormatError):
            list(lines)
    _, lines = read_export(io.BytesIO(head.encode() + b'{"index":0,"entry":"\xff"}\n'))
    with pytest.raises(ExportFormatError):
        list(lines)
    with pytest.raises(ExportFormatError):
        read_export(io.BytesIO(b""))
