"""Cryptographic primitives of the GlobalPlatform secure channels (sans-I/O).

Everything here is built on ``cryptography``'s hazmat layer. For speed, key
objects (:class:`AESKey`, :class:`DES3Key`) keep their cipher contexts for the
lifetime of a session: ECB contexts are stateless and reused directly, and CBC
is done on one long-lived CBC context per direction whose chaining state is
tracked, so a fresh IV costs one XOR instead of a new OpenSSL context.

Key objects never show key bytes in ``repr``. They are stateful (the CBC chaining
state), so one object must not be shared between threads; a secure channel owns its
own key objects.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gp.errors import EncodingError, KeyMaterialError

__all__ = [
    "AESKey",
    "DES3Key",
    "aes_cbc_decrypt",
    "aes_cbc_encrypt",
    "aes_cmac",
    "aes_ecb_encrypt",
    "cmac_counter_kdf",
    "des3_cbc_decrypt",
    "des3_cbc_encrypt",
    "des3_ecb_decrypt",
    "des3_ecb_encrypt",
    "des3_expand",
    "des3_mac",
    "pad_m2",
    "retail_mac",
    "scp03_kdf",
    "unpad_m2",
    "x963_kdf_sha256",
    "xor",
]

AES_BLOCK = 16
DES_BLOCK = 8


def xor(a: bytes, b: bytes) -> bytes:
    """XOR of two byte strings of equal length."""
    if len(a) != len(b):
        raise EncodingError(f"xor of unequal lengths {len(a)} and {len(b)}")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def pad_m2(data: bytes, block: int = AES_BLOCK) -> bytes:
    """ISO/IEC 9797-1 padding method 2: append 80 then 00s up to a block multiple (always pads)."""
    return data + b"\x80" + bytes(-(len(data) + 1) % block)


def unpad_m2(data: bytes, block: int = AES_BLOCK) -> bytes:
    """Remove ISO/IEC 9797-1 method 2 padding; :class:`EncodingError` if absent or malformed."""
    if not data or len(data) % block:
        raise EncodingError(f"padded data must be a non-empty multiple of {block} bytes, got {len(data)}")
    stripped = data.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(data) - len(stripped) >= block:
        raise EncodingError("bad ISO 9797-1 method 2 padding")
    return stripped[:-1]


class _CBCStream:
    """CBC on one long-lived context; the chaining state is tracked to allow arbitrary IVs.

    CBC_K(IV, P1..Pn) equals feeding ``P1 ^ IV ^ S`` and then P2..Pn into a CBC context
    whose current chaining block is ``S`` (the last ciphertext block it produced).
    """

    __slots__ = ("_block", "_dec", "_dec_state", "_enc", "_enc_state")

    def __init__(self, algorithm: algorithms.AES | TripleDES, block: int) -> None:
        zero = bytes(block)
        self._block = block
        self._enc = Cipher(algorithm, modes.CBC(zero)).encryptor()
        self._dec = Cipher(algorithm, modes.CBC(zero)).decryptor()
        self._enc_state = 0
        self._dec_state = 0

    def encrypt(self, data: bytes, iv: bytes) -> bytes:
        b = self._block
        if len(data) % b:
            raise EncodingError(f"CBC data must be a multiple of {b} bytes, got {len(data)}")
        if not data:
            return b""
        first = int.from_bytes(data[:b], "big") ^ int.from_bytes(iv, "big") ^ self._enc_state
        out = self._enc.update(first.to_bytes(b, "big") + data[b:])
        self._enc_state = int.from_bytes(out[-b:], "big")
        return out

    def decrypt(self, data: bytes, iv: bytes) -> bytes:
        b = self._block
        if len(data) % b:
            raise EncodingError(f"CBC data must be a multiple of {b} bytes, got {len(data)}")
        if not data:
            return b""
        out = self._dec.update(data)
        fix = int.from_bytes(out[:b], "big") ^ int.from_bytes(iv, "big") ^ self._dec_state
        self._dec_state = int.from_bytes(data[-b:], "big")
        return fix.to_bytes(b, "big") + out[b:]


class AESKey:
    """An AES key with cached ECB/CBC/CMAC contexts (one object per session key)."""

    __slots__ = ("_cbc", "_cmac", "_ecb_dec", "_ecb_enc", "_key")

    block = AES_BLOCK

    def __init__(self, key: bytes) -> None:
        key = bytes(key)
        if len(key) not in (16, 24, 32):
            raise KeyMaterialError(f"AES key must be 16, 24 or 32 bytes, got {len(key)}")
        self._key = key
        alg = algorithms.AES(key)
        self._ecb_enc = Cipher(alg, modes.ECB()).encryptor()  # noqa: S305 - GP uses single-block ECB (ICVs, KCVs, key wrap)
        self._ecb_dec = Cipher(alg, modes.ECB()).decryptor()  # noqa: S305 - GP uses single-block ECB (ICVs, KCVs, key wrap)
        self._cbc = _CBCStream(alg, AES_BLOCK)
        self._cmac = cmac.CMAC(alg)

    @property
    def key(self) -> bytes:
        return self._key

    def __len__(self) -> int:
        return len(self._key)

    def __repr__(self) -> str:
        return f"AESKey(<{len(self._key) * 8} bits>)"

    def ecb_encrypt(self, data: bytes) -> bytes:
        if len(data) % AES_BLOCK:
            raise EncodingError(f"AES-ECB data must be a multiple of 16 bytes, got {len(data)}")
        return self._ecb_enc.update(data)

    def ecb_decrypt(self, data: bytes) -> bytes:
        if len(data) % AES_BLOCK:
            raise EncodingError(f"AES-ECB data must be a multiple of 16 bytes, got {len(data)}")
        return self._ecb_dec.update(data)

    def cbc_encrypt(self, data: bytes, iv: bytes = bytes(AES_BLOCK)) -> bytes:
        return self._cbc.encrypt(data, iv)

    def cbc_decrypt(self, data: bytes, iv: bytes = bytes(AES_BLOCK)) -> bytes:
        return self._cbc.decrypt(data, iv)

    def cmac(self, *parts: bytes) -> bytes:
        """AES-CMAC (NIST SP 800-38B) over the concatenation of ``parts`` (full 16 bytes)."""
        ctx = self._cmac.copy()
        for part in parts:
            ctx.update(part)
        return ctx.finalize()


def des3_expand(key: bytes) -> bytes:
    """Expand a 2-key 3DES key (16 bytes, K1||K2) to the 24-byte K1||K2||K1 form; 24 stays as is."""
    if len(key) == 16:
        return key + key[:8]
    if len(key) == 24:
        return bytes(key)
    if len(key) == 8:
        return bytes(key) * 3
    raise KeyMaterialError(f"3DES key must be 8, 16 or 24 bytes, got {len(key)}")


class DES3Key:
    """A 3DES key (2-key, 16 bytes; 8/24 also accepted) with cached contexts.

    Also holds single-DES contexts on K1 and K2 for the ISO 9797-1 retail MAC.
    """

    __slots__ = ("_cbc", "_des1_cbc", "_des1_enc", "_des2_dec", "_ecb_dec", "_ecb_enc", "_key")

    block = DES_BLOCK

    def __init__(self, key: bytes) -> None:
        key = bytes(key)
        full = des3_expand(key)
        self._key = key
        alg = TripleDES(full)
        self._ecb_enc = Cipher(alg, modes.ECB()).encryptor()  # noqa: S305 - GP uses single-block ECB (ICVs, KCVs, key wrap)
        self._ecb_dec = Cipher(alg, modes.ECB()).decryptor()  # noqa: S305 - GP uses single-block ECB (ICVs, KCVs, key wrap)
        self._cbc = _CBCStream(alg, DES_BLOCK)
        k1, k2 = full[:8], full[8:16]
        des1 = TripleDES(k1 * 3)  # single DES as K1-K1-K1
        self._des1_enc = Cipher(des1, modes.ECB()).encryptor()  # noqa: S305 - GP uses single-block ECB (ICVs, KCVs, key wrap)
        self._des1_cbc = _CBCStream(des1, DES_BLOCK)
        self._des2_dec = Cipher(TripleDES(k2 * 3), modes.ECB()).decryptor()  # noqa: S305 - GP uses single-block ECB (ICVs, KCVs, key wrap)

    @property
    def key(self) -> bytes:
        return self._key

    def __len__(self) -> int:
        return len(self._key)

    def __repr__(self) -> str:
        return f"DES3Key(<{len(self._key)} bytes>)"

    def ecb_encrypt(self, data: bytes) -> bytes:
        if len(data) % DES_BLOCK:
            raise EncodingError(f"3DES-ECB data must be a multiple of 8 bytes, got {len(data)}")
        return self._ecb_enc.update(data)

    def ecb_decrypt(self, data: bytes) -> bytes:
        if len(data) % DES_BLOCK:
            raise EncodingError(f"3DES-ECB data must be a multiple of 8 bytes, got {len(data)}")
        return self._ecb_dec.update(data)

    def cbc_encrypt(self, data: bytes, iv: bytes = bytes(DES_BLOCK)) -> bytes:
        return self._cbc.encrypt(data, iv)

    def cbc_decrypt(self, data: bytes, iv: bytes = bytes(DES_BLOCK)) -> bytes:
        return self._cbc.decrypt(data, iv)

    def des_ecb_encrypt_k1(self, block: bytes) -> bytes:
        """Single DES with the first 8 key bytes (SCP02 ICV encryption, GP 2.3.1 §E.3.4)."""
        return self._des1_enc.update(block)

    def retail_mac(self, data: bytes, icv: bytes = bytes(DES_BLOCK), *, pad: bool = True) -> bytes:
        """ISO/IEC 9797-1 MAC algorithm 3 (single-DES CBC with K1, final 3DES), 8 bytes.

        ``pad`` applies ISO 9797-1 method 2 first (GP 2.3.1 §E.4.4 always pads).
        """
        if pad:
            data = pad_m2(data, DES_BLOCK)
        chained = self._des1_cbc.encrypt(data, icv)[-DES_BLOCK:]
        # output transformation: decrypt with K2, encrypt with K1
        return self._des1_enc.update(self._des2_dec.update(chained))

    def full_mac(self, data: bytes, icv: bytes = bytes(DES_BLOCK), *, pad: bool = True) -> bytes:
        """Full 3DES-CBC MAC (ISO 9797-1 MAC algorithm 1 with 3DES), 8 bytes (GP 2.3.1 §E.4.2)."""
        if pad:
            data = pad_m2(data, DES_BLOCK)
        return self._cbc.encrypt(data, icv)[-DES_BLOCK:]


# ---------------------------------------------------------------------------
# functional helpers (one-shot; for hot paths keep an AESKey/DES3Key instead)


def aes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    return AESKey(key).ecb_encrypt(data)


def aes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    return AESKey(key).ecb_decrypt(data)


def aes_cbc_encrypt(key: bytes, data: bytes, iv: bytes = bytes(AES_BLOCK)) -> bytes:
    return AESKey(key).cbc_encrypt(data, iv)


def aes_cbc_decrypt(key: bytes, data: bytes, iv: bytes = bytes(AES_BLOCK)) -> bytes:
    return AESKey(key).cbc_decrypt(data, iv)


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (NIST SP 800-38B), full 16 bytes."""
    return AESKey(key).cmac(data)


def des3_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    return DES3Key(key).ecb_encrypt(data)


def des3_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    return DES3Key(key).ecb_decrypt(data)


def des3_cbc_encrypt(key: bytes, data: bytes, iv: bytes = bytes(DES_BLOCK)) -> bytes:
    return DES3Key(key).cbc_encrypt(data, iv)


def des3_cbc_decrypt(key: bytes, data: bytes, iv: bytes = bytes(DES_BLOCK)) -> bytes:
    return DES3Key(key).cbc_decrypt(data, iv)


def retail_mac(key: bytes, data: bytes, icv: bytes = bytes(DES_BLOCK), *, pad: bool = True) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3 with DES (the SCP02 C-MAC/R-MAC algorithm)."""
    return DES3Key(key).retail_mac(data, icv, pad=pad)


def des3_mac(key: bytes, data: bytes, icv: bytes = bytes(DES_BLOCK), *, pad: bool = True) -> bytes:
    """Full 3DES-CBC MAC (SCP02 card/host cryptograms)."""
    return DES3Key(key).full_mac(data, icv, pad=pad)


# ---------------------------------------------------------------------------
# key derivation


def cmac_counter_kdf(key: bytes | AESKey, prefix: bytes, suffix: bytes, length_bytes: int) -> bytes:
    """NIST SP 800-108 KDF in counter mode with AES-CMAC as PRF.

    Output block i (i = 1, 2, ...) is ``CMAC(key, prefix || i || suffix)`` with a
    one-byte counter; the blocks are concatenated and cut to ``length_bytes``.
    """
    k = key if isinstance(key, AESKey) else AESKey(key)
    if not 0 < length_bytes <= 255 * AES_BLOCK:
        raise KeyMaterialError(f"KDF output length out of range: {length_bytes}")
    out = bytearray()
    i = 1
    while len(out) < length_bytes:
        out += k.cmac(prefix, bytes((i,)), suffix)
        i += 1
    return bytes(out[:length_bytes])


def scp03_kdf(key: bytes | AESKey, constant: int, context: bytes, length_bits: int) -> bytes:
    """SCP03 data derivation (GP Amd D v1.2 §6.2.2).

    Derivation data = label (11 bytes 00) || derivation constant (1) || separation
    indicator 00 || L (2 bytes, output length in bits) || i (1 byte) || context.
    """
    if length_bits % 8 or not 0 < length_bits <= 0xFFFF:
        raise KeyMaterialError(f"SCP03 KDF length must be a positive multiple of 8 bits, got {length_bits}")
    prefix = bytes(11) + bytes((constant & 0xFF, 0)) + length_bits.to_bytes(2, "big")
    return cmac_counter_kdf(key, prefix, context, length_bits // 8)


def x963_kdf_sha256(shared_secret: bytes, shared_info: bytes, length: int) -> bytes:
    """ANSI X9.63 KDF with SHA-256 (SEC 1 §3.6.1): SHA-256(Z || counter32 || SharedInfo), counter from 1."""
    if length <= 0:
        raise KeyMaterialError(f"X9.63 KDF length must be positive, got {length}")
    out = bytearray()
    counter = 1
    while len(out) < length:
        out += hashlib.sha256(shared_secret + counter.to_bytes(4, "big") + shared_info).digest()
        counter += 1
    return bytes(out[:length])
