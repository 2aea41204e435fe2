"""audit.checkpoint: C2SP signed notes and tlog checkpoints, checked against the Go reference vector."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import checkpoint as cp
from audit.checkpoint import CheckpointError, MalformedCheckpointError, SignatureError

# golang.org/x/mod/sumdb/note, package documentation ("Example") and note_test.go:
# signer key, verifier key, text and the resulting signed notes (Ed25519 is deterministic).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
GO_ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)
GO_NOTE = GO_TEXT + "\n" + GO_SIG

ORIGIN = "ecard.example/audit"
ROOT = hashlib.sha256(b"some root").digest()


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


# --------------------------------------------------------------------------- Go reference vector


def test_go_signer_key_reproduces_the_reference_note() -> None:
    name, private_key = cp.load_signer_key(GO_SKEY)
    assert name == "PeterNeumann"
    assert cp.vkey_for(private_key.public_key(), name) == GO_VKEY
    assert cp.signer_key_for(private_key, name) == GO_SKEY
    assert cp.sign_note(GO_TEXT, private_key, name) == GO_NOTE


def test_go_reference_note_opens() -> None:
    assert cp.open_note(GO_NOTE, GO_VKEY) == GO_TEXT
    doubly = GO_NOTE + GO_ENOCH_SIG
    assert cp.open_note(doubly, GO_VKEY) == GO_TEXT  # Enoch's signature is ignored
    assert cp.open_note(doubly, GO_ENOCH_VKEY) == GO_TEXT
    with pytest.raises(SignatureError):
        cp.open_note(GO_NOTE, GO_ENOCH_VKEY)  # only an unknown key signed


def test_go_verifier_key_parses_and_manglings_fail() -> None:
    v = cp.parse_vkey(GO_VKEY)
    assert v.name == "PeterNeumann"
    assert v.key_id.hex() == "c74f20a3"
    assert v.vkey == GO_VKEY
    for bad in [
        GO_VKEY.replace("c74f20a3", "c74f20a4"),
        GO_VKEY.replace("PeterNeumann", "PeterNeuman"),
        GO_VKEY.replace("+ARpc", "+AhpC"),
        GO_VKEY[:-1],
        "PeterNeumann+c74f20a3",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        GO_VKEY.replace("c74f20a3", "C74F20A3"),
    ]:
        with pytest.raises(MalformedCheckpointError):
            cp.parse_vkey(bad)


def test_key_id_formula() -> None:
    _, private_key = cp.load_signer_key(GO_SKEY)
    pub = base64.b64decode(GO_VKEY.split("+", 2)[2])[1:]
    assert cp.key_id("PeterNeumann", pub) == hashlib.sha256(b"PeterNeumann\n\x01" + pub).digest()[:4]
    assert cp.key_id("PeterNeumann", private_key.public_key()).hex() == "c74f20a3"


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(key: Ed25519PrivateKey) -> None:
    note = cp.make_checkpoint(ORIGIN, 42, ROOT, key)
    body = f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n"
    assert note.startswith(body + "\n— " + ORIGIN + " ")
    vkey = cp.vkey_for(key.public_key(), ORIGIN)
    got = cp.parse_checkpoint(note, vkey)
    assert got == cp.Checkpoint(ORIGIN, 42, ROOT)
    assert cp.parse_checkpoint(note, vkey, origin=ORIGIN) == got
    with pytest.raises(MalformedCheckpointError):
        cp.parse_checkpoint(note, vkey, origin="other.example/log")
    raw_sig = base64.b64decode(note.rstrip("\n").rsplit(" ", 1)[1])
    assert len(raw_sig) == 4 + 64
    assert raw_sig[:4] == cp.key_id(ORIGIN, key.public_key())


def test_checkpoint_with_extensions_and_empty_tree(key: Ed25519PrivateKey) -> None:
    vkey = cp.vkey_for(key.public_key(), "signer.example")
    note = cp.make_checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest(), key, "signer.example", extensions=["x y"])
    got = cp.parse_checkpoint(note, vkey)
    assert got.size == 0 and got.extensions == ("x y",) and got.origin == ORIGIN


def test_checkpoint_other_key_rejected(key: Ed25519PrivateKey, other_key: Ed25519PrivateKey) -> None:
    vkey = cp.vkey_for(key.public_key(), ORIGIN)
    forged = cp.make_checkpoint(ORIGIN, 42, ROOT, other_key)  # same name, different key id
    with pytest.raises(SignatureError):
        cp.parse_checkpoint(forged, vkey)
    # Same name and key id claimed, but the signature is by another key: invalid, not ignored.
    good = cp.make_checkpoint(ORIGIN, 42, ROOT, key)
    text, sig_line = good.split("\n\n")
    other_sig = other_key.sign(text.encode() + b"\n")
    blob = cp.key_id(ORIGIN, key.public_key()) + other_sig
    spoofed = f"{text}\n\n— {ORIGIN} {base64.b64encode(blob).decode()}\n"
    with pytest.raises(SignatureError):
        cp.parse_checkpoint(spoofed, vkey)
    # An extra valid signature by the trusted key after an invalid one still rejects.
    with pytest.raises(SignatureError):
        cp.parse_checkpoint(spoofed + sig_line, vkey)


def test_tampered_checkpoint_rejected(key: Ed25519PrivateKey) -> None:
    vkey = cp.vkey_for(key.public_key(), ORIGIN)
    note = cp.make_checkpoint(ORIGIN, 42, ROOT, key)
    for tampered in [
        note.replace("\n42\n", "\n43\n"),
        note.replace(ORIGIN + "\n", "ecard.example/audi7\n", 1),
        note.replace(base64.b64encode(ROOT).decode(), base64.b64encode(bytes(32)).decode()),
    ]:
        with pytest.raises(SignatureError):
            cp.parse_checkpoint(tampered, vkey)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.rstrip("\n"),  # no final newline
        lambda n: n.replace("\n\n", "\n"),  # no blank line
        lambda n: n.replace("— ", "-- "),  # ASCII instead of em dash
        lambda n: n.replace("— ", "—"),
        lambda n: n.split("\n\n")[0] + "\n\n",  # no signatures
        lambda n: n.replace("\n\n", "\n\r\n"),
        lambda n: n[:-3] + "!=\n",  # broken base64
        lambda n: n.replace("=\n", "=\n\n"),  # trailing empty line
    ],
)
def test_malformed_notes_rejected(key: Ed25519PrivateKey, mangle: Callable[[str], str]) -> None:
    vkey = cp.vkey_for(key.public_key(), ORIGIN)
    note = cp.make_checkpoint(ORIGIN, 42, ROOT, key)
    with pytest.raises(CheckpointError):
        cp.parse_checkpoint(mangle(note), vkey)


@pytest.mark.parametrize(
    "body",
    [
        "origin\n42\n",  # no root
        "origin\n042\n" + base64.b64encode(ROOT).decode() + "\n",  # leading zero
        "origin\n-1\n" + base64.b64encode(ROOT).decode() + "\n",
        "origin\n4 2\n" + base64.b64encode(ROOT).decode() + "\n",
        "origin\n42\n" + base64.b64encode(ROOT[:31]).decode() + "\n",  # short root
        "origin\n42\n" + base64.b64encode(ROOT).decode().rstrip("=") + "\n",  # unpadded
        "\n42\n" + base64.b64encode(ROOT).decode() + "\n",  # empty origin
    ],
)
def test_malformed_checkpoint_bodies_rejected(key: Ed25519PrivateKey, body: str) -> None:
    vkey = cp.vkey_for(key.public_key(), ORIGIN)
    # Sign the malformed body directly (bypassing make_checkpoint's own checks).
    sig = key.sign(body.encode())
    note = f"{body}\n— {ORIGIN} {base64.b64encode(cp.key_id(ORIGIN, key.public_key()) + sig).decode()}\n"
    with pytest.raises(MalformedCheckpointError):
        cp.parse_checkpoint(note, vkey)


def test_make_checkpoint_validates_inputs(key: Ed25519PrivateKey) -> None:
    with pytest.raises(MalformedCheckpointError):
        cp.make_checkpoint("two\nlines", 1, ROOT, key, "name")
    with pytest.raises(MalformedCheckpointError):
        cp.make_checkpoint(ORIGIN, -1, ROOT, key)
    with pytest.raises(MalformedCheckpointError):
        cp.make_checkpoint(ORIGIN, 1, ROOT[:8], key)
    with pytest.raises(MalformedCheckpointError):
        cp.make_checkpoint(ORIGIN, 1, ROOT, key, "bad name")
    with pytest.raises(MalformedCheckpointError):
        cp.make_checkpoint(ORIGIN, 1, ROOT, key, "bad+name")
    with pytest.raises(MalformedCheckpointError):
        cp.make_checkpoint(ORIGIN, 1, ROOT, key, extensions=[""])


def test_signer_key_round_trip(key: Ed25519PrivateKey) -> None:
    skey = cp.signer_key_for(key, ORIGIN)
    name, loaded = cp.load_signer_key(skey)
    assert name == ORIGIN
    raw = serialization.Encoding.Raw
    assert loaded.public_key().public_bytes(raw, serialization.PublicFormat.Raw) == key.public_key().public_bytes(
        raw, serialization.PublicFormat.Raw
    )
    with pytest.raises(MalformedCheckpointError):
        cp.load_signer_key(skey.replace("PRIVATE+KEY+", "PUBLIC+KEY+"))
    with pytest.raises(MalformedCheckpointError):
        cp.load_signer_key(GO_SKEY.replace("c74f20a3", "c74f20a4"))
