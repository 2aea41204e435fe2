"""Static key sets, key check values, key diversification and PUT KEY key data.

Nothing in this module ever puts key bytes into a ``repr``, an exception message
or a log line; key check values (KCVs) are the only key-derived values shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gp.crypto import AESKey, DES3Key, cmac_counter_kdf, pad_m2
from gp.errors import EncodingError, KeyMaterialError

__all__ = [
    "KEY_TYPE_AES",
    "KEY_TYPE_DES",
    "KEY_TYPE_EC_PARAM_REF",
    "KEY_TYPE_EC_PRIVATE",
    "KEY_TYPE_EC_PUBLIC",
    "KEY_TYPE_RSA_E",
    "KEY_TYPE_RSA_N",
    "KeyComponent",
    "PutKeyData",
    "StaticKeys",
    "decode_put_key",
    "diversify",
    "encode_put_key_ec_p256",
    "encode_put_key_rsa",
    "encode_put_key_symmetric",
    "kcv_aes",
    "kcv_des",
    "scp02_decrypt_key",
    "scp02_encrypt_key",
    "scp03_decrypt_key",
    "scp03_encrypt_key",
]

# Key type coding, GP Card Spec 2.3.1 §11.1.8 (Table 11-16) and Amd D §7.1
KEY_TYPE_DES = 0x80  # DES / 3DES (implicitly CBC/ECB per the SCP)
KEY_TYPE_AES = 0x88
KEY_TYPE_RSA_E = 0xA0  # RSA public key, public exponent e (clear text)
KEY_TYPE_RSA_N = 0xA1  # RSA public key, modulus N (clear text)
KEY_TYPE_EC_PUBLIC = 0xB0  # ECC public key (Amd E)
KEY_TYPE_EC_PRIVATE = 0xB1  # ECC private key, encrypted under the DEK (Amd E; SCP11's SK.SD.ECKA, Amd F)
KEY_TYPE_EC_PARAM_REF = 0xF0  # ECC key parameter reference (Amd E; 00 = NIST P-256)

Algorithm = Literal["des", "aes"]


def kcv_aes(key: bytes) -> bytes:
    """AES key check value: the first 3 bytes of AES(key, 01 * 16) (GP Amd D §7.1.1)."""
    return AESKey(key).ecb_encrypt(b"\x01" * 16)[:3]


def kcv_des(key: bytes) -> bytes:
    """3DES key check value: the first 3 bytes of 3DES(key, 00 * 8) (GP 2.3.1 §11.8.2.3.1)."""
    return DES3Key(key).ecb_encrypt(bytes(8))[:3]


def _check_key(name: str, key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise KeyMaterialError(f"{name} key must be bytes, got {type(key).__name__}")
    key = bytes(key)
    if len(key) not in (16, 24, 32):
        raise KeyMaterialError(f"{name} key must be 16 (3DES or AES-128), 24 or 32 bytes, got {len(key)}")
    return key


@dataclass(frozen=True, repr=False)
class StaticKeys:
    """A static secure channel key set (ENC, MAC, DEK) and its key version number.

    16-byte keys serve as 2-key 3DES for SCP02 or AES-128 for SCP03; 24 and 32
    bytes are AES only. ``version`` is the KVN (P1 of INITIALIZE UPDATE).
    """

    enc: bytes = field(compare=True)
    mac: bytes = field(compare=True)
    dek: bytes = field(compare=True)
    version: int = 0x30

    def __post_init__(self) -> None:
        for name in ("enc", "mac", "dek"):
            object.__setattr__(self, name, _check_key(name.upper(), getattr(self, name)))
        if not (len(self.enc) == len(self.mac) == len(self.dek)):
            raise KeyMaterialError("ENC, MAC and DEK of one key set must have the same length")
        if not isinstance(self.version, int) or not 0 <= self.version <= 0xFF:
            raise KeyMaterialError(f"key version number must be 0..255, got {self.version!r}")

    @classmethod
    def single(cls, key: bytes, version: int = 0x30) -> StaticKeys:
        """ENC = MAC = DEK = ``key`` (test cards and factory keys)."""
        return cls(key, key, key, version)

    @property
    def key_length(self) -> int:
        return len(self.enc)

    def kcvs(self, algorithm: Algorithm = "aes") -> dict[str, str]:
        """Hex KCVs of the three keys, e.g. for display (never the keys themselves)."""
        f = kcv_aes if algorithm == "aes" else kcv_des
        return {n: f(getattr(self, n)).hex().upper() for n in ("enc", "mac", "dek")}

    def __repr__(self) -> str:
        return f"StaticKeys(version=0x{self.version:02X}, key_length={len(self.enc)}, keys=<hidden>)"

    __str__ = __repr__


# ---------------------------------------------------------------------------
# diversification

_DIV_CONSTANTS = {"enc": 1, "mac": 2, "dek": 3}


def _emv_data(kdd: bytes, c: int) -> bytes:
    # EMV CPS 1.1 §5.3: KDD bytes 4..9 (the 6 rightmost bytes) || F0 || c || same 6 bytes || 0F || c
    return kdd[4:10] + bytes((0xF0, c)) + kdd[4:10] + bytes((0x0F, c))


def _visa2_data(kdd: bytes, c: int) -> bytes:
    # VISA2: KDD bytes 0..1 || bytes 4..7 || F0 || c || bytes 0..1 || bytes 4..7 || 0F || c
    part = kdd[0:2] + kdd[4:8]
    return part + bytes((0xF0, c)) + part + bytes((0x0F, c))


def diversify(
    scheme: Literal["emv", "visa2", "kdf3"] | str,
    master: bytes,
    kdd: bytes,
    version: int | None = None,
) -> StaticKeys:
    """Per-card static keys from a master key and the key diversification data.

    ``kdd`` is bytes 0..9 of the INITIALIZE UPDATE response. Schemes:

    * ``"emv"`` — EMV CPS 1.1: 3DES-ECB(master, KDD[4:10] F0 c KDD[4:10] 0F c)
    * ``"visa2"`` — 3DES-ECB(master, KDD[0:2] KDD[4:8] F0 c KDD[0:2] KDD[4:8] 0F c)
    * ``"kdf3"`` — NIST SP 800-108 CMAC counter KDF: CMAC(master, i || 00 00 00 c 00 || KDD),
      output as long as the master key (GlobalPlatformPro's "KDF3" template, not a GP scheme)

    with c = 1 (ENC), 2 (MAC), 3 (DEK). ``version`` defaults to 0x20 for the 3DES
    schemes and 0x30 for kdf3 (the platform's KVN ranges).
    """
    scheme = scheme.lower()
    master = bytes(master)
    kdd = bytes(kdd)
    if len(kdd) != 10:
        raise KeyMaterialError(f"key diversification data must be 10 bytes, got {len(kdd)}")
    out: dict[str, bytes] = {}
    if scheme in ("emv", "visa2"):
        if len(master) != 16:
            raise KeyMaterialError(f"{scheme} diversification needs a 16-byte 3DES master key")
        mk = DES3Key(master)
        fill = _emv_data if scheme == "emv" else _visa2_data
        for name, c in _DIV_CONSTANTS.items():
            out[name] = mk.ecb_encrypt(fill(kdd, c))
        default_version = 0x20
    elif scheme == "kdf3":
        mk_aes = AESKey(master)
        for name, c in _DIV_CONSTANTS.items():
            out[name] = cmac_counter_kdf(mk_aes, b"", bytes((0, 0, 0, c, 0)) + kdd, len(master))
        default_version = 0x30
    else:
        raise KeyMaterialError(f"unknown diversification scheme {scheme!r} (emv, visa2, kdf3)")
    return StaticKeys(out["enc"], out["mac"], out["dek"], default_version if version is None else version)


# ---------------------------------------------------------------------------
# key encryption for PUT KEY


def scp02_encrypt_key(session_dek: bytes | DES3Key, key: bytes) -> bytes:
    """3DES-ECB of a 16-byte key under the SCP02 session DEK (GP 2.3.1 §E.4.7)."""
    k = session_dek if isinstance(session_dek, DES3Key) else DES3Key(session_dek)
    if len(key) % 8:
        raise KeyMaterialError("SCP02 key encryption needs a multiple of 8 bytes")
    return k.ecb_encrypt(key)


def scp02_decrypt_key(session_dek: bytes | DES3Key, encrypted: bytes) -> bytes:
    k = session_dek if isinstance(session_dek, DES3Key) else DES3Key(session_dek)
    if len(encrypted) % 8:
        raise KeyMaterialError("SCP02 encrypted key must be a multiple of 8 bytes")
    return k.ecb_decrypt(encrypted)


def scp03_encrypt_key(static_dek: bytes | AESKey, key: bytes) -> bytes:
    """AES-CBC with a zero ICV under the static DEK (GP Amd D §7.2).

    Keys whose length is not a multiple of 16 (AES-192) are padded with ISO 9797-1
    method 2 first; the key length byte in the key data lets the card strip it.
    """
    k = static_dek if isinstance(static_dek, AESKey) else AESKey(static_dek)
    plain = key if len(key) % 16 == 0 else pad_m2(key, 16)
    return k.cbc_encrypt(plain)


def scp03_decrypt_key(static_dek: bytes | AESKey, encrypted: bytes, key_length: int | None = None) -> bytes:
    k = static_dek if isinstance(static_dek, AESKey) else AESKey(static_dek)
    if not encrypted or len(encrypted) % 16:
        raise KeyMaterialError("SCP03 encrypted key must be a non-empty multiple of 16 bytes")
    plain = k.cbc_decrypt(encrypted)
    if key_length is not None:
        if key_length > len(plain):
            raise KeyMaterialError("key length byte exceeds the encrypted key data")
        plain = plain[:key_length]
    return plain


# ---------------------------------------------------------------------------
# PUT KEY key data (GP 2.3.1 §11.8.2.3)


def _enc_len(n: int) -> bytes:
    # GP 2.3.1 §11.8.2.3.1: key component length on 1 byte, or 3 bytes (BER 82 xx xx)
    # for public key components longer than 127 bytes.
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return bytes((0x81, n))
    if n <= 0xFFFF:
        return b"\x82" + n.to_bytes(2, "big")
    raise EncodingError(f"key component too long: {n} bytes")


def _dec_len(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise EncodingError("truncated PUT KEY data: missing length")
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    if first == 0x81 and pos + 2 <= len(data):
        return data[pos + 1], pos + 2
    if first == 0x82 and pos + 3 <= len(data):
        return int.from_bytes(data[pos + 1 : pos + 3], "big"), pos + 3
    raise EncodingError(f"bad PUT KEY component length byte {first:02X}")


@dataclass(frozen=True, repr=False)
class KeyComponent:
    """One decoded key component; ``value`` is the clear key (or public key part)."""

    key_type: int
    value: bytes
    kcv: bytes = b""

    def __repr__(self) -> str:
        secret = self.key_type in (KEY_TYPE_DES, KEY_TYPE_AES, KEY_TYPE_EC_PRIVATE)
        shown = "<hidden>" if secret else self.value.hex().upper()
        return (
            f"KeyComponent(type=0x{self.key_type:02X}, length={len(self.value)}, "
            f"value={shown}, kcv={self.kcv.hex().upper()})"
        )


@dataclass(frozen=True, repr=True)
class PutKeyData:
    """Decoded PUT KEY data field: the new KVN and the components in order."""

    new_version: int
    components: tuple[KeyComponent, ...]

    def static_keys(self, version: int | None = None) -> StaticKeys:
        """The three symmetric components as ENC, MAC, DEK."""
        sym = [c for c in self.components if c.key_type in (KEY_TYPE_DES, KEY_TYPE_AES)]
        if len(sym) != 3:
            raise KeyMaterialError(f"expected 3 symmetric keys (ENC, MAC, DEK), got {len(sym)}")
        return StaticKeys(sym[0].value, sym[1].value, sym[2].value, self.new_version if version is None else version)


def encode_put_key_symmetric(
    new_version: int,
    keys: Sequence[bytes] | StaticKeys,
    encrypt: Callable[[bytes], bytes],
    *,
    algorithm: Algorithm,
) -> bytes:
    """PUT KEY data for symmetric keys: ``KVN || (type || len || [keylen] || enc key || 03 || KCV)*``.

    ``encrypt`` is the channel's key encryption (:meth:`SCP02.encrypt_key` uses the
    session DEK, :meth:`SCP03.encrypt_key` the static DEK). DES components are
    ``80 10 <16 encrypted> 03 <KCV>`` (GP 2.3.1 §11.8.2.3.1); AES components are
    ``88 <1+n> <key length> <n encrypted> 03 <KCV>`` (GP Amd D §7.2).
    """
    if not 0 <= new_version <= 0x7F:
        raise KeyMaterialError(f"new key version number must be 1..127, got {new_version}")
    if isinstance(keys, StaticKeys):
        keys = (keys.enc, keys.mac, keys.dek)
    out = bytearray((new_version,))
    for key in keys:
        key = bytes(key)
        enc = encrypt(key)
        if algorithm == "des":
            if len(key) != 16:
                raise KeyMaterialError("3DES keys for PUT KEY must be 16 bytes")
            out += bytes((KEY_TYPE_DES,)) + _enc_len(len(enc)) + enc + b"\x03" + kcv_des(key)
        elif algorithm == "aes":
            _check_key("AES", key)
            out += bytes((KEY_TYPE_AES,)) + _enc_len(1 + len(enc)) + bytes((len(key),)) + enc
            out += b"\x03" + kcv_aes(key)
        else:
            raise KeyMaterialError(f"unknown algorithm {algorithm!r}")
    return bytes(out)


def encode_put_key_rsa(new_version: int, modulus: bytes, exponent: bytes) -> bytes:
    """PUT KEY data for an RSA public key: ``KVN || A1 len N 00 || A0 len e 00`` (GP 2.3.1 §11.8.2.3.2)."""
    if not modulus or not exponent:
        raise KeyMaterialError("RSA modulus and exponent must be non-empty")
    return (
        bytes((new_version, KEY_TYPE_RSA_N))
        + _enc_len(len(modulus))
        + bytes(modulus)
        + b"\x00"
        + bytes((KEY_TYPE_RSA_E,))
        + _enc_len(len(exponent))
        + bytes(exponent)
        + b"\x00"
    )


def encode_put_key_ec_private(
    new_version: int, private_scalar: bytes, curve_reference: int, encrypt: Callable[[bytes], bytes]
) -> bytes:
    """PUT KEY data for an ECC private key (SK.SD.ECKA of SCP11, Amd F §7.3):
    ``KVN || B1 len E(d) 00 || F0 01 <curve> 00`` with the scalar encrypted by the channel's key
    encryption (AES-CBC under S-DEK in an SCP11 session, zero ICV; ``scalar`` is a whole number of
    AES blocks: 32 bytes for P-256, 48 for P-384)."""
    if not 0 < new_version <= 0x7F:
        raise KeyMaterialError(f"new key version number must be 1..127, got {new_version}")
    if len(private_scalar) not in (32, 48):
        raise KeyMaterialError("the private scalar must be 32 (P-256) or 48 (P-384) bytes")
    enc = encrypt(bytes(private_scalar))
    return (
        bytes((new_version, KEY_TYPE_EC_PRIVATE))
        + _enc_len(len(enc))
        + enc
        + b"\x00"
        + bytes((KEY_TYPE_EC_PARAM_REF, 0x01, curve_reference, 0x00))
    )


def encode_put_key_ec_p256(new_version: int, public_point: bytes) -> bytes:
    """PUT KEY data for an EC P-256 public key (GP Amd E): ``KVN || B0 len Q 00 || F0 01 00 00``.

    ``public_point`` is the uncompressed SEC 1 point ``04 || X || Y`` (65 bytes);
    F0 is the key parameter reference, 00 = NIST P-256.
    """
    if len(public_point) != 65 or public_point[0] != 0x04:
        raise KeyMaterialError("P-256 public point must be 65 bytes, uncompressed (04 || X || Y)")
    return (
        bytes((new_version, KEY_TYPE_EC_PUBLIC))
        + _enc_len(65)
        + bytes(public_point)
        + b"\x00"
        + bytes((KEY_TYPE_EC_PARAM_REF, 0x01, 0x00, 0x00))
    )


def decode_put_key(data: bytes, decrypt: Callable[[bytes, int | None], bytes] | None = None) -> PutKeyData:
    """Decode a PUT KEY data field (card side) and verify every KCV.

    ``decrypt(encrypted, key_length)`` returns the clear key (for SCP02 pass e.g.
    ``lambda e, n: scp02_decrypt_key(session_dek, e)``, for SCP03
    ``lambda e, n: scp03_decrypt_key(static_dek, e, n)``); it is required when the
    data holds DES or AES components. Raises :class:`EncodingError` on malformed
    data and :class:`KeyMaterialError` on a KCV mismatch.
    """
    data = bytes(data)
    if not data:
        raise EncodingError("empty PUT KEY data")
    kvn = data[0]
    pos = 1
    comps: list[KeyComponent] = []
    while pos < len(data):
        key_type = data[pos]
        length, pos = _dec_len(data, pos + 1)
        if pos + length > len(data):
            raise EncodingError("truncated PUT KEY key component")
        value = data[pos : pos + length]
        pos += length
        if key_type in (KEY_TYPE_EC_PUBLIC, KEY_TYPE_EC_PRIVATE) and data[pos : pos + 1] == bytes(
            (KEY_TYPE_EC_PARAM_REF,)
        ):
            # An ECC key has no key check value. Table 11-70 still gives each component a KCV
            # length byte (00); yubikit and the cards it drives leave it out between the key and
            # its parameter reference (F0). Unambiguous: a KCV length is never F0.
            kcv_len, kcv = 0, b""
        else:
            if pos >= len(data):
                raise EncodingError("truncated PUT KEY data: missing KCV length")
            kcv_len = data[pos]
            kcv = data[pos + 1 : pos + 1 + kcv_len]
            if len(kcv) != kcv_len:
                raise EncodingError("truncated PUT KEY key check value")
            pos += 1 + kcv_len
        if key_type == KEY_TYPE_EC_PRIVATE:
            if decrypt is None:
                raise KeyMaterialError("an ECC private key component needs a decrypt function (the DEK)")
            comps.append(KeyComponent(key_type, decrypt(value, len(value)), kcv))
        elif key_type in (KEY_TYPE_DES, KEY_TYPE_AES):
            if decrypt is None:
                raise KeyMaterialError("symmetric key components need a decrypt function (the DEK)")
            if key_type == KEY_TYPE_AES:
                if not value:
                    raise EncodingError("empty AES key component")
                if len(value) % 16 == 0:
                    # GP 2.3.1 §11.8.2.3, Table 11-71: a whole number of blocks is the encrypted
                    # key alone (AES-128/256 as yubikit and others send it) ...
                    key_len, enc = len(value), value
                else:
                    # ... otherwise (Table 11-70) a key length byte, then the padded encrypted key.
                    key_len, enc = value[0], value[1:]
                clear = decrypt(enc, key_len)
                if len(clear) != key_len or key_len not in (16, 24, 32):
                    raise KeyMaterialError("AES key length byte does not match the key data")
                expected = kcv_aes(clear)
            else:
                clear = decrypt(value, None)
                if len(clear) != 16:
                    raise KeyMaterialError("3DES key component must decrypt to 16 bytes")
                expected = kcv_des(clear)
            if kcv and kcv != expected[: len(kcv)]:
                raise KeyMaterialError("key check value mismatch in PUT KEY data")
            comps.append(KeyComponent(key_type, clear, kcv))
        else:
            comps.append(KeyComponent(key_type, value, kcv))
    if not comps:
        raise EncodingError("PUT KEY data without any key component")
    return PutKeyData(kvn, tuple(comps))
