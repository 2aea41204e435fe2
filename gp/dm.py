"""Delegated Management: tokens (signed by the card issuer) and receipts (MAC'd by the card).

GlobalPlatform Card Specification v2.3.1 Appendix C (Tokens, Receipts) and
the command tables of §11 (INSTALL §11.5, LOAD §11.6, DELETE §11.2). Appendix sub-section
numbers differ between GP versions, so the docstrings below name the appendix and the object.

Token data (what the issuer signs) is, for every operation, the command's P1, P2, the length of
the data that follows, and the command's data field *without* the token (for INSTALL the
trailing token-length byte is not part of it; for DELETE the ``9E`` token TLV is not part of
it). :func:`token_data_for_command` derives it from the plain command that the
``gp.commands`` builders produce with an empty token, so host and card compute the same bytes.

Receipts (what the card returns so the issuer can check the operation happened) are a MAC with
the receipt key over: confirmation counter, card unique data and the operation's AIDs, each
with a one-byte length. AES receipt keys give AES-CMAC (16 bytes), DES keys a retail MAC
(ISO/IEC 9797-1 algorithm 3, padding method 2, 8 bytes).

Everything is a pure function so the server signs/verifies and the emulated card verifies/produces
with the same code.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac, hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gp import commands as cmds
from gp.apdu import CommandAPDU
from gp.errors import DelegatedManagementError, EncodingError, GPError
from gp.tlv import decode_all, decode_length, encode_length, encode_tlv

__all__ = [
    "SCHEME_ECDSA_P256_SHA256",
    "SCHEME_RSA_PKCS1V15_SHA256",
    "SCHEME_RSA_PSS_SHA256",
    "Confirmation",
    "attach_token",
    "build_confirmation",
    "card_unique_data",
    "compute_receipt",
    "confirmation_data",
    "delete_receipt_data",
    "delete_token_data",
    "extract_token",
    "extradition_receipt_data",
    "extradition_token_data",
    "install_receipt_data",
    "install_token_data",
    "load_receipt_data",
    "load_token_data",
    "make_selectable_token_data",
    "parse_confirmation",
    "receipt_data",
    "registry_update_receipt_data",
    "registry_update_token_data",
    "sign_token",
    "token_data_for_command",
    "verify_receipt",
    "verify_token",
]

SCHEME_ECDSA_P256_SHA256 = "ecdsa-p256-sha256"  # raw r || s, 64 bytes (as cards produce/expect)
SCHEME_RSA_PSS_SHA256 = "rsa-pss-sha256"  # MGF1-SHA256, salt length 32
SCHEME_RSA_PKCS1V15_SHA256 = "rsa-pkcs1v15-sha256"  # the classic GP token scheme, with SHA-256
SCHEMES = (SCHEME_ECDSA_P256_SHA256, SCHEME_RSA_PSS_SHA256, SCHEME_RSA_PKCS1V15_SHA256)


# ---------------------------------------------------------------------------------------------
# Token data (GP 2.3.1 Appendix C, built on the §11 command data fields)
# ---------------------------------------------------------------------------------------------


def _token_data(p1: int, p2: int, data: bytes) -> bytes:
    # P1 || P2 || length of the following data || data (without the token).
    if len(data) > 255:
        raise EncodingError(f"token data field of {len(data)} bytes exceeds one length byte")
    return bytes([p1, p2, len(data)]) + data


def load_token_data(
    elf_aid: bytes, sd_aid: bytes = b"", lfdb_hash: bytes = b"", load_params: bytes = b"", *, p2: int = 0x00
) -> bytes:
    """Load Token data: INSTALL [for load] P1 P2 and data fields without the token (Appendix C, Load Token)."""
    return _token_data(cmds.INSTALL_FOR_LOAD, p2, cmds.install_for_load_data(elf_aid, sd_aid, lfdb_hash, load_params))


def install_token_data(
    elf_aid: bytes,
    module_aid: bytes,
    app_aid: bytes,
    privileges: cmds.Privileges | bytes = b"\x00",
    params: bytes = b"\xc9\x00",
    *,
    make_selectable: bool = True,
    p2: int = 0x00,
) -> bytes:
    """Install Token data for INSTALL [for install (and make selectable)] (Appendix C, Install Token)."""
    p1 = cmds.INSTALL_FOR_INSTALL | (cmds.INSTALL_FOR_MAKE_SELECTABLE if make_selectable else 0)
    return _token_data(p1, p2, cmds.install_for_install_data(elf_aid, module_aid, app_aid, privileges, params))


def make_selectable_token_data(
    app_aid: bytes, privileges: cmds.Privileges | bytes = b"\x00", params: bytes = b""
) -> bytes:
    """Make Selectable Token data (Appendix C, Make Selectable Token)."""
    return _token_data(
        cmds.INSTALL_FOR_MAKE_SELECTABLE, 0x00, cmds.install_for_make_selectable_data(app_aid, privileges, params)
    )


def extradition_token_data(sd_aid: bytes, aid: bytes, params: bytes = b"") -> bytes:
    """Extradition Token data (Appendix C, Extradition Token)."""
    return _token_data(cmds.INSTALL_FOR_EXTRADITION, 0x00, cmds.install_for_extradition_data(sd_aid, aid, params))


def registry_update_token_data(
    app_aid: bytes, sd_aid: bytes = b"", privileges: cmds.Privileges | bytes = b"", params: bytes = b""
) -> bytes:
    """Registry Update Token data (Appendix C, Registry Update Token)."""
    return _token_data(
        cmds.INSTALL_FOR_REGISTRY_UPDATE,
        0x00,
        cmds.install_for_registry_update_data(app_aid, sd_aid, privileges, params),
    )


def delete_token_data(aid: bytes, *, related: bool = False) -> bytes:
    """Delete Token data: DELETE P1 P2, length, ``4F <AID>`` (Appendix C, Delete Token; §11.2.2.3)."""
    return _token_data(0x00, 0x80 if related else 0x00, cmds.delete_data(aid))


def _parse(capdu: bytes) -> CommandAPDU:
    try:
        return CommandAPDU.from_bytes(capdu)
    except GPError as exc:
        raise DelegatedManagementError(f"not a command APDU: {exc}") from exc


def token_data_for_command(capdu: bytes) -> bytes:
    """Token data for a plain INSTALL or DELETE command built with an *empty* token.

    INSTALL: the data field ends with the token length ``00``, which is not signed.
    DELETE: the data field is the TLVs without ``9E``.
    """
    c = _parse(capdu)
    if c.ins == cmds.INS_INSTALL:
        if not c.data or c.data[-1] != 0x00:
            raise DelegatedManagementError("INSTALL command must end with an empty token field (00)")
        return _token_data(c.p1, c.p2, c.data[:-1])
    if c.ins == cmds.INS_DELETE:
        try:
            objs = decode_all(c.data)
        except GPError as exc:
            raise DelegatedManagementError(f"DELETE data is not BER-TLV: {exc}") from exc
        if any(t.tag == 0x9E for t in objs):
            raise DelegatedManagementError("DELETE command already carries a token (9E)")
        return _token_data(c.p1, c.p2, c.data)
    raise DelegatedManagementError(f"no Delegated Management token for INS {c.ins:02X}")


def attach_token(capdu: bytes, token: bytes) -> bytes:
    """Put ``token`` into a plain INSTALL/DELETE command built with an empty token."""
    token_data_for_command(capdu)  # validates the command shape
    c = _parse(capdu)
    if c.ins == cmds.INS_INSTALL:
        data = c.data[:-1] + encode_length(len(token)) + bytes(token)
    else:
        data = c.data + encode_tlv(0x9E, token)
    if len(data) > 255:
        raise DelegatedManagementError(f"command with token is {len(data)} bytes: too long for a short APDU")
    return CommandAPDU(c.cla, c.ins, c.p1, c.p2, data, c.le).to_bytes()


def extract_token(capdu: bytes) -> tuple[bytes, bytes]:
    """Card side: split a received INSTALL/DELETE into (token data, token)."""
    c = _parse(capdu)
    try:
        if c.ins == cmds.INS_DELETE:
            objs = decode_all(c.data)
            tokens = [t for t in objs if t.tag == 0x9E]
            if len(tokens) > 1:
                raise DelegatedManagementError("more than one Delete Token")
            data = b"".join(t.encode() for t in objs if t.tag != 0x9E)
            return _token_data(c.p1, c.p2, data), tokens[0].value if tokens else b""
        if c.ins == cmds.INS_INSTALL:
            fields_end = _install_fields_end(c.p1, c.data)
            n, off = decode_length(c.data, fields_end)
            if off + n != len(c.data):
                raise DelegatedManagementError("INSTALL token length does not match the data")
            return _token_data(c.p1, c.p2, c.data[:fields_end]), c.data[off:]
    except GPError as exc:
        if isinstance(exc, DelegatedManagementError):
            raise
        raise DelegatedManagementError(f"malformed command: {exc}") from exc
    raise DelegatedManagementError(f"no Delegated Management token for INS {c.ins:02X}")


def _install_fields_end(p1: int, data: bytes) -> int:
    """Offset where the token length starts in INSTALL data (§11.5.2.3 field layouts)."""
    kind = p1 & 0x7E
    # one-byte L-V fields before the BER-length parameters field, then the token length
    if kind == cmds.INSTALL_FOR_LOAD:
        one_byte = 3  # ELF AID, SD AID, LFDB hash
    elif kind & cmds.INSTALL_FOR_INSTALL or kind in (
        cmds.INSTALL_FOR_MAKE_SELECTABLE,
        cmds.INSTALL_FOR_EXTRADITION,
        cmds.INSTALL_FOR_REGISTRY_UPDATE,
    ):
        one_byte = 4  # e.g. ELF, module, application AIDs and privileges
    else:
        raise DelegatedManagementError(f"INSTALL P1 {p1:02X} carries no token")
    pos = 0
    for _ in range(one_byte):
        if pos >= len(data):
            raise DelegatedManagementError("truncated INSTALL data")
        pos += 1 + data[pos]
    n, pos = decode_length(data, pos)
    pos += n
    if pos >= len(data):
        raise DelegatedManagementError("truncated INSTALL data (token length missing)")
    return pos


# ---------------------------------------------------------------------------------------------
# Token signature
# ---------------------------------------------------------------------------------------------


def sign_token(
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, data: bytes, scheme: str = SCHEME_ECDSA_P256_SHA256
) -> bytes:
    """Sign token data. ECDSA P-256 gives raw ``r || s`` (64 bytes), RSA the PSS or v1.5 signature."""
    data = bytes(data)
    if scheme == SCHEME_ECDSA_P256_SHA256:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or private_key.curve.name != "secp256r1":
            raise DelegatedManagementError("ecdsa-p256-sha256 needs a P-256 private key")
        r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise DelegatedManagementError(f"{scheme} needs an RSA private key")
    return private_key.sign(data, _rsa_padding(scheme), hashes.SHA256())


def _rsa_padding(scheme: str) -> padding.AsymmetricPadding:
    if scheme == SCHEME_RSA_PSS_SHA256:
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    if scheme == SCHEME_RSA_PKCS1V15_SHA256:
        return padding.PKCS1v15()
    raise DelegatedManagementError(f"unknown token scheme {scheme!r} (use one of {', '.join(SCHEMES)})")


def verify_token(
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    data: bytes,
    token: bytes,
    scheme: str = SCHEME_ECDSA_P256_SHA256,
) -> bool:
    """True when ``token`` is a valid signature of ``data``; False for a wrong or malformed token."""
    data, token = bytes(data), bytes(token)
    try:
        if scheme == SCHEME_ECDSA_P256_SHA256:
            if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
                raise DelegatedManagementError("ecdsa-p256-sha256 needs a P-256 public key")
            if len(token) != 64:
                return False
            r, s = int.from_bytes(token[:32], "big"), int.from_bytes(token[32:], "big")
            if not (r and s):
                return False
            public_key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
            return True
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise DelegatedManagementError(f"{scheme} needs an RSA public key")
        pad = _rsa_padding(scheme)
        if len(token) != (public_key.key_size + 7) // 8:
            return False
        public_key.verify(token, data, pad, hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False


# ---------------------------------------------------------------------------------------------
# Receipts (GP 2.3.1 Appendix C) and the confirmation structure (§11.2.3, §11.5.3, §11.6.3)
# ---------------------------------------------------------------------------------------------


def _lv(value: bytes, what: str) -> bytes:
    value = bytes(value)
    if len(value) > 255:
        raise EncodingError(f"{what} too long: {len(value)} bytes")
    return bytes([len(value)]) + value


def card_unique_data(iin: bytes, cin: bytes) -> bytes:
    """Card Unique Data: the card's IIN (tag 42) and CIN (tag 45) data objects, concatenated."""
    return encode_tlv(0x42, iin) + encode_tlv(0x45, cin)


def confirmation_data(
    counter: bytes, card_unique: bytes, token_identifier: bytes = b"", token_data_digest: bytes = b""
) -> bytes:
    """Confirmation data: counter, card unique data [, token identifier, token data digest], each L-V."""
    if len(counter) != 2:
        raise EncodingError(f"confirmation counter must be 2 bytes, got {len(counter)}")
    out = _lv(counter, "counter") + _lv(card_unique, "card unique data")
    if token_identifier or token_data_digest:
        out += _lv(token_identifier, "token identifier") + _lv(token_data_digest, "token data digest")
    return out


def receipt_data(
    counter: bytes, card_unique: bytes, *fields: bytes, token_identifier: bytes = b"", token_data_digest: bytes = b""
) -> bytes:
    """Receipt input: the confirmation data followed by the operation's fields, each L-V."""
    return confirmation_data(counter, card_unique, token_identifier, token_data_digest) + b"".join(
        _lv(f, "receipt field") for f in fields
    )


def load_receipt_data(
    counter: bytes, card_unique: bytes, elf_aid: bytes, sd_aid: bytes, **token_fields: bytes
) -> bytes:
    """Load receipt: confirmation data, Load File AID, Security Domain AID (Appendix C, receipts)."""
    return receipt_data(counter, card_unique, elf_aid, sd_aid, **token_fields)


def install_receipt_data(
    counter: bytes, card_unique: bytes, elf_aid: bytes, app_aid: bytes, **token_fields: bytes
) -> bytes:
    """Install (and make selectable) receipt: confirmation data, ELF AID, application AID (Appendix C, receipts)."""
    return receipt_data(counter, card_unique, elf_aid, app_aid, **token_fields)


def delete_receipt_data(counter: bytes, card_unique: bytes, aid: bytes, **token_fields: bytes) -> bytes:
    """Delete receipt: confirmation data, AID of the deleted ELF/application/SD (Appendix C, receipts)."""
    return receipt_data(counter, card_unique, aid, **token_fields)


def extradition_receipt_data(
    counter: bytes, card_unique: bytes, old_sd_aid: bytes, aid: bytes, new_sd_aid: bytes, **token_fields: bytes
) -> bytes:
    """Extradition receipt: confirmation data, former SD AID, application/ELF AID, new SD AID (Appendix C, receipts)."""
    return receipt_data(counter, card_unique, old_sd_aid, aid, new_sd_aid, **token_fields)


def registry_update_receipt_data(
    counter: bytes,
    card_unique: bytes,
    old_sd_aid: bytes,
    app_aid: bytes,
    new_sd_aid: bytes,
    privileges: bytes = b"",
    params: bytes = b"",
    **token_fields: bytes,
) -> bytes:
    """Registry update receipt: confirmation data, former SD, application, new SD, privileges, parameters."""
    return receipt_data(counter, card_unique, old_sd_aid, app_aid, new_sd_aid, privileges, params, **token_fields)


_DES_KEY_LENGTHS = (16, 24)
_AES_KEY_LENGTHS = (16, 24, 32)


def compute_receipt(receipt_key: bytes, data: bytes, *, alg: str = "aes") -> bytes:
    """Receipt over ``data``: AES-CMAC (16 bytes) for ``alg="aes"``, retail MAC (8 bytes) for ``"des"``."""
    key, data = bytes(receipt_key), bytes(data)
    if alg == "aes":
        if len(key) not in _AES_KEY_LENGTHS:
            raise DelegatedManagementError(f"AES receipt key must be 16/24/32 bytes, got {len(key)}")
        c = cmac.CMAC(algorithms.AES(key))
        c.update(data)
        return c.finalize()
    if alg == "des":
        if len(key) not in _DES_KEY_LENGTHS:
            raise DelegatedManagementError(f"DES receipt key must be 16 or 24 bytes, got {len(key)}")
        return _retail_mac(key, data)
    raise DelegatedManagementError(f"unknown receipt algorithm {alg!r} (aes or des)")


def _retail_mac(key: bytes, data: bytes) -> bytes:
    # ISO/IEC 9797-1 MAC algorithm 3, padding method 2: single DES CBC with K1, then 3DES on the last block.
    padded = data + b"\x80" + bytes((-len(data) - 1) % 8)
    k1 = key[:8]
    k3 = key[16:24] if len(key) == 24 else k1
    des1 = Cipher(TripleDES(k1 * 3), modes.ECB()).encryptor()  # noqa: S305 - CBC chaining done by hand
    des3 = Cipher(TripleDES(key[:16] + k3), modes.ECB()).encryptor()  # noqa: S305
    chain = bytes(8)
    blocks = [padded[i : i + 8] for i in range(0, len(padded), 8)]
    for blk in blocks[:-1]:
        chain = des1.update(bytes(a ^ b for a, b in zip(chain, blk, strict=True)))
    return des3.update(bytes(a ^ b for a, b in zip(chain, blocks[-1], strict=True)))


def verify_receipt(receipt_key: bytes, data: bytes, receipt: bytes, *, alg: str = "aes") -> bool:
    """Constant-time comparison of ``receipt`` with the receipt computed over ``data``."""
    return hmac.compare_digest(compute_receipt(receipt_key, data, alg=alg), bytes(receipt))


@dataclass(frozen=True)
class Confirmation:
    """Response data of INSTALL/LOAD/DELETE under Delegated Management (§11.2.3.1, §11.5.3.1)."""

    receipt: bytes = b""
    counter: bytes = b""
    card_unique_data: bytes = b""
    token_identifier: bytes = b""
    token_data_digest: bytes = b""

    @property
    def has_receipt(self) -> bool:
        return bool(self.receipt)

    @property
    def confirmation_data(self) -> bytes:
        """The confirmation data as L-V fields: the first part of the receipt input."""
        return confirmation_data(self.counter, self.card_unique_data, self.token_identifier, self.token_data_digest)


def build_confirmation(
    receipt: bytes = b"",
    counter: bytes = b"",
    card_unique: bytes = b"",
    token_identifier: bytes = b"",
    token_data_digest: bytes = b"",
) -> bytes:
    """Card side: ``len receipt || receipt || len confirmation data || confirmation data`` where the
    confirmation data is counter, card unique data [, token identifier, token data digest], each L-V.
    Without a receipt the response is the single byte ``00`` (no Delegated Management)."""
    if not receipt:
        return b"\x00"
    conf = confirmation_data(counter, card_unique, token_identifier, token_data_digest)
    return _lv(receipt, "receipt") + _lv(conf, "confirmation data")


def parse_confirmation(data: bytes) -> Confirmation:
    """Parse the confirmation returned by INSTALL/LOAD/DELETE.

    Accepts the GP 2.2+ layout (receipt L-V, then a length-prefixed confirmation data block) and
    the GP 2.1.1 layout (receipt L-V, counter L-V, card unique data L-V). ``00`` alone = no receipt.
    """
    data = bytes(data)
    if not data:
        return Confirmation()
    pos = 0

    def lv() -> bytes:
        nonlocal pos
        if pos >= len(data):
            raise DelegatedManagementError("truncated confirmation data")
        n = data[pos]
        if pos + 1 + n > len(data):
            raise DelegatedManagementError("truncated confirmation data field")
        out = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        return out

    receipt = lv()
    if pos == len(data):
        return Confirmation(receipt)
    if data[pos] == len(data) - pos - 1 and len(data) - pos - 1 >= 2:  # GP 2.2+: length of confirmation data
        pos += 1
    counter = lv()
    cud = lv()
    token_id = lv() if pos < len(data) else b""
    digest = lv() if pos < len(data) else b""
    if pos != len(data):
        raise DelegatedManagementError("trailing bytes after the confirmation data")
    return Confirmation(receipt, counter, cud, token_id, digest)
