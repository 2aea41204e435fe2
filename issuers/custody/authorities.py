"""The agency's certificate authorities (GPC Amendment F): the card CA, which certifies each card's
attestation key (and through it every SCP11 key pair a card generates for a security domain), and
the OCE CA, which certifies the banks' off-card keys. Their private keys are custody key sets of
the agency like any other (wrapped under its KEK); what they issue is public and goes into the
audit log (``certificate.issued``), where banks watch for certificates naming their domains."""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gp.scp11 import CertificateAuthority, KeyPair
from issuers.custody.keysets import generate_private_key, load_private_key
from issuers.custody_models import KeySet
from issuers.models import Organization

CA_NAMES: dict[str, str] = {
    KeySet.Purpose.CARD_CA: "E-Card agency card CA",
    KeySet.Purpose.OCE_CA: "E-Card agency OCE CA",
}


def _ca_keyset(agency: Organization, purpose: str, *, actor: Any = None) -> KeySet:
    keyset = (
        KeySet.objects.filter(organization=agency, purpose=purpose, state=KeySet.State.ACTIVE, card_cin="")
        .order_by("-kvn")
        .first()
    )
    if keyset is None:
        keyset = generate_private_key(agency, purpose=purpose, algorithm="ec-p256", kvn=1, actor=actor)
    return keyset


def ca_identifier(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The CA-KLOC identifier written in what the CA issues (tag 42): the RFC 5280 §4.2.1.2
    method 1 key identifier, SHA-1 of the public key's uncompressed point."""
    point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return hashlib.sha1(point).digest()  # noqa: S324 - an identifier, not a security hash


def agency_ca(agency: Organization, purpose: str, *, actor: Any = None) -> CertificateAuthority:
    """The agency's CA for ``purpose`` (card or OCE), its key created in custody on first use.
    For signing code in services only: it holds the CA's private key."""
    private_key = load_private_key(_ca_keyset(agency, purpose, actor=actor))
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise TypeError("an agency CA key is an EC key")
    return CertificateAuthority(KeyPair(private_key), ca_identifier(private_key.public_key()), CA_NAMES[purpose])


def ca_public_pem(agency: Organization, purpose: str) -> str:
    """The CA's public key (PEM): what a bank's key service trusts to check a card's chain."""
    return _ca_keyset(agency, purpose).public_key
