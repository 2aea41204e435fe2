"""Suite-wide key leak scan (issue 5): no key bytes in any API response, log record or audit event.

A pytest plugin. Register it once for the whole suite, in ``tests/conftest.py``::

    pytest_plugins = ["tests.issuers.keyleak"]

While the suite runs it

* learns every key the suite creates: each :class:`gp.keys.StaticKeys` (ENC/MAC/DEK, also
  diversified and test keys), every plaintext that custody wraps or unwraps (static sets, masters,
  receipt keys, private keys as PKCS#8 DER and their raw scalars/seeds) and the custody master key;
* collects every response body of the Django/DRF test clients (API and portal pages), every log
  record reaching the root logger, and every audit entry saved;
* after each test, searches what that test produced for every key known so far — as raw bytes,
  hex (any case) and base64 (standard or URL-safe, padded or not, also inside longer runs).

Any hit fails the run (exit status 1) with a report naming the key's origin and where it was
found — never the key itself. Low-entropy keys (fewer than 8 distinct bytes, e.g. all zeros)
are not tracked: they would match innocent data.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

MAX_HAYSTACK = 2 * 1024 * 1024
MIN_DISTINCT_BYTES = 8
_HEX_RUN = re.compile(rb"[0-9A-Fa-f]{32,}")
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{22,}={0,2}")


@dataclass
class KeyRegistry:
    """Keys to look for, by length (window lookups) plus long ones (substring search)."""

    by_length: dict[int, dict[bytes, str]] = field(default_factory=dict)
    long: dict[bytes, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: bytes | bytearray | memoryview, origin: str) -> None:
        key = bytes(key)
        if len(key) < 16 or len(set(key)) < MIN_DISTINCT_BYTES:
            return
        with self.lock:
            if len(key) <= 64:
                self.by_length.setdefault(len(key), {}).setdefault(key, origin)
            else:
                self.long.setdefault(key, origin)

    def add_plaintext(self, plaintext: bytes, origin: str) -> None:
        """A custody plaintext: the whole, its thirds (ENC‖MAC‖DEK) and private key parts."""
        self.add(plaintext, origin)
        n = len(plaintext)
        if n in (48, 72, 96):
            for i, name in enumerate(("enc", "mac", "dek")):
                self.add(plaintext[i * n // 3 : (i + 1) * n // 3], f"{origin} {name}")
        if n > 64:
            for part, label in _private_parts(plaintext):
                self.add(part, f"{origin} {label}")

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_length.values()) + len(self.long)

    def find_in(self, data: bytes) -> list[str]:
        """Origins of the keys contained in ``data`` (raw bytes)."""
        hits: list[str] = []
        with self.lock:
            tables = [(length, dict(keys)) for length, keys in self.by_length.items()]
            long = dict(self.long)
        for length, keys in tables:
            for i in range(len(data) - length + 1):
                origin = keys.get(data[i : i + length])
                if origin is not None:
                    hits.append(origin)
        hits.extend(origin for key, origin in long.items() if key in data)
        return hits


def _private_parts(der: bytes) -> Iterator[tuple[bytes, str]]:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        key = serialization.load_der_private_key(der, password=None)
    except Exception:  # not a private key: nothing more to register
        return
    if isinstance(key, ec.EllipticCurvePrivateKey):
        yield key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big"), "EC scalar"
    elif isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        size = (key.key_size + 7) // 8
        yield numbers.d.to_bytes(size, "big"), "RSA d"
        yield numbers.p.to_bytes(size // 2, "big"), "RSA p"
        yield numbers.q.to_bytes(size // 2, "big"), "RSA q"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        yield (
            key.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            ),
            "Ed25519 seed",
        )


def decoded_views(data: bytes) -> Iterator[bytes]:
    """``data`` itself and every decoding of its hex and base64 runs."""
    yield data
    for match in _HEX_RUN.finditer(data):
        run = match.group()
        for start in (0, 1):
            part = run[start:]
            part = part[: len(part) - len(part) % 2]
            yield binascii.unhexlify(part)
    for match in _B64_RUN.finditer(data):
        run = match.group().rstrip(b"=").replace(b"-", b"+").replace(b"_", b"/")
        for start in range(4):
            part = run[start:]
            rem = len(part) % 4
            part = part[:-1] if rem == 1 else part + b"=" * ((4 - rem) % 4)
            if part:
                try:
                    yield base64.b64decode(part, validate=True)
                except binascii.Error:
                    continue


def scan(haystacks: Iterable[tuple[str, bytes]], registry: KeyRegistry) -> list[str]:
    """``"<key origin> in <where>"`` for every key found in any form in any haystack."""
    found: list[str] = []
    for where, data in haystacks:
        seen: set[str] = set()
        for view in decoded_views(data[:MAX_HAYSTACK]):
            for origin in registry.find_in(view):
                if origin not in seen:
                    seen.add(origin)
                    found.append(f"{origin} in {where}")
    return found


# ---------------------------------------------------------------------------
# instrumentation


class _Collector(logging.Handler):
    def __init__(self, sink: Callable[[str, bytes], None]) -> None:
        super().__init__(level=logging.NOTSET)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f"\n{record.exc_info[1]!r}"
        except Exception:  # a broken record is not our concern
            return
        self._sink(f"log record {record.name}:{record.levelname}", text.encode("utf-8", "surrogatepass"))


@dataclass
class KeyLeakScanner:
    registry: KeyRegistry = field(default_factory=KeyRegistry)
    pending: list[tuple[str, bytes]] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    current_test: str = ""
    paused: bool = False
    _undo: list[Callable[[], None]] = field(default_factory=list)
    _handler: _Collector | None = None

    def collect(self, where: str, data: bytes) -> None:
        if self.paused:
            return
        self.pending.append((f"{where} [{self.current_test}]", data))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        if pending and len(self.registry):
            self.leaks.extend(scan(pending, self.registry))

    def _patch(self, owner: Any, name: str, make: Callable[[Any], Any]) -> None:
        original = owner.__dict__[name]
        setattr(owner, name, make(original))
        self._undo.append(lambda: setattr(owner, name, original))

    def install(self) -> None:
        from gp.keys import StaticKeys
        from issuers import keyvault

        registry = self.registry

        def static_init(original: Any) -> Any:
            def __post_init__(keys: Any) -> None:
                original(keys)
                for name in ("enc", "mac", "dek"):
                    registry.add(getattr(keys, name), f"StaticKeys.{name} (KVN 0x{keys.version:02X})")

            return __post_init__

        self._patch(StaticKeys, "__post_init__", static_init)

        for backend in (keyvault.SoftwareBackend, keyvault.Pkcs11Backend):

            def wrap_hook(original: Any, label: str = backend.__name__) -> Any:
                def wrap(self_: Any, kek: Any, plaintext: bytes, aad: bytes) -> bytes:
                    registry.add_plaintext(bytes(plaintext), f"custody plaintext ({label})")
                    return original(self_, kek, plaintext, aad)

                return wrap

            def unwrap_hook(original: Any, label: str = backend.__name__) -> Any:
                def unwrap(self_: Any, kek: Any, blob: bytes, aad: bytes) -> bytes:
                    plaintext = original(self_, kek, blob, aad)
                    registry.add_plaintext(bytes(plaintext), f"custody plaintext ({label})")
                    return plaintext

                return unwrap

            self._patch(backend, "wrap", wrap_hook)
            self._patch(backend, "unwrap", unwrap_hook)

        def wrap_many_hook(original: Any) -> Any:
            def wrap_many(self_: Any, kek: Any, items: list[tuple[bytes, bytes]]) -> list[bytes]:
                for plaintext, _aad in items:
                    registry.add_plaintext(bytes(plaintext), "custody plaintext (SoftwareBackend, bulk)")
                return original(self_, kek, items)

            return wrap_many

        # the base class's wrap_many calls the hooked wrap; the software backend opens its KEK once
        self._patch(keyvault.SoftwareBackend, "wrap_many", wrap_many_hook)

        from django.test.client import Client

        collect = self.collect

        def request_hook(original: Any) -> Any:
            def request(self_: Any, **request: Any) -> Any:
                response = original(self_, **request)
                if not getattr(response, "streaming", False):
                    path = request.get("PATH_INFO", "?")
                    collect(f"response {request.get('REQUEST_METHOD', '?')} {path}", bytes(response.content))
                return response

            return request

        self._patch(Client, "request", request_hook)

        from django.db.models.signals import post_save

        from audit.models import AuditEntry

        def audit_saved(sender: Any, instance: AuditEntry, **kwargs: Any) -> None:
            import json

            fields = {
                "details": instance.details,
                "reason": instance.reason,
                "subject_id": instance.subject_id,
                "receipt": instance.receipt,
                "action": instance.action,
            }
            collect(f"audit entry {instance.action}", json.dumps(fields, default=str).encode())

        uid = f"tests.keyleak.audit.{id(self)}"
        post_save.connect(audit_saved, sender=AuditEntry, weak=False, dispatch_uid=uid)
        self._undo.append(lambda: post_save.disconnect(sender=AuditEntry, dispatch_uid=uid))

        from django.conf import settings

        raw_master = getattr(settings, "ECARD_MASTER_KEY", "")
        if raw_master:
            with contextlib.suppress(Exception):  # a malformed key is the settings tests' business
                registry.add(keyvault.parse_master_key(raw_master), "custody master key")
        self.ensure_log_handler()

    def ensure_log_handler(self) -> None:
        root = logging.getLogger()
        if self._handler is None:
            self._handler = _Collector(self.collect)
        if self._handler not in root.handlers:
            root.addHandler(self._handler)

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)


_scanner: KeyLeakScanner | None = None


@contextlib.contextmanager
def session_scan_paused() -> Iterator[None]:
    """Leak on purpose (the scanner's own tests) without failing the session scan."""
    if _scanner is None:
        yield
        return
    _scanner.paused = True
    try:
        yield
    finally:
        _scanner.paused = False


def pytest_sessionstart(session: pytest.Session) -> None:
    global _scanner
    from django.conf import settings

    if not settings.configured:
        return
    _scanner = KeyLeakScanner()
    _scanner.install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    if _scanner is not None:
        _scanner.current_test = item.nodeid
        _scanner.ensure_log_handler()  # Django's logging config may have replaced the root handlers
    try:
        return (yield)
    finally:
        if _scanner is not None:
            _scanner.flush()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _scanner is None:
        return
    _scanner.flush()
    if _scanner.leaks and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _scanner is None:
        return
    terminalreporter.write_sep("-", "key leak scan")
    terminalreporter.write_line(
        f"{len(_scanner.registry)} keys tracked; API responses, log records and audit entries scanned"
    )
    if _scanner.leaks:
        terminalreporter.write_line(f"KEY LEAKS FOUND ({len(_scanner.leaks)}):", red=True)
        for leak in sorted(set(_scanner.leaks))[:200]:
            terminalreporter.write_line(f"  {leak}", red=True)
    else:
        terminalreporter.write_line("no key bytes found")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _scanner is not None:
        _scanner.uninstall()
