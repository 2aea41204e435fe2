"""Signed checkpoints: C2SP tlog-checkpoint bodies inside C2SP signed notes (Ed25519).

Checkpoint body (c2sp.org/tlog-checkpoint)::

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <base64 (RFC 4648 §4) of the 32-byte RFC 9162 root hash>\\n
    [<extension line>\\n ...]

Signed note (c2sp.org/signed-note): the body, one empty line, then one or more lines
``"— <key name> <base64(4-byte key id || 64-byte Ed25519 signature)>\\n"`` (U+2014 em
dash, space).  The signature covers the body including its final newline.

Key id = first 4 bytes of SHA-256(key name || 0x0A || 0x01 || 32-byte public key).
Verifier key ("vkey", as in golang.org/x/mod/sumdb/note)::

    <key name>+<8 hex digits key id>+<base64(0x01 || 32-byte public key)>

Signer key (same origin)::

    PRIVATE+KEY+<key name>+<8 hex digits key id>+<base64(0x01 || 32-byte Ed25519 seed)>

Cosignatures (c2sp.org/tlog-cosignature, cosignature/v1, Ed25519): a witness signs
``"cosignature/v1\\n" + "time <POSIX seconds>\\n" + <the whole checkpoint body>`` and appends the
note signature line ``"— <witness name> <base64(key id || u64 BE timestamp || signature)>"``.
Its key id is SHA-256(name || 0x0A || 0x04 || public key)[:4]; its verifier key has type 0x04.

No Django here: the offline verifier and the witness import this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "Checkpoint",
    "CheckpointError",
    "Cosignature",
    "MalformedCheckpointError",
    "NoteSigningKey",
    "SignatureError",
    "Verifier",
    "checkpoint_body",
    "cosign",
    "cosignature_message",
    "cosigner_signer_key_for",
    "cosigner_vkey_for",
    "key_id",
    "load_cosigner_key",
    "load_signer_key",
    "make_checkpoint",
    "open_note",
    "parse_checkpoint",
    "parse_checkpoint_body",
    "parse_cosigner_vkey",
    "parse_vkey",
    "sign_note",
    "signer_key_for",
    "split_note",
    "verify_cosignatures",
    "vkey_for",
]

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04  # c2sp.org/tlog-cosignature: Ed25519 cosignature/v1 (timestamped)
COSIGNATURE_HEADER = "cosignature/v1\n"
MAX_TIMESTAMP = (1 << 63) - 1
SIG_PREFIX = "— "  # U+2014 EM DASH, U+0020 SPACE
MAX_SIGNATURES = 100
MAX_NOTE_BYTES = 1 << 20
_SIZE_RE = re.compile(r"0|[1-9][0-9]*")
_HEX8_RE = re.compile(r"[0-9a-f]{8}")


class CheckpointError(Exception):
    """Base class: a checkpoint or note that must not be trusted."""


class MalformedCheckpointError(CheckpointError):
    """The note, checkpoint body or key string does not follow the format."""


class SignatureError(CheckpointError):
    """No valid signature by the trusted key (missing, unknown key only, or invalid)."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified (or to-be-signed) tree head."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verifier:
    """A parsed verifier key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey
    alg: int = ALG_ED25519

    @property
    def vkey(self) -> str:
        if self.alg == ALG_COSIGNATURE_V1:
            return cosigner_vkey_for(self.public_key, self.name)
        return vkey_for(self.public_key, self.name)


@dataclass(frozen=True)
class Cosignature:
    """A verified cosignature/v1 line of a witness on a checkpoint."""

    name: str
    key_id: bytes
    timestamp: int
    line: str  # the note signature line, with its final newline


# --------------------------------------------------------------------------- keys


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(ch.isspace() for ch in name) and _no_controls(name)


def _no_controls(text: str) -> bool:
    return not any(ord(ch) < 0x20 and ch != "\n" for ch in text)


def _public_bytes(public_key: Ed25519PublicKey | bytes) -> bytes:
    if isinstance(public_key, Ed25519PublicKey):
        return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw = bytes(public_key)
    if len(raw) != 32:
        raise MalformedCheckpointError("an Ed25519 public key is 32 bytes")
    return raw


def key_id(name: str, public_key: Ed25519PublicKey | bytes, alg: int = ALG_ED25519) -> bytes:
    """SHA-256(name || 0x0A || alg || public key)[:4] (alg 0x01 log keys, 0x04 cosigners)."""
    data = name.encode() + b"\n" + bytes([alg]) + _public_bytes(public_key)
    return hashlib.sha256(data).digest()[:4]


def vkey_for(public_key: Ed25519PublicKey | bytes, name: str, alg: int = ALG_ED25519) -> str:
    """The verifier key string ``<name>+<hex id>+<base64(alg || pubkey)>``."""
    if not _valid_name(name):
        raise MalformedCheckpointError(f"invalid key name {name!r}")
    raw = _public_bytes(public_key)
    return f"{name}+{key_id(name, raw, alg).hex()}+{base64.b64encode(bytes([alg]) + raw).decode()}"


def cosigner_vkey_for(public_key: Ed25519PublicKey | bytes, name: str) -> str:
    """A witness's verifier key: ``<name>+<hex id>+<base64(0x04 || pubkey)>`` (tlog-cosignature)."""
    return vkey_for(public_key, name, ALG_COSIGNATURE_V1)


def _b64decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise MalformedCheckpointError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise MalformedCheckpointError(f"{what} is not canonical base64")
    return raw


_ALG_NAMES = {ALG_ED25519: "an Ed25519 (type 0x01) key", ALG_COSIGNATURE_V1: "a cosignature/v1 (type 0x04) key"}


def parse_vkey(vkey: str, alg: int = ALG_ED25519) -> Verifier:
    """Parse and check a verifier key string (the key id must match name and key)."""
    parts = vkey.strip().split("+", 2)
    if len(parts) != 3:
        raise MalformedCheckpointError("verifier key must be <name>+<hex key id>+<base64 key>")
    name, id_hex, key64 = parts
    if not _valid_name(name) or not _HEX8_RE.fullmatch(id_hex):
        raise MalformedCheckpointError("verifier key has an invalid name or key id")
    raw = _b64decode(key64, "verifier key")
    if len(raw) != 33 or raw[0] != alg:
        raise MalformedCheckpointError(f"verifier key is not {_ALG_NAMES[alg]}")
    if key_id(name, raw[1:], alg).hex() != id_hex:
        raise MalformedCheckpointError("verifier key id does not match its name and key")
    return Verifier(name, bytes.fromhex(id_hex), Ed25519PublicKey.from_public_bytes(raw[1:]), alg)


def parse_cosigner_vkey(vkey: str) -> Verifier:
    """Parse a witness's verifier key (type 0x04, c2sp.org/tlog-cosignature)."""
    return parse_vkey(vkey, ALG_COSIGNATURE_V1)


def signer_key_for(private_key: Ed25519PrivateKey, name: str, alg: int = ALG_ED25519) -> str:
    """The secret signer key string ``PRIVATE+KEY+<name>+<hex id>+<base64(alg || seed)>``."""
    if not _valid_name(name):
        raise MalformedCheckpointError(f"invalid key name {name!r}")
    seed = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    kid = key_id(name, private_key.public_key(), alg)
    return f"PRIVATE+KEY+{name}+{kid.hex()}+{base64.b64encode(bytes([alg]) + seed).decode()}"


def cosigner_signer_key_for(private_key: Ed25519PrivateKey, name: str) -> str:
    """A witness's secret key string (type 0x04); it belongs in the witness's key file only."""
    return signer_key_for(private_key, name, ALG_COSIGNATURE_V1)


def load_signer_key(skey: str, alg: int = ALG_ED25519) -> tuple[str, Ed25519PrivateKey]:
    """Parse a signer key string; return ``(key name, private key)``."""
    parts = skey.strip().split("+", 4)
    if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
        raise MalformedCheckpointError("signer key must be PRIVATE+KEY+<name>+<hex key id>+<base64 key>")
    name, id_hex, key64 = parts[2:]
    if not _valid_name(name) or not _HEX8_RE.fullmatch(id_hex):
        raise MalformedCheckpointError("signer key has an invalid name or key id")
    raw = _b64decode(key64, "signer key")
    if len(raw) != 33 or raw[0] != alg:
        raise MalformedCheckpointError(f"signer key is not {_ALG_NAMES[alg]}")
    private_key = Ed25519PrivateKey.from_private_bytes(raw[1:])
    if key_id(name, private_key.public_key(), alg).hex() != id_hex:
        raise MalformedCheckpointError("signer key id does not match its name and key")
    return name, private_key


def load_cosigner_key(skey: str) -> tuple[str, Ed25519PrivateKey]:
    """Parse a witness's secret key string (type 0x04); return ``(witness name, private key)``."""
    return load_signer_key(skey, ALG_COSIGNATURE_V1)


# --------------------------------------------------------------------------- signed notes


class NoteSigningKey(Protocol):
    """What signing a note takes of a key: an :class:`Ed25519PrivateKey`, or a key held elsewhere
    (the platform's log key stays in key custody: :class:`audit.signing.CheckpointSigner`)."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> Ed25519PublicKey: ...


def sign_note(text: str, private_key: NoteSigningKey, key_name: str) -> str:
    """Sign ``text`` (non-empty, newline-terminated, no blank final line) as a one-signature note."""
    if not _valid_name(key_name):
        raise MalformedCheckpointError(f"invalid key name {key_name!r}")
    if not text.endswith("\n") or text.startswith("\n") or "\n\n" in text or not _no_controls(text):
        raise MalformedCheckpointError("note text must be non-empty lines ending in a newline")
    sig = private_key.sign(text.encode())
    blob = key_id(key_name, private_key.public_key()) + sig
    return f"{text}\n{SIG_PREFIX}{key_name} {base64.b64encode(blob).decode()}\n"


def split_note(note: str) -> tuple[str, list[tuple[str, bytes, str]]]:
    """Check a signed note's format; return its text and ``(key name, signature blob, line)`` per
    signature line (c2sp.org/signed-note: the text ends at the last blank line)."""
    if len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise MalformedCheckpointError("note is too large")
    try:
        note.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedCheckpointError("note is not valid UTF-8") from exc
    if not _no_controls(note):
        raise MalformedCheckpointError("note contains control characters")
    if not note.endswith("\n"):
        raise MalformedCheckpointError("note does not end with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedCheckpointError("note has no signature block")
    text = note[: split + 1]
    sig_lines = note[split + 2 :].split("\n")[:-1]
    if not sig_lines:
        raise MalformedCheckpointError("note has no signatures")
    if len(sig_lines) > MAX_SIGNATURES:
        raise MalformedCheckpointError("note has too many signatures")
    signatures = []
    for line in sig_lines:
        if not line.startswith(SIG_PREFIX):
            raise MalformedCheckpointError("malformed signature line")
        name, sep, sig64 = line[len(SIG_PREFIX) :].partition(" ")
        if not sep or not _valid_name(name) or " " in sig64:
            raise MalformedCheckpointError("malformed signature line")
        blob = _b64decode(sig64, "signature")
        if len(blob) < 5:
            raise MalformedCheckpointError("signature is too short")
        signatures.append((name, blob, line + "\n"))
    return text, signatures


def open_note(note: str, verifier_key: str | Verifier) -> str:
    """Verify a signed note against one trusted key; return its text.

    Follows c2sp.org/signed-note: signatures by other keys are ignored; a signature by
    the trusted key (same name and key id) that fails to verify rejects the note; at
    least one must verify.
    """
    verifier = verifier_key if isinstance(verifier_key, Verifier) else parse_vkey(verifier_key)
    text, signatures = split_note(note)
    verified = False
    for name, blob, _line in signatures:
        if name != verifier.name or blob[:4] != verifier.key_id:
            continue  # someone else's signature (a witness, a rotated key): ignore
        try:
            verifier.public_key.verify(blob[4:], text.encode())
        except InvalidSignature as exc:
            raise SignatureError(f"invalid signature by {verifier.name}+{verifier.key_id.hex()}") from exc
        verified = True
    if not verified:
        raise SignatureError(f"no signature by the trusted key {verifier.name}+{verifier.key_id.hex()}")
    return text


# --------------------------------------------------------------------------- checkpoints


def checkpoint_body(origin: str, size: int, root: bytes, extensions: tuple[str, ...] | list[str] = ()) -> str:
    """The unsigned tlog-checkpoint text."""
    if not origin or "\n" in origin or not _no_controls(origin):
        raise MalformedCheckpointError("origin must be one non-empty line")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedCheckpointError("tree size must be a non-negative integer")
    if len(root) != 32:
        raise MalformedCheckpointError("root hash must be 32 bytes")
    for ext in extensions:
        if not ext or "\n" in ext or not _no_controls(ext):
            raise MalformedCheckpointError("extension lines must be non-empty single lines")
    lines = [origin, str(size), base64.b64encode(bytes(root)).decode(), *extensions]
    return "".join(line + "\n" for line in lines)


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse the (already verified) text of a checkpoint note."""
    if not text.endswith("\n"):
        raise MalformedCheckpointError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedCheckpointError("checkpoint needs origin, size and root lines")
    origin, size_text, root64, *extensions = lines
    if not origin:
        raise MalformedCheckpointError("checkpoint origin is empty")
    if not _SIZE_RE.fullmatch(size_text):
        raise MalformedCheckpointError("checkpoint tree size is not a canonical decimal")
    root = _b64decode(root64, "checkpoint root hash")
    if len(root) != 32:
        raise MalformedCheckpointError("checkpoint root hash is not 32 bytes")
    if any(not ext for ext in extensions):
        raise MalformedCheckpointError("checkpoint extension lines must be non-empty")
    return Checkpoint(origin, int(size_text), root, tuple(extensions))


def make_checkpoint(
    origin: str,
    size: int,
    root: bytes,
    private_key: NoteSigningKey,
    key_name: str | None = None,
    *,
    extensions: tuple[str, ...] | list[str] = (),
) -> str:
    """A signed checkpoint note.  ``key_name`` defaults to the origin (as tlog-checkpoint advises)."""
    return sign_note(checkpoint_body(origin, size, root, extensions), private_key, key_name or origin)


def parse_checkpoint(text: str, verifier_key: str | Verifier, *, origin: str | None = None) -> Checkpoint:
    """Verify the signature on a checkpoint note and parse its body.

    Raises :class:`SignatureError` when no valid signature by ``verifier_key`` is present,
    :class:`MalformedCheckpointError` for a malformed note/body or an unexpected origin.
    """
    checkpoint = parse_checkpoint_body(open_note(text, verifier_key))
    if origin is not None and checkpoint.origin != origin:
        raise MalformedCheckpointError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
    return checkpoint


# --------------------------------------------------------------------------- cosignatures (witnesses)


def cosignature_message(body: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: ``cosignature/v1\\n``, ``time <timestamp>\\n``, then the whole
    checkpoint body (its text up to and including the final newline, without signature lines)."""
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise MalformedCheckpointError("cosignature timestamp must be an integer in 0 .. 2**63 - 1")
    return (COSIGNATURE_HEADER + f"time {timestamp}\n" + body).encode()


def cosign(body: str, private_key: Ed25519PrivateKey, name: str, timestamp: int) -> str:
    """A witness's cosignature/v1 note signature line (with its final newline) on a checkpoint body."""
    if not _valid_name(name):
        raise MalformedCheckpointError(f"invalid key name {name!r}")
    signature = private_key.sign(cosignature_message(body, timestamp))
    blob = key_id(name, private_key.public_key(), ALG_COSIGNATURE_V1) + timestamp.to_bytes(8, "big") + signature
    return f"{SIG_PREFIX}{name} {base64.b64encode(blob).decode()}\n"


def verify_cosignatures(note: str, witnesses: list[Verifier] | tuple[Verifier, ...]) -> list[Cosignature]:
    """The valid cosignatures in ``note`` by the given witnesses (type 0x04 keys), one per witness.

    Lines by other keys (the log, unknown witnesses) are ignored. A line that claims a trusted
    witness's name and key id but is malformed or does not verify rejects the note
    (:class:`SignatureError`), as c2sp.org/signed-note asks of any trusted key.
    """
    text, signatures = split_note(note)
    found: dict[tuple[str, bytes], Cosignature] = {}
    for witness in witnesses:
        if witness.alg != ALG_COSIGNATURE_V1:
            raise MalformedCheckpointError(f"witness key {witness.name} is not a cosignature/v1 (type 0x04) key")
        for name, blob, line in signatures:
            if name != witness.name or blob[:4] != witness.key_id:
                continue
            if len(blob) != 4 + 8 + 64:
                raise SignatureError(f"malformed cosignature by {witness.name}+{witness.key_id.hex()}")
            timestamp = int.from_bytes(blob[4:12], "big")
            try:
                witness.public_key.verify(blob[12:], cosignature_message(text, timestamp))
            except (InvalidSignature, MalformedCheckpointError) as exc:
                raise SignatureError(f"invalid cosignature by {witness.name}+{witness.key_id.hex()}") from exc
            found.setdefault((witness.name, witness.key_id), Cosignature(witness.name, witness.key_id, timestamp, line))
    return list(found.values())
