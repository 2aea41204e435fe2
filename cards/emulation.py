"""Personalise an emulated card (``cardsim``) for a card record, as the agency's personalisation
bureau would a physical one: ISD keys diversified from the agency master with the card's KDD, the
agency's DM token verification key, a per-card receipt key, a per-card initial SSD key (for banks
without a key service), and the card's attestation key certified by the agency's card CA (it
certifies the SCP11 key pair the card generates for each bank SSD installed for SCP11, so a bank's
key service can enroll its SSD with no shared secret; docs/keyservice.md).

The state file *is* the emulated card's secure memory, so it holds that card's keys (mode 0600);
the platform's own records hold only wrapped keys (``issuers.custody``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings

from audit.services import record_event
from cards.models import Card
from cardsim import store
from cardsim.scp11 import provision_attestation
from cardsim.state import new_state
from ecard.errors import ServiceError
from gp.keys import StaticKeys
from issuers import custody
from issuers.code_signing import mandated_dap_enabled, mandated_dap_public_point
from issuers.custody.authorities import agency_ca
from issuers.custody_models import KeySet

TOKEN_KVN = 0x70  # ISD Token Verification key (GP 2.3.1 §9.2.2)
RECEIPT_KVN = 0x71  # ISD Receipt key
SSD_INITIAL_KVN = {0x02: 0x20, 0x03: 0x30}  # a new SSD's initial key set, before its bank's PUT KEY


def state_path(card: Card) -> Path:
    """``ECARD_CARDS_DIR/<CIN>.json``: one file per card (the CIN is unique and hexadecimal), never
    named after the holder, so a second card can never overwrite another card's secure memory."""
    if not card.cin or not all(c in "0123456789ABCDEF" for c in card.cin):
        raise ValueError("a card's state file is named after its CIN: upper-case hexadecimal")
    return Path(settings.ECARD_CARDS_DIR) / f"{card.cin}.json"


def _claim(path: Path, card: Card) -> None:
    """Refuse to personalise over another card's state file."""
    taken = Card.objects.filter(state_file=str(path)).exclude(pk=card.pk)
    if taken.exists():
        raise ServiceError(f"the state file {path.name} belongs to another card", field="cin", code="duplicate")


def agency_master(agency, scheme: str) -> KeySet:
    algorithm = KeySet.Algorithm.AES if scheme == "kdf3" else KeySet.Algorithm.DES3
    master = (
        KeySet.objects.filter(
            organization=agency,
            purpose=KeySet.Purpose.DIVERSIFICATION_MASTER,
            algorithm=algorithm,
            state=KeySet.State.ACTIVE,
            card_cin="",
        )
        .order_by("-kvn")
        .first()
    )
    if master is None:
        raise custody.CustodyError(f"the agency has no {algorithm} diversification master")
    return master


def token_verification_keyset(agency) -> KeySet:
    keyset = (
        KeySet.objects.filter(
            organization=agency, purpose=KeySet.Purpose.TOKEN_SIGNING, state=KeySet.State.ACTIVE, card_cin=""
        )
        .order_by("-kvn")
        .first()
    )
    if keyset is None:
        raise custody.CustodyError("the agency has no Delegated Management token signing key")
    return keyset


def personalise(card: Card, *, path: Path | None = None) -> Path:
    """Create the emulated card's state file and store the card's agency-side keys in custody."""
    agency = card.issued_by
    scheme = card.key_scheme
    master_keyset = agency_master(agency, scheme)
    token_keyset = token_verification_keyset(agency)
    receipt_key = secrets.token_bytes(16)
    ssd_initial = secrets.token_bytes(16)
    ssd_kvn = SSD_INITIAL_KVN[card.scp]
    custody.store_secret_key(
        agency,
        receipt_key,
        purpose=KeySet.Purpose.RECEIPT,
        kvn=RECEIPT_KVN,
        card_cin=card.cin,
        algorithm="aes" if card.scp == 0x03 else "3des",
    )
    custody.store_static_keys(
        agency,
        StaticKeys.single(ssd_initial, ssd_kvn),
        card_cin=card.cin,
        algorithm="aes" if card.scp == 0x03 else "3des",
    )
    public_key = serialization.load_pem_public_key(token_keyset.public_key.encode())
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise custody.CustodyError("the agency's token signing key is neither ECDSA nor RSA")
    path = path or state_path(card)
    _claim(path, card)
    path.parent.mkdir(parents=True, exist_ok=True)
    mandated = _mandated_dap()
    state = new_state(
        scp=card.scp,
        key=custody.load_secret_key(master_keyset),
        kvn=card.isd_kvn,
        i=card.scp_i,
        cin=bytes.fromhex(card.cin),
        kdd=bytes.fromhex(card.kdd),
        diversify_scheme=scheme,
        token_key=public_key,
        receipt_key=receipt_key,
        ssd_initial_key=ssd_initial,
        valid_from=card.valid_from,
        valid_until=card.valid_until,
        **mandated,
    )
    if mandated and not card.mandated_dap:
        card.mandated_dap = True
        card.save(update_fields=["mandated_dap"])
    ca = agency_ca(agency, KeySet.Purpose.CARD_CA)
    provision_attestation(state, ca, dt.date.today(), random=os.urandom)
    _record_attestation_certificate(card, ca.identifier, bytes.fromhex(state["attestation"]["certs"][-1]))
    store.save(path, state)
    return path


def _mandated_dap() -> dict[str, Any]:
    """With Mandated DAP on (``issuers.code_signing``), the ISD verifies the agency's signature on
    every load (GP 2.3.1 §9.2.1): its privilege and the agency's DAP key at KVN 73."""
    if not mandated_dap_enabled():
        return {}
    return {"mandated_dap": True, "mandated_dap_key": mandated_dap_public_point()}


def _record_attestation_certificate(card: Card, ca_identifier: bytes, certificate: bytes) -> None:
    """Every certificate the agency's CAs issue goes into the transparency log: a bank's key
    service trusts an SSD's key only through this chain, so a second certificate for a card would
    show here (docs/threat-model.md)."""
    record_event(
        action="certificate.issued",
        subject_type="card",
        subject_id=card.cin,
        card_cin=card.cin,
        organization=card.issued_by,
        actor_type="system",
        details={
            "kind": "card_attestation",
            "issuer": ca_identifier.hex().upper(),
            "subject": card.cin,
            "sha256": hashlib.sha256(certificate).hexdigest(),
        },
    )
