"""Real cards from a card manufacturer's personalisation file (docs/manufacturer-file.md).

The agency registers the manufacturer's transport key in custody once
(:func:`register_transport_key`; ``manage.py import_transport_key``). Importing a file
(:func:`import_manufacturer_file`) checks every line first — the format, the transport key, every
key's check value, the token verification key the cards hold, duplicates in the file and in the
registry — and refuses the whole file naming the lines at fault; nothing is imported then. A good
file becomes, in one transaction: a :class:`~cards.models.ManufacturerBatch`, one card per line
(``key_scheme`` "stored": the engine opens the ISD with the card's own key set, SECURED, no holder,
valid for the agency's validity policy), its ISD record, and its ISD, receipt and initial SSD keys
moved from the transport key into custody under the agency's KEK. The transparency log gets one
``manufacturer_batch.imported`` entry (file SHA-256 and count) and one ``card.issued`` per card,
inserted together. Holders are assigned later with :func:`cards.services.assign_holder`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from django.db import transaction
from django.utils import timezone

from audit.services import events_together, record_event
from cards.emulation import token_verification_keyset
from cards.models import ISD_AID, STORED_ISD_KEYS, Card, ManufacturerBatch, SecurityDomain, ValidityPolicy
from cards.services import PRIVILEGES_ISD
from ecard.bulk import insert_rows
from ecard.errors import ServiceError
from gp import manufacturer_file
from gp.manufacturer_file import RECEIPT_KVN, CardKeys, FileRefused
from issuers import custody
from issuers.custody_models import KeySet
from issuers.models import Organization

DEFAULT_VALIDITY_YEARS = 5
MAX_FILE_BYTES = 128 * 1024 * 1024  # 100,000 cards (MAX_CARDS) of about 650 bytes
_IN_CHUNK = 500  # values per IN (...) query


def transport_key_for(agency: Organization, kcv: str) -> KeySet | None:
    """The agency's active transport key with this check value, if registered."""
    return KeySet.objects.filter(
        organization=agency, purpose=KeySet.Purpose.TRANSPORT, state=KeySet.State.ACTIVE, card_cin="", kcv_enc=kcv
    ).first()


def register_transport_key(
    *, agency: Organization, key: bytes, kcv: str, kvn: int | None = None, actor: Any = None
) -> KeySet:
    """Put a manufacturer's transport key (AES) into the agency's custody, checked against the
    check value the manufacturer sent separately. ``kvn`` names its slot (default: the next free)."""
    if not agency.is_agency:
        raise ServiceError("only the agency holds transport keys", field="agency")
    if len(key) not in (16, 24, 32):
        raise ServiceError("a transport key is an AES key of 16, 24 or 32 bytes", field="key")
    kcv = kcv.strip().upper()
    if kcv != manufacturer_file.kcv("aes", key):
        raise ServiceError("the key does not have the check value given", field="kcv")
    if transport_key_for(agency, kcv) is not None:
        raise ServiceError(f"a transport key with check value {kcv} is registered", field="kcv", code="duplicate")
    if kvn is None:
        used = set(
            KeySet.objects.filter(
                organization=agency, purpose=KeySet.Purpose.TRANSPORT, state=KeySet.State.ACTIVE, card_cin=""
            ).values_list("kvn", flat=True)
        )
        kvn = next((n for n in range(1, 256) if n not in used), 0)
    return custody.store_secret_key(
        agency, key, purpose=KeySet.Purpose.TRANSPORT, kvn=kvn, algorithm="aes", actor=actor
    )


def _refused(errors: list[tuple[int, str]], more: bool = False) -> ServiceError:
    return ServiceError(str(FileRefused(errors, more)), field="file")


def _token_key_sha256(agency: Organization) -> str:
    try:
        keyset = token_verification_keyset(agency)
    except custody.CustodyError as exc:
        raise ServiceError(str(exc), field="file") from None
    public_key = serialization.load_pem_public_key(keyset.public_key.encode())
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return manufacturer_file.token_key_sha256(der)


def _existing(values: list[str], lookup: Any) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(values), _IN_CHUNK):
        found.update(lookup(values[start : start + _IN_CHUNK]))
    return found


def _registry_conflicts(agency: Organization, cards: list[CardKeys]) -> list[tuple[int, str]]:
    serials = _existing(
        [c.serial for c in cards], lambda chunk: Card.objects.filter(serial__in=chunk).values_list("serial", flat=True)
    )
    cins = _existing(
        [c.cin for c in cards], lambda chunk: Card.objects.filter(cin__in=chunk).values_list("cin", flat=True)
    )
    keyed = _existing(
        [c.cin for c in cards],
        lambda chunk: KeySet.objects.filter(
            organization=agency, card_cin__in=chunk, state=KeySet.State.ACTIVE
        ).values_list("card_cin", flat=True),
    )
    errors = []
    for card in cards:
        if card.serial in serials:
            errors.append((card.line, f"card number {card.serial} is already in the registry"))
        elif card.cin in cins:
            errors.append((card.line, f"CIN {card.cin} is already in the registry"))
        elif card.cin in keyed:
            errors.append((card.line, f"custody already holds keys for CIN {card.cin}"))
    return errors


def validity_years(agency: Organization) -> int:
    policy = ValidityPolicy.objects.filter(agency=agency).first()
    return policy.years if policy is not None else DEFAULT_VALIDITY_YEARS


def _years_after(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _new_keys(card: CardKeys) -> list[custody.NewKey]:
    """The card's keys for custody, with the check values the file gave and the reader verified."""
    algorithm: Literal["aes", "3des"] = "aes" if card.scp == 0x03 else "3des"
    isd = card.isd_keys
    return [
        custody.NewKey(
            material=isd.enc + isd.mac + isd.dek,
            purpose=KeySet.Purpose.SCP_STATIC,
            algorithm=algorithm,
            key_length=isd.key_length,
            kvn=isd.version,
            card_cin=card.cin,
            sd_aid=ISD_AID,
            kcvs={"enc": card.kcvs["isd_enc"], "mac": card.kcvs["isd_mac"], "dek": card.kcvs["isd_dek"]},
        ),
        custody.NewKey(
            material=card.receipt_key,
            purpose=KeySet.Purpose.RECEIPT,
            algorithm=algorithm,
            key_length=len(card.receipt_key),
            kvn=RECEIPT_KVN,
            card_cin=card.cin,
            kcvs={"enc": card.kcvs["receipt"]},
        ),
        # the initial key set of the SSDs installed on the card (ENC = MAC = DEK), sd_aid "" as
        # for emulated cards (updates.ota.ssd_initial_keyset)
        custody.NewKey(
            material=card.ssd_initial_key * 3,
            purpose=KeySet.Purpose.SCP_STATIC,
            algorithm=algorithm,
            key_length=len(card.ssd_initial_key),
            kvn=card.ssd_initial_kvn,
            card_cin=card.cin,
            kcvs=dict.fromkeys(("enc", "mac", "dek"), card.kcvs["ssd_initial"]),
        ),
    ]


def check_manufacturer_file(*, agency: Organization, data: bytes) -> manufacturer_file.ManufacturerFile:
    """Every check of an import, nothing written: the file with its cards' clear keys, or a
    :class:`ServiceError` naming the lines at fault."""
    if not agency.is_agency:
        raise ServiceError("only the agency imports manufacturer files", field="agency")
    if len(data) > MAX_FILE_BYTES:
        raise ServiceError(f"the file is larger than {MAX_FILE_BYTES} bytes", field="file")
    sha256 = hashlib.sha256(data).hexdigest()
    earlier = ManufacturerBatch.objects.filter(file_sha256=sha256).first()
    if earlier is not None:
        raise ServiceError(
            f"this file was imported already (batch {earlier.pk}, {earlier.created_at:%Y-%m-%d})",
            field="file",
            code="duplicate",
        )
    try:
        header = manufacturer_file.read_header(data)
    except FileRefused as exc:
        raise _refused(exc.errors) from None
    transport = transport_key_for(agency, header.transport_kcv)
    if transport is None:
        raise _refused([(1, f"no transport key with check value {header.transport_kcv} is registered")])
    if header.token_key_sha256 != _token_key_sha256(agency):
        raise _refused(
            [
                (
                    1,
                    "token_key_sha256 is not the agency's token signing key: the cards could not verify its tokens",
                )
            ]
        )
    try:
        parsed = manufacturer_file.read(data, custody.load_secret_key(transport))
    except FileRefused as exc:
        raise _refused(exc.errors, exc.more) from None
    conflicts = _registry_conflicts(agency, parsed.cards)
    if conflicts:
        limit = manufacturer_file.MAX_ERRORS
        raise _refused(conflicts[:limit], len(conflicts) > limit)
    return parsed


@transaction.atomic
def import_manufacturer_file(
    *, agency: Organization, data: bytes, file_name: str = "", actor: Any = None
) -> ManufacturerBatch:
    """Import a manufacturer's file: all its cards or, with the lines at fault named, none."""
    parsed = check_manufacturer_file(agency=agency, data=data)
    header = parsed.header
    batch = ManufacturerBatch.objects.create(
        agency=agency,
        manufacturer=header.manufacturer,
        file_name=file_name[:200],
        file_sha256=parsed.sha256,
        transport_kcv=header.transport_kcv,
        card_count=len(parsed.cards),
        imported_by=actor if actor is not None and getattr(actor, "pk", None) else None,
    )
    today = timezone.localdate()
    valid_until = _years_after(today, validity_years(agency))
    insert_rows(
        Card,
        [
            Card(
                cin=line.cin,
                serial=line.serial,
                iin=header.iin,
                kdd=line.kdd,
                key_scheme=STORED_ISD_KEYS,
                scp=line.scp,
                scp_i=line.i,
                isd_kvn=line.isd_keys.version,
                cplc=line.cplc.as_hex(),
                lifecycle=Card.Lifecycle.SECURED,
                issued_by=agency,
                emulated=False,
                elf_upgrade=False,
                valid_from=today,
                valid_until=valid_until,
                manufacturer_batch=batch,
            )
            for line in parsed.cards
        ],
    )
    card_ids = dict(Card.objects.filter(manufacturer_batch=batch).values_list("cin", "pk"))
    insert_rows(
        SecurityDomain,
        [
            SecurityDomain(
                card_id=card_ids[line.cin],
                organization=agency,
                aid=ISD_AID,
                is_isd=True,
                privileges=PRIVILEGES_ISD,
                management="am",
                scp=line.scp,
                scp_i=line.i,
                key_kvn=line.isd_keys.version,
                lifecycle=SecurityDomain.Lifecycle.PERSONALIZED,
                state=SecurityDomain.State.ACTIVE,
            )
            for line in parsed.cards
        ],
    )
    custody.store_new_keys(
        agency,
        [key for line in parsed.cards for key in _new_keys(line)],
        actor=actor,
        details={"manufacturer_batch": batch.pk},
    )
    with events_together():
        record_event(
            action="manufacturer_batch.imported",
            subject_type="manufacturer_batch",
            subject_id=batch.pk,
            actor=actor,
            actor_org=agency,
            organization=agency,
            details={
                "manufacturer": header.manufacturer,
                "file_sha256": parsed.sha256,
                "card_count": len(parsed.cards),
                "first_card": parsed.cards[0].cin,
                "last_card": parsed.cards[-1].cin,
            },
        )
        for line in parsed.cards:
            record_event(
                action="card.issued",
                subject_type="card",
                subject_id=line.cin,
                card_cin=line.cin,
                actor=actor,
                actor_org=agency,
                organization=agency,
                details={
                    "scp": line.scp,
                    "key_scheme": STORED_ISD_KEYS,
                    "emulated": False,
                    "holder_assigned": False,
                    "lifecycle": Card.Lifecycle.SECURED,
                    "isd_aid": ISD_AID,
                    "manufacturer_batch": batch.pk,
                },
            )
    return batch
