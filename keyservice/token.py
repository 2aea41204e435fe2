"""The bank's PKCS#11 token (SoftHSM2 in tests and the demo).

Per key version an AES-256 master key ``scp03-master-XX``: sensitive, not extractable, usable
only to sign (CMAC). A card's static SCP03 keys are derived inside the token, one CMAC per key
(NIST SP 800-108 §4.1, counter mode, PRF = AES-CMAC), so the master never leaves it. The OCE
key pair (P-256) lives in the token as well; only its public key and signatures come out. So do
the bank's DAP key pair (``dap``: signs Load File Data Block hashes, issue 18) and its
personalisation key pair (``perso``: ECDH only, opens the data the back office sealed to it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

from gp.keys import StaticKeys

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
MASTER_LABEL = "scp03-master-{kvn:02X}"
OCE_LABEL = "oce-{serial}"
DAP_LABEL = "dap"  # the bank's DAP signing key (GPC 2.3.1 §C.5, gp.dap)
PERSO_LABEL = "perso"  # the key the bank's back office seals personalisation data to (gp.sealed)
STATIC_KEY_BITS = 128  # AES-128 ENC/MAC/DEK (GP Amd D §4.1.1)
# One label per static key (SP 800-108 "Label"); the context binds the card, the SD and the KVN.
KEY_LABELS = {"enc": b"SCP03 static ENC", "mac": b"SCP03 static MAC", "dek": b"SCP03 static DEK"}

T = TypeVar("T")


class TokenUnavailable(Exception):
    """The token cannot be opened or used now (503 for the caller)."""


def find_module() -> str:
    """The SoftHSM2 PKCS#11 library: ``$SOFTHSM2_MODULE`` or a usual install path."""
    for candidate in (os.environ.get("SOFTHSM2_MODULE", ""), *MODULE_CANDIDATES):
        if candidate and Path(candidate).exists():
            return candidate
    raise TokenUnavailable("libsofthsm2.so not found (install softhsm2 or set SOFTHSM2_MODULE)")


def write_softhsm_conf(directory: Path) -> Path:
    """A SoftHSM2 configuration of the service's own: ``DIR/softhsm2.conf`` and ``DIR/tokens``."""
    tokens = directory / "tokens"
    tokens.mkdir(mode=0o700, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    return conf


def init_token(label: str, pin: str, conf: Path | None = None) -> None:
    """``softhsm2-util --init-token --free`` under ``conf`` (or the process's ``SOFTHSM2_CONF``).
    The SO PIN is random and forgotten: the service never needs it."""
    util = shutil.which("softhsm2-util")
    if util is None:
        raise TokenUnavailable("softhsm2-util is not on PATH")
    env = dict(os.environ)
    if conf is not None:
        env["SOFTHSM2_CONF"] = str(conf)
    so_pin = secrets.token_hex(8)
    result = subprocess.run(  # noqa: S603 - a fixed tool, arguments we build
        [util, "--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    if result.returncode != 0:
        raise TokenUnavailable(f"softhsm2-util --init-token failed: {result.stderr.strip()}")


def sp800_108_input(label: bytes, context: bytes, bits: int = STATIC_KEY_BITS, counter: int = 1) -> bytes:
    """The PRF input of NIST SP 800-108 §4.1 (counter mode): [i]_8 || Label || 00 || Context || [L]_16."""
    return bytes((counter,)) + label + b"\x00" + context + bits.to_bytes(2, "big")


def derivation_context(card: bytes, sd_aid: bytes, kvn: int) -> bytes:
    """CIN || SD AID || KVN, each length-prefixed so no two triples give the same context."""
    return bytes((len(card),)) + card + bytes((len(sd_aid),)) + sd_aid + bytes((kvn,))


@dataclass(frozen=True)
class OcePublicKey:
    label: str
    point: bytes  # uncompressed P-256 point (04 || X || Y)


class BankToken:
    """One logged-in session on the bank's token, used under a lock (PKCS#11 login state is per
    application); re-opened once when the session is lost."""

    def __init__(self, module: str, label: str, pin: str) -> None:
        self.module, self.label = module, label
        self._pin = pin
        self._lock = threading.RLock()
        self._session: Any = None
        self._worker: ThreadPoolExecutor | None = None
        self._worker_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BankToken(label={self.label!r})"

    def _open(self) -> Any:
        if self._session is None:
            try:
                library = pkcs11.lib(self.module)  # one per process and module (python-pkcs11)
                try:
                    token = library.get_token(token_label=self.label)
                except pkcs11.exceptions.NoSuchToken:
                    # SoftHSM2 lists the tokens it found at C_Initialize: a token made later (a
                    # test process's second bank) appears after a re-initialisation. Sessions
                    # of this process end with it; their owners re-open them (see _call).
                    library.reinitialize()
                    token = library.get_token(token_label=self.label)
                try:
                    self._session = token.open(rw=True, user_pin=self._pin)
                except pkcs11.exceptions.UserAlreadyLoggedIn:
                    self._session = token.open(rw=True)
            except pkcs11.exceptions.PKCS11Error as exc:
                raise TokenUnavailable(f"cannot open the token {self.label!r}: {type(exc).__name__}") from None
        return self._session

    def _call(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation(session)`` in the token's own thread. SoftHSM2 uses OpenSSL in this
        process and can leave errors on the calling thread's OpenSSL error queue, which a TLS
        socket with a timeout in that thread then reports as its own failure (seen as
        ``[ENGINE: NO_SUCH_ENGINE]`` on the next read); a thread of its own keeps them apart."""
        with self._worker_lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"token-{self.label}")
            worker = self._worker
        return worker.submit(self._call_here, operation).result()

    def _call_here(self, operation: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                try:
                    return operation(self._open())
                except (pkcs11.exceptions.SessionHandleInvalid, pkcs11.exceptions.SessionClosed):
                    self._session = None
                    return operation(self._open())
            except pkcs11.exceptions.PKCS11Error as exc:
                raise TokenUnavailable(f"token operation failed: {type(exc).__name__}") from None

    def close(self) -> None:
        """Close the session (in the token's thread) and end that thread."""
        with self._worker_lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.submit(self._close_session).result()
            worker.shutdown(wait=True)

    def _close_session(self) -> None:
        with self._lock:
            if self._session is not None:
                _close_quietly(self._session)
                self._session = None

    # --- SCP03 master keys ---------------------------------------------------------------

    def _master(self, session: Any, kvn: int) -> Any:
        label = MASTER_LABEL.format(kvn=kvn)
        try:
            return session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES, label=label)
        except pkcs11.exceptions.NoSuchKey:
            return session.generate_key(
                KeyType.AES,
                256,
                label=label,
                store=True,
                template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.MODIFIABLE: False,
                    Attribute.SIGN: True,
                    Attribute.VERIFY: False,
                    Attribute.ENCRYPT: False,
                    Attribute.DECRYPT: False,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                    Attribute.DERIVE: False,
                },
            )

    def derive_static_keys(self, card: bytes, sd_aid: bytes, kvn: int) -> StaticKeys:
        """The card's SCP03 key set for ``kvn``, derived in the token from the master of ``kvn``
        (created on first use). The result lives in the caller's memory only."""
        context = derivation_context(card, sd_aid, kvn)

        def derive(session: Any) -> StaticKeys:
            master = self._master(session, kvn)
            parts = {
                name: bytes(master.sign(sp800_108_input(label, context), mechanism=Mechanism.AES_CMAC))
                for name, label in KEY_LABELS.items()
            }
            return StaticKeys(parts["enc"], parts["mac"], parts["dek"], kvn)

        return self._call(derive)

    def key_versions(self) -> list[int]:
        """The key versions whose master is in the token."""

        def scan(session: Any) -> list[int]:
            found = []
            for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
                label = str(obj.label)
                if label.startswith("scp03-master-"):
                    found.append(int(label.rsplit("-", 1)[1], 16))
            return sorted(found)

        return self._call(scan)

    def master_key_value(self, kvn: int) -> bytes:
        """Ask the token for the master's value: the token refuses (``CKA_SENSITIVE``); tests
        call this to show it. Raises :class:`TokenUnavailable` with the token's refusal."""

        def read(session: Any) -> bytes:
            try:
                return bytes(self._master(session, kvn)[Attribute.VALUE])
            except pkcs11.exceptions.AttributeSensitive:
                raise TokenUnavailable("the master key is sensitive: its value cannot be read") from None

        return self._call(read)

    # --- the OCE key pair ----------------------------------------------------------------

    def generate_oce_key(self) -> OcePublicKey:
        """A new P-256 key pair for the OCE certificate (the pending one until its certificate comes)."""
        label = OCE_LABEL.format(serial=secrets.token_hex(4))

        def generate(session: Any) -> OcePublicKey:
            from pkcs11.util.ec import encode_named_curve_parameters

            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
            )
            public, _ = params.generate_keypair(
                store=True,
                label=label,
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True},
            )
            return OcePublicKey(label, _ec_point(bytes(public[Attribute.EC_POINT])))

        return self._call(generate)

    def oce_sign(self, label: str, data: bytes) -> bytes:
        """ECDSA over SHA-256 of ``data`` with the OCE private key ``label``: the raw r || s the
        token returns (CKM_ECDSA on the digest: SoftHSM2 has no CKM_ECDSA_SHA256)."""
        digest = hashlib.sha256(data).digest()

        def sign(session: Any) -> bytes:
            key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC, label=label)
            return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))

        return self._call(sign)

    # --- the DAP and personalisation key pairs ---------------------------------------------

    def _key_pair(self, session: Any, label: str, usage: Attribute) -> tuple[Any, Any]:
        """The P-256 pair ``label`` (public, private), generated in the token on first use with
        the private key sensitive, not extractable, good for ``usage`` (SIGN or DERIVE) only."""
        try:
            public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.EC, label=label)
            private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC, label=label)
            return public, private
        except pkcs11.exceptions.NoSuchKey:
            pass
        from pkcs11.util.ec import encode_named_curve_parameters

        params = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
        )
        uses = {Attribute.SIGN: False, Attribute.DERIVE: False, Attribute.DECRYPT: False, Attribute.UNWRAP: False}
        public, private = params.generate_keypair(
            store=True,
            label=label,
            public_template={Attribute.VERIFY: usage == Attribute.SIGN, Attribute.DERIVE: False},
            private_template={
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.MODIFIABLE: False,
                **uses,
                usage: True,
            },
        )
        return public, private

    def public_point(self, label: str) -> bytes:
        """The uncompressed point (04 || X || Y) of the pair ``label`` (``dap`` or ``perso``),
        which is generated on first use."""
        usage = {DAP_LABEL: Attribute.SIGN, PERSO_LABEL: Attribute.DERIVE}[label]

        def read(session: Any) -> bytes:
            public, _ = self._key_pair(session, label, usage)
            return _ec_point(bytes(public[Attribute.EC_POINT]))

        return self._call(read)

    def dap_sign(self, lfdb_sha256: bytes) -> bytes:
        """The DAP signature r || s over a Load File Data Block hash, as :func:`gp.dap.sign`
        makes it: ECDSA-SHA-256 with the 32 hash bytes as the message, so the token signs
        (CKM_ECDSA) SHA-256 of those bytes."""
        if len(lfdb_sha256) != 32:
            raise ValueError("a Load File Data Block hash is 32 bytes (SHA-256)")
        digest = hashlib.sha256(lfdb_sha256).digest()

        def sign(session: Any) -> bytes:
            _, private = self._key_pair(session, DAP_LABEL, Attribute.SIGN)
            return bytes(private.sign(digest, mechanism=Mechanism.ECDSA))

        return self._call(sign)

    def perso_ecdh(self, peer_point: bytes) -> bytes:
        """ECDH (CKM_ECDH1_DERIVE, no KDF) of the ``perso`` private key with ``peer_point``: the
        shared secret Z (the x coordinate, 32 bytes), for gp.sealed's HKDF. The derived secret
        is a session object, destroyed once read; the private key stays in the token."""

        def derive(session: Any) -> bytes:
            _, private = self._key_pair(session, PERSO_LABEL, Attribute.DERIVE)
            shared = private.derive_key(
                KeyType.GENERIC_SECRET,
                256,
                mechanism=Mechanism.ECDH1_DERIVE,
                mechanism_param=(pkcs11.KDF.NULL, None, bytes(peer_point)),
                template={Attribute.TOKEN: False, Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
            try:
                return bytes(shared[Attribute.VALUE])
            finally:
                shared.destroy()

        return self._call(derive)


def _close_quietly(session: Any) -> None:
    with contextlib.suppress(pkcs11.exceptions.PKCS11Error):
        session.close()


def _ec_point(der: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point (PKCS#11 §2.3.3); unwrap it."""
    if der[:1] == b"\x04" and len(der) == 67 and der[1] == 65:
        return der[2:]
    return der
