"""The witness (``audit.witness``, c2sp.org/tlog-witness) by attack, without Django.

In-process through :meth:`Witness.add_checkpoint` (the whole request body to the reply) and as
``python -m audit.witness serve`` on a loopback port: it cosigns an honest growth, refuses a
rolled-back log, refuses the second branch of a split view, answers every malformed request with
a 4xx (never a stack trace), keeps its state across restarts, and its key file is 0600.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import merkle
from audit.checkpoint import (
    cosignature_message,
    cosigner_vkey_for,
    key_id,
    make_checkpoint,
    parse_cosigner_vkey,
    parse_vkey,
    split_note,
    verify_cosignatures,
    vkey_for,
)
from audit.witness import (
    SIZE_CONTENT_TYPE,
    KeyFileError,
    Witness,
    WitnessUnavailable,
    add_checkpoint_body,
    generate_key_file,
    load_key_file,
    parse_size_response,
    submit,
)

REPO = Path(__file__).resolve().parents[2]
ORIGIN = "ecard.example/audit"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
LOG_VKEY = parse_vkey(vkey_for(LOG_KEY.public_key(), ORIGIN))
EVIL_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
WITNESS_NAME = "regulator.example/witness"
WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(50, 82)))
WITNESS_VKEY = cosigner_vkey_for(WITNESS_KEY.public_key(), WITNESS_NAME)


class Log:
    """A log the test controls: leaves, and signed checkpoints of any prefix."""

    def __init__(self, leaves: list[bytes], key: Ed25519PrivateKey = LOG_KEY) -> None:
        self.store = merkle.MemoryNodeStore.from_leaves(leaves)
        self.key = key

    def checkpoint(self, size: int) -> str:
        return make_checkpoint(ORIGIN, size, self.store.root(size), self.key)

    def request(self, old: int, size: int) -> bytes:
        proof = self.store.consistency_proof(old, size) if old else []
        return add_checkpoint_body(old, proof, self.checkpoint(size))


def leaves(n: int, salt: str = "") -> list[bytes]:
    return [f"entry {i}{salt if i >= 10 else ''}".encode() for i in range(n)]


HONEST = Log(leaves(40))
FORK = Log(leaves(40, salt="-fork"))  # same first 10 entries, then another history


@pytest.fixture
def witness(tmp_path: Path) -> Witness:
    return Witness(
        WITNESS_NAME,
        WITNESS_KEY,
        {ORIGIN: LOG_VKEY},
        tmp_path / "state.json",
        clock=lambda: 1_700_000_000,
        log=lambda _m: None,
    )


def cosigned(checkpoint: str, reply_body: str) -> list:
    return verify_cosignatures(checkpoint + reply_body, [parse_cosigner_vkey(WITNESS_VKEY)])


# --------------------------------------------------------------------------- cosignature format


def test_cosignature_follows_tlog_cosignature(witness: Witness) -> None:
    reply = witness.add_checkpoint(HONEST.request(0, 12))
    assert reply.status == 200 and reply.body.startswith(f"— {WITNESS_NAME} ") and reply.body.endswith("\n")
    blob = base64.b64decode(reply.body.split(" ")[2])
    # key id with algorithm byte 0x04, then the u64 big-endian timestamp, then the Ed25519 signature
    public = WITNESS_KEY.public_key()
    assert blob[:4] == key_id(WITNESS_NAME, public, 0x04) != key_id(WITNESS_NAME, public)
    assert int.from_bytes(blob[4:12], "big") == 1_700_000_000 and len(blob) == 76
    body, _ = split_note(HONEST.checkpoint(12))
    message = cosignature_message(body, 1_700_000_000)
    assert message == b"cosignature/v1\ntime 1700000000\n" + body.encode()
    WITNESS_KEY.public_key().verify(blob[12:], message)  # raises if not
    [cosig] = cosigned(HONEST.checkpoint(12), reply.body)
    assert cosig.timestamp == 1_700_000_000 and cosig.name == WITNESS_NAME


def test_a_forged_cosignature_line_rejects_the_note(witness: Witness) -> None:
    reply = witness.add_checkpoint(HONEST.request(0, 12))
    other = HONEST.checkpoint(13)  # the witness's line moved onto a checkpoint it never saw
    with pytest.raises(Exception, match="invalid cosignature"):
        cosigned(other, reply.body)
    assert cosigned(other, "") == []  # absent: no cosignature, which a quorum check then counts


# --------------------------------------------------------------------------- attacks


def test_honest_growth_is_cosigned_step_by_step(witness: Witness) -> None:
    for old, new in [(0, 5), (5, 5), (5, 16), (16, 17), (17, 40)]:
        reply = witness.add_checkpoint(HONEST.request(old, new))
        assert reply.status == 200, (old, new, reply)
        assert len(cosigned(HONEST.checkpoint(new), reply.body)) == 1
        assert witness.state[ORIGIN]["size"] == new and witness.state[ORIGIN]["root"] == HONEST.store.root(new)


def test_rolled_back_log_is_refused(witness: Witness) -> None:
    assert witness.add_checkpoint(HONEST.request(0, 30)).status == 200
    # the log claims the witness last saw 20 and presents 25: the witness knows 30
    reply = witness.add_checkpoint(HONEST.request(20, 25))
    assert (reply.status, reply.body, reply.content_type) == (409, "30\n", SIZE_CONTENT_TYPE)
    # a smaller tree presented as the next one, with the real old size: old > size is malformed
    reply = witness.add_checkpoint(add_checkpoint_body(30, [], HONEST.checkpoint(25)))
    assert reply.status == 400
    # a log that lost its last entries and re-grew differently to the same size: a fork at 30
    rolled = Log(leaves(25) + [b"rewritten"] * 15)
    reply = witness.add_checkpoint(add_checkpoint_body(30, [], rolled.checkpoint(30)))
    assert reply.status == 409 and parse_size_response(reply.body) == 30
    proof = rolled.store.consistency_proof(30, 35)
    reply = witness.add_checkpoint(add_checkpoint_body(30, proof, rolled.checkpoint(35)))
    assert reply.status == 422
    assert witness.state[ORIGIN]["size"] == 30 and witness.state[ORIGIN]["root"] == HONEST.store.root(30)


def test_split_view_second_branch_is_refused(witness: Witness) -> None:
    """The log shows party A the honest branch and party B a fork after entry 10; both look
    consistent on their own (each is a valid Merkle tree with a valid log signature)."""
    assert witness.add_checkpoint(HONEST.request(0, 10)).status == 200  # common prefix
    assert witness.add_checkpoint(HONEST.request(10, 20)).status == 200  # branch A
    # branch B, at the same size: the witness has another root for 20
    reply = witness.add_checkpoint(add_checkpoint_body(20, [], FORK.checkpoint(20)))
    assert reply.status == 409
    # branch B, larger, claiming to extend what the witness saw: no proof from A's root works
    for proof in (FORK.store.consistency_proof(20, 30), HONEST.store.consistency_proof(20, 30)):
        assert witness.add_checkpoint(add_checkpoint_body(20, proof, FORK.checkpoint(30))).status == 422
    # branch B pretending the witness only saw the common prefix: the witness knows better
    reply = witness.add_checkpoint(FORK.request(10, 30))
    assert (reply.status, parse_size_response(reply.body)) == (409, 20)
    # B's own proof from 10 is valid, so only the witness's memory stops it
    merkle.verify_consistency(10, 30, FORK.store.root(10), FORK.store.root(30), FORK.store.consistency_proof(10, 30))
    assert witness.state[ORIGIN]["root"] == HONEST.store.root(20)
    assert witness.add_checkpoint(HONEST.request(20, 40)).status == 200  # branch A continues


def test_signature_and_origin_checks(witness: Witness) -> None:
    forged = Log(leaves(40), key=EVIL_KEY)
    assert witness.add_checkpoint(forged.request(0, 5)).status == 403
    other_origin = make_checkpoint("other.example/log", 5, HONEST.store.root(5), LOG_KEY)
    assert witness.add_checkpoint(add_checkpoint_body(0, [], other_origin)).status == 404
    # a valid log signature plus an unknown one is fine (unknown signatures are ignored)
    extra = (
        HONEST.checkpoint(5)
        + make_checkpoint(ORIGIN, 5, HONEST.store.root(5), EVIL_KEY, "someone.else").split("\n\n")[1]
    )
    assert witness.add_checkpoint(add_checkpoint_body(0, [], extra)).status == 200
    assert ORIGIN in witness.state


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"old 0\n",
        b"old -1\n\nx\n",
        b"old 01\n\n",
        b"new 0\n\n",
        b"old 0\nnot base64!\n\n",
        b"old 0\n" + base64.b64encode(b"short") + b"\n\n",
        b"old 0\n" + b"".join(base64.b64encode(bytes([i]) * 32) + b"\n" for i in range(64)) + b"\n",
        b"old 0\n\nnot a note",
        b"old 0\n\norigin\n5\n\n\xe2\x80\x94 x y\n",
    ],
)
def test_malformed_requests_get_400(witness: Witness, body: bytes) -> None:
    reply = witness.add_checkpoint(body)
    assert reply.status == 400 and "Traceback" not in reply.body


def test_state_survives_restart_and_damage_refuses_start(witness: Witness, tmp_path: Path) -> None:
    assert witness.add_checkpoint(HONEST.request(0, 20)).status == 200
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["logs"][ORIGIN]["size"] == 20
    assert "PRIVATE" not in (tmp_path / "state.json").read_text()
    again = Witness(WITNESS_NAME, WITNESS_KEY, {ORIGIN: LOG_VKEY}, tmp_path / "state.json", log=lambda _m: None)
    assert again.add_checkpoint(FORK.request(10, 30)).status == 409  # still remembers 20
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind
    (tmp_path / "state.json").write_text("{")
    with pytest.raises(ValueError, match="refusing to start"):
        Witness(WITNESS_NAME, WITNESS_KEY, {ORIGIN: LOG_VKEY}, tmp_path / "state.json")


def test_key_file(tmp_path: Path) -> None:
    path = tmp_path / "w.key"
    vkey = generate_key_file(path, WITNESS_NAME)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    name, private_key = load_key_file(path)
    assert name == WITNESS_NAME and cosigner_vkey_for(private_key.public_key(), name) == vkey
    assert vkey not in path.read_text() and "PRIVATE+KEY+" in path.read_text()
    with pytest.raises(KeyFileError, match="exists"):
        generate_key_file(path, WITNESS_NAME)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_key_file(path)


# --------------------------------------------------------------------------- the real process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def witness_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "audit.witness", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=30,
        check=False,
    )


def wait_until_up(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"witness exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            submit(url, b"old 0\n\n", timeout=1)
            return
        except WitnessUnavailable:
            time.sleep(0.05)
    raise RuntimeError("witness did not start")


@pytest.fixture
def witness_process(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    key = tmp_path / "witness.key"
    made = witness_cli("keygen", "--name", WITNESS_NAME, "--out", str(key))
    assert made.returncode == 0, made.stderr
    vkey = made.stdout.strip()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and "PRIVATE" not in made.stdout + made.stderr
    assert witness_cli("vkey", "--key", str(key)).stdout.strip() == vkey
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "audit.witness",
            "serve",
            "--key",
            str(key),
            "--log-origin",
            ORIGIN,
            "--log-key",
            LOG_VKEY.vkey,
            "--port",
            str(port),
            "--state",
            str(tmp_path / "state.json"),
        ],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc)
        yield url, vkey, tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_real_witness_process(witness_process: tuple[str, str, Path]) -> None:
    url, vkey, tmp_path = witness_process
    status, ctype, text = submit(url, HONEST.request(0, 10))
    assert status == 200
    assert len(verify_cosignatures(HONEST.checkpoint(10) + text, [parse_cosigner_vkey(vkey)])) == 1
    status, ctype, text = submit(url, FORK.request(0, 12))
    assert (status, ctype, text) == (409, SIZE_CONTENT_TYPE, "10\n")
    assert submit(url, add_checkpoint_body(10, FORK.store.consistency_proof(10, 12), FORK.checkpoint(12)))[0] == 200
    assert submit(url, add_checkpoint_body(12, HONEST.store.consistency_proof(12, 20), HONEST.checkpoint(20)))[0] == 422
    assert submit(url + "/nope", b"x")[0] == 404
    assert json.loads((tmp_path / "state.json").read_text())["logs"][ORIGIN]["size"] == 12


def test_real_witness_answers_garbage_with_4xx(witness_process: tuple[str, str, Path]) -> None:
    url, _vkey, _tmp = witness_process
    host, port = url.removeprefix("http://").split(":")
    for method, path, body, headers in [
        ("POST", "/add-checkpoint", b"\x00\x01garbage", {}),
        ("POST", "/add-checkpoint", b"x" * 70_000, {}),
        ("POST", "/add-checkpoint", b"old 99999999999999999999999\n\n", {}),
        ("GET", "/add-checkpoint", None, {}),
    ]:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        assert 400 <= response.status < 500, (method, path, response.status)
        assert "Traceback" not in text
    with socket.create_connection((host, int(port)), timeout=5) as raw:  # no Content-Length at all
        raw.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 411")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = witness_cli(
        "serve",
        "--key",
        str(tmp_path / "missing.key"),
        "--log-origin",
        ORIGIN,
        "--log-key",
        LOG_VKEY.vkey,
        "--port",
        "1",
        "--state",
        str(tmp_path / "s.json"),
    )
    assert result.returncode == 2 and result.stderr.startswith("error: cannot read the witness key")
    assert "Traceback" not in result.stderr
    key = tmp_path / "k"
    assert witness_cli("keygen", "--name", "bad name", "--out", str(key)).returncode == 2
    assert witness_cli("keygen", "--name", WITNESS_NAME, "--out", str(key)).returncode == 0
    result = witness_cli(
        "serve",
        "--key",
        str(key),
        "--log-origin",
        ORIGIN,
        "--log-key",
        "garbage",
        "--port",
        "1",
        "--state",
        str(tmp_path / "s.json"),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
