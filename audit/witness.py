"""A C2SP tlog-witness for the audit log, run by a regulator on its own machine (no Django).

    python -m audit.witness keygen --name NAME --out KEYFILE      # prints the witness's vkey
    python -m audit.witness vkey --key KEYFILE                    # prints it again
    python -m audit.witness serve --key KEYFILE --log-origin ORIGIN --log-key VKEY|@FILE \\
        --port PORT [--host 127.0.0.1] --state FILE

Protocol (c2sp.org/tlog-witness): ``POST /add-checkpoint`` with the body ::

    old <size the client believes the witness last cosigned>\\n
    <base64 consistency proof hash>\\n ...   (RFC 6962/9162, old size -> checkpoint size; at most 63)
    \\n
    <the checkpoint note, signed by the log>

Answers: 200 with one cosignature/v1 line (c2sp.org/tlog-cosignature); 400 malformed request or
an old size above the checkpoint size; 403 no valid signature by the log's key; 404 unknown
origin (or path); 409 ``text/x.tlog.size`` with the size the witness last cosigned when the old
size is not that size, or when it is the checkpoint's size but the root differs (a fork);
422 the consistency proof does not verify (a fork, or a rollback below what it cosigned).

The witness keeps, per log, the size, root and note of the latest checkpoint it cosigned in its
state file (JSON, written to a temporary file, fsynced and renamed into place before it answers),
and the check of the old size and the update happen under one lock, so it never cosigns two
inconsistent checkpoints of a log, nor a smaller tree after a larger one, across restarts too.
Its private key lives only in its key file (mode 0600; refused if group or others may read it).

The client side (:func:`add_checkpoint_body`, :func:`submit`, :func:`parse_size_response`) is
here too, so the platform and tests speak the same wire format.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import http.client
import json
import os
import re
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import (
    CheckpointError,
    MalformedCheckpointError,
    SignatureError,
    Verifier,
    cosign,
    cosigner_signer_key_for,
    cosigner_vkey_for,
    load_cosigner_key,
    open_note,
    parse_checkpoint_body,
    parse_vkey,
    split_note,
)
from audit.merkle import EMPTY_ROOT, ProofError, verify_consistency

__all__ = [
    "SIZE_CONTENT_TYPE",
    "Reply",
    "Witness",
    "WitnessUnavailable",
    "add_checkpoint_body",
    "generate_key_file",
    "load_key_file",
    "main",
    "make_server",
    "parse_size_response",
    "submit",
]

SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_BODY = 64 * 1024
MAX_PROOF_LINES = 63
STATE_FORMAT = "ecard-witness-state/1"
_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,18}")


@dataclass(frozen=True)
class Reply:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


class _Refuse(Exception):
    def __init__(self, status: int, message: str, content_type: str = "text/plain; charset=utf-8") -> None:
        super().__init__(message)
        self.reply = Reply(status, message if message.endswith("\n") else message + "\n", content_type)


# --------------------------------------------------------------------------- key file


class KeyFileError(Exception):
    """The witness key file is missing, unreadable, too open, or not a witness key."""


def generate_key_file(path: Path, name: str) -> str:
    """Create a new witness key in ``path`` (mode 0600, never overwritten); return its vkey."""
    private_key = Ed25519PrivateKey.generate()
    secret = cosigner_signer_key_for(private_key, name)  # validates the name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; not overwriting a witness key") from None
    with os.fdopen(fd, "w", encoding="ascii") as fp:
        fp.write(secret + "\n")
    os.chmod(path, 0o600)
    return cosigner_vkey_for(private_key.public_key(), name)


def load_key_file(path: Path) -> tuple[str, Ed25519PrivateKey]:
    """``(witness name, private key)`` from a key file that only its owner may read."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise KeyFileError(f"cannot read the witness key {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not a witness key file") from None
    try:
        return load_cosigner_key(text)
    except MalformedCheckpointError as exc:
        raise KeyFileError(f"{path} is not a witness key file: {exc}") from None


# --------------------------------------------------------------------------- the witness


def _b64_hash(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _Refuse(400, f"{what} is not base64") from None
    if len(raw) != 32 or base64.b64encode(raw).decode() != text:
        raise _Refuse(400, f"{what} is not a canonical base64 32-byte hash")
    return raw


def parse_request(body: bytes) -> tuple[int, list[bytes], str]:
    """Split an add-checkpoint body into (old size, proof hashes, checkpoint note); _Refuse(400) if malformed."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refuse(400, "request body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise _Refuse(400, "request needs an old size line, proof lines, an empty line, then the checkpoint")
    lines = head.split("\n")
    first = lines[0]
    if not first.startswith("old ") or not _SIZE_RE.fullmatch(first[4:]):
        raise _Refuse(400, "first line must be 'old <size>' (decimal, no leading zeroes)")
    proof_lines = lines[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        raise _Refuse(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = [_b64_hash(line, f"consistency proof line {k}") for k, line in enumerate(proof_lines, start=1)]
    return int(first[4:]), proof, note


class Witness:
    """The witness's logic, without HTTP: :meth:`add_checkpoint` maps a request body to a reply.

    ``logs`` maps each known origin to the log's verifier key. State is ``{origin: {"size", "root",
    "checkpoint"}}`` in ``state_path``; ``clock`` gives POSIX seconds for the cosignature timestamp.
    """

    def __init__(
        self,
        name: str,
        private_key: Ed25519PrivateKey,
        logs: dict[str, Verifier],
        state_path: Path,
        *,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self._key = private_key
        self.logs = dict(logs)
        self.state_path = Path(state_path)
        self._clock = clock
        self._log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self._lock = threading.Lock()
        self.state = self._load_state()

    @property
    def vkey(self) -> str:
        return cosigner_vkey_for(self._key.public_key(), self.name)

    # state file -----------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict[str, Any]]:
        try:
            raw = self.state_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
            if data.get("format") != STATE_FORMAT or not isinstance(data.get("logs"), dict):
                raise ValueError("unknown format")
            logs = {}
            for origin, item in data["logs"].items():
                size, root = item["size"], base64.b64decode(item["root"], validate=True)
                if not isinstance(size, int) or size < 0 or len(root) != 32:
                    raise ValueError(f"bad entry for {origin}")
                logs[origin] = {"size": size, "root": root, "checkpoint": str(item.get("checkpoint", ""))}
            return logs
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            # Never start from scratch over a damaged state: that would let a log roll back.
            raise ValueError(f"witness state {self.state_path} is unreadable ({exc}); refusing to start") from None

    def _save_state(self, state: dict[str, dict[str, Any]]) -> None:
        data = {
            "format": STATE_FORMAT,
            "logs": {
                origin: {"size": v["size"], "root": base64.b64encode(v["root"]).decode(), "checkpoint": v["checkpoint"]}
                for origin, v in sorted(state.items())
            },
        }
        directory = self.state_path.parent
        fd, tmp = tempfile.mkstemp(prefix=".witness-state-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fp:
                json.dump(data, fp, indent=1, sort_keys=True)
                fp.write("\n")
                fp.flush()
                os.fsync(fp.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # the protocol ---------------------------------------------------------------------------

    def add_checkpoint(self, body: bytes) -> Reply:
        try:
            return self._add_checkpoint(body)
        except _Refuse as refusal:
            return refusal.reply

    def _add_checkpoint(self, body: bytes) -> Reply:
        old, proof, note = parse_request(body)
        try:
            text, _signatures = split_note(note)
            checkpoint = parse_checkpoint_body(text)
        except MalformedCheckpointError as exc:
            raise _Refuse(400, f"malformed checkpoint: {exc}") from None
        verifier = self.logs.get(checkpoint.origin)
        if verifier is None:
            raise _Refuse(404, "unknown log origin")
        try:
            open_note(note, verifier)
        except SignatureError:
            self._log(f"refused: {checkpoint.origin} size {checkpoint.size} without a valid log signature")
            raise _Refuse(403, "no valid signature by the log's key") from None
        except CheckpointError as exc:
            raise _Refuse(400, f"malformed checkpoint: {exc}") from None
        if old > checkpoint.size:
            raise _Refuse(400, "old size is larger than the checkpoint size")
        with self._lock:  # the check of the old size and the update are one step
            known = self.state.get(checkpoint.origin)
            known_size, known_root = (known["size"], known["root"]) if known else (0, EMPTY_ROOT)
            if old != known_size:
                return Reply(409, f"{known_size}\n", SIZE_CONTENT_TYPE)
            if old == checkpoint.size and checkpoint.root != known_root:
                self._log(f"refused: fork of {checkpoint.origin} at size {old} (another root than the one cosigned)")
                return Reply(409, f"{known_size}\n", SIZE_CONTENT_TYPE)
            try:
                verify_consistency(old, checkpoint.size, known_root, checkpoint.root, proof)
            except ProofError as exc:
                self._log(f"refused: {checkpoint.origin} size {checkpoint.size} inconsistent with size {old}: {exc}")
                raise _Refuse(422, f"consistency proof from size {old} does not verify") from None
            new_state = dict(self.state)
            new_state[checkpoint.origin] = {"size": checkpoint.size, "root": checkpoint.root, "checkpoint": note}
            self._save_state(new_state)  # persisted before answering
            self.state = new_state
        line = cosign(text, self._key, self.name, int(self._clock()))
        self._log(f"cosigned {checkpoint.origin} size {checkpoint.size}")
        return Reply(200, line)


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ecard-witness/1"
    timeout = 30  # seconds a connection may stay idle or trickle a request (no thread held forever)
    witness: Witness  # set on the subclass made by make_server

    def _send(self, reply: Reply) -> None:
        data = reply.body.encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        try:
            if urllib.parse.urlsplit(self.path).path != "/add-checkpoint":
                self._discard_body()
                self._send(Reply(404, "not found\n"))
                return
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                self._send(Reply(411 if length is None else 400, "a Content-Length is required\n"))
                return
            if int(length) > MAX_BODY:
                self.close_connection = True
                self._send(Reply(413, "request body too large\n"))
                return
            body = self.rfile.read(int(length))
            self._send(self.witness.add_checkpoint(body))
        except Exception as exc:  # never a stack trace to the client or the log
            self.close_connection = True
            self.log_message("internal error: %s", type(exc).__name__)
            with contextlib.suppress(OSError):
                self._send(Reply(500, "internal error\n"))

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path == "/healthz":
            self._send(Reply(200, "ok\n"))
        else:
            self._send(Reply(404, "not found\n"))

    def _discard_body(self) -> None:
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= MAX_BODY:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"witness: {self.address_string()} {format % args}\n")


def make_server(witness: Witness, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("WitnessHandler", (_Handler,), {"witness": witness})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


# --------------------------------------------------------------------------- client side


class WitnessUnavailable(Exception):
    """The witness could not be reached or failed internally (retry later)."""


def add_checkpoint_body(old: int, proof: Sequence[bytes], checkpoint_note: str) -> bytes:
    """The request body of ``POST /add-checkpoint``."""
    lines = [f"old {old}", *(base64.b64encode(bytes(h)).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + checkpoint_note).encode("utf-8")


def submit(url: str, body: bytes, *, timeout: float = 10.0) -> tuple[int, str, str]:
    """POST ``body`` to ``<url>/add-checkpoint``; ``(status, content type, text)``.

    Raises :class:`WitnessUnavailable` when the witness cannot be reached or answers 5xx."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"witness URL must be http(s)://host[:port][/prefix], not {url!r}")
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.hostname, parts.port, timeout=timeout)
    path = parts.path.rstrip("/") + "/add-checkpoint"
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/plain; charset=utf-8"})
        response = conn.getresponse()
        text = response.read(MAX_BODY).decode("utf-8", "replace")
        status, content_type = response.status, response.getheader("Content-Type", "")
    except (OSError, http.client.HTTPException) as exc:
        raise WitnessUnavailable(f"witness at {url} unreachable: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()
    if status >= 500:
        raise WitnessUnavailable(f"witness at {url} answered {status}")
    return status, content_type.split(";")[0].strip(), text


def parse_size_response(text: str) -> int | None:
    """The size in a 409 ``text/x.tlog.size`` body, or None if it is not one."""
    if text.endswith("\n") and _SIZE_RE.fullmatch(text[:-1]):
        return int(text[:-1])
    return None


# --------------------------------------------------------------------------- CLI


def _read_vkey_arg(value: str) -> str:
    if value.startswith("@"):
        return Path(value[1:]).read_text(encoding="utf-8").strip()
    return value.strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audit.witness", description="C2SP tlog-witness for the audit log.")
    sub = parser.add_subparsers(dest="command", required=True)
    keygen = sub.add_parser("keygen", help="make the witness key pair; print the verifier key")
    keygen.add_argument("--name", required=True, help="the witness name, e.g. regulator.example/witness")
    keygen.add_argument("--out", required=True, type=Path, help="private key file to create (mode 0600)")
    vkey = sub.add_parser("vkey", help="print the verifier key of a key file")
    vkey.add_argument("--key", required=True, type=Path)
    serve = sub.add_parser("serve", help="run the witness (HTTP)")
    serve.add_argument("--key", required=True, type=Path, help="the witness key file (from keygen)")
    serve.add_argument("--log-origin", required=True, help="origin line of the log to witness")
    serve.add_argument("--log-key", required=True, help="the log's verifier key, or @FILE")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--state", required=True, type=Path, help="state file (latest cosigned checkpoint per log)")
    args = parser.parse_args(argv)

    try:
        if args.command == "keygen":
            print(generate_key_file(args.out, args.name))
            return 0
        name, private_key = load_key_file(args.key)
        if args.command == "vkey":
            print(cosigner_vkey_for(private_key.public_key(), name))
            return 0
        log_verifier = parse_vkey(_read_vkey_arg(args.log_key))
        witness = Witness(name, private_key, {args.log_origin: log_verifier}, args.state)
        server = make_server(witness, args.host, args.port)
    except (KeyFileError, MalformedCheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"witness {witness.vkey} for {args.log_origin} on http://{args.host}:{server.server_port}/", file=sys.stderr)
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
