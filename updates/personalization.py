"""Per-card personalisation of a bank's applet instances (issue 18, docs/personalization.md).

A bank gives data for an instance on a card: in clear (the portal's CSV or JSON upload, or an API
call per card), which the platform seals at once to the bank's personalisation key, or already
sealed by its back office (``gp.sealed``). Only the envelope is kept. It travels to the bank's key
service in the SSD's channel, which opens it in its token and sends INSTALL [for personalization]
and STORE DATA with C-ENC (GPC 2.3.1 §11.5.2.3.6, §11.11; the card's C-DEC). The clear data is
never stored, logged, audited or returned; audit rows carry the envelope's hash and length.

Delivery is proven only by an R-MAC'd ``9000`` to the last STORE DATA block; a lost answer leaves
the record pending and the next presentation sends the whole sequence again (the applet replaces
its personalisation with the data of the last complete sequence).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from audit.services import record_event
from cards.models import Card, CardJob, Personalization, SecurityDomain
from ecard.errors import ServiceError
from gp import commands
from gp.errors import GPError
from gp.sealed import plaintext_length, seal
from issuers.bank_service_client import BankServiceError
from issuers.key_services import client_of, registered_service
from issuers.models import Organization
from issuers.roles import principal
from issuers.services import aid_in_bank_range
from updates.engine.effects import Effect, PersonalizationDelivered
from updates.engine.protocol import STATUS_APPS, Command, JobFailed, KeyChoice, Registry, Unconfirmed
from updates.ota import BankSsdStage

#: Most data one instance may receive (STORE DATA carries at most 256 blocks; a bank's applets
#: take a few hundred bytes: keys, counters, a holder's reference).
MAX_DATA = 8192
#: Plain bytes of personalisation data per STORE DATA block: with C-ENC padding (16) and the
#: C-MAC (8) a block stays a short APDU in every SCP03 channel (GPC Amendment D §6.2.4).
STORE_DATA_BLOCK = 192
MAX_ITEMS = 10_000
MAX_UPLOAD = 8 * 1024 * 1024  # bytes of one CSV upload


@dataclass(frozen=True)
class PersonalizationItem:
    """One line of a bank's input: a card (by its printed number), an instance, and its data, in
    clear (``data``) or sealed by the bank (``sealed_envelope``)."""

    line: int
    card_number: str
    instance_aid: str
    data: bytes | None = None
    sealed_envelope: bytes | None = None


def _hex(value: str, what: str, line: int) -> bytes:
    try:
        return bytes.fromhex(value.strip())
    except ValueError:
        raise ServiceError(f"line {line}: {what} is not hexadecimal", field="data", code="invalid") from None


def items_from_csv(text: str) -> list[PersonalizationItem]:
    """Columns ``card_number, instance_aid`` and one of ``data_hex`` or ``sealed_b64``."""
    reader = csv.DictReader(io.StringIO(text))
    columns = {c.strip() for c in reader.fieldnames or []}
    if not {"card_number", "instance_aid"} <= columns or not columns & {"data_hex", "sealed_b64"}:
        raise ServiceError(
            "the CSV needs the columns card_number, instance_aid and data_hex (or sealed_b64)", field="file"
        )
    items: list[PersonalizationItem] = []
    for row in reader:
        line = reader.line_num
        if len(items) >= MAX_ITEMS:
            raise ServiceError(f"at most {MAX_ITEMS} lines in one upload", field="file")
        items.append(_item(line, {k.strip(): (v or "").strip() for k, v in row.items() if k}))
    return items


def items_from_upload(raw: bytes) -> list[PersonalizationItem]:
    """A CSV file as uploaded (portal or API): at most :data:`MAX_UPLOAD` bytes of UTF-8."""
    if len(raw) > MAX_UPLOAD:
        raise ServiceError(f"the file is over {MAX_UPLOAD} bytes", field="file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ServiceError("the CSV must be UTF-8 text", field="file") from None
    return items_from_csv(text)


def items_from_json(payload: Any) -> list[PersonalizationItem]:
    """``{"items": [{"card_number", "instance_aid", "data_hex" | "sealed_b64"}, ...]}``."""
    rows = payload.get("items") if isinstance(payload, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ServiceError('expected {"items": [...]} with at least one item', field="items")
    if len(rows) > MAX_ITEMS:
        raise ServiceError(f"at most {MAX_ITEMS} items in one request", field="items")
    items = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not all(isinstance(v, str) for v in row.values()):
            raise ServiceError(f"item {number}: an object of strings is expected", field="items")
        items.append(_item(number, row))
    return items


def _item(line: int, row: dict[str, str]) -> PersonalizationItem:
    card_number = row.get("card_number", "")
    instance = row.get("instance_aid", "").upper()
    if not card_number or not instance:
        raise ServiceError(f"line {line}: card_number and instance_aid are required", field="items")
    data_hex, sealed_b64 = row.get("data_hex", ""), row.get("sealed_b64", "")
    if bool(data_hex) == bool(sealed_b64):
        raise ServiceError(f"line {line}: give exactly one of data_hex and sealed_b64", field="items")
    _hex(instance, "instance_aid", line)
    if data_hex:
        return PersonalizationItem(line, card_number, instance, data=_hex(data_hex, "data_hex", line))
    try:
        envelope = base64.b64decode(sealed_b64, validate=True)
    except ValueError:
        raise ServiceError(f"line {line}: sealed_b64 is not base64", field="items") from None
    return PersonalizationItem(line, card_number, instance, sealed_envelope=envelope)


def _personalization_point(bank: Organization) -> bytes:
    service = registered_service(bank)
    if service is None:
        raise ServiceError(
            f"{bank.name} has no active key service: personalisation data is sealed to the bank's own key",
            field="bank",
            code="state",
        )
    try:
        return client_of(service).personalization_public_key()
    except BankServiceError as exc:
        raise ServiceError(
            f"{bank.name}'s key service did not give its personalisation key ({exc}); try again later",
            code="unavailable",
        ) from None


@dataclass(frozen=True)
class _Checked:
    item: PersonalizationItem
    card: Card
    security_domain: SecurityDomain
    envelope: bytes
    data_length: int


def submit_personalization(
    *, bank: Organization, items: list[PersonalizationItem], actor: User
) -> list[Personalization]:
    """Check every item, seal what came in clear, and queue one personalisation job per card.
    All or nothing: the first bad line is named and nothing is stored."""
    if not principal(actor).can_operate(bank.pk):
        raise ServiceError("only the bank's operators give its personalisation data", code="forbidden")
    if not items:
        raise ServiceError("no personalisation data given", field="items")
    point: bytes | None = None
    checked: list[_Checked] = []
    seen: set[tuple[str, str]] = set()
    cards = {c.serial: c for c in Card.objects.filter(serial__in={i.card_number for i in items})}
    domains = {
        sd.card_id: sd
        for sd in SecurityDomain.objects.filter(
            organization=bank,
            card__in=cards.values(),
            is_isd=False,
            state__in=(SecurityDomain.State.ACTIVE, SecurityDomain.State.PENDING),
        ).select_related("card", "organization")
    }
    for item in items:
        where = f"line {item.line}"
        card = cards.get(item.card_number)
        sd = domains.get(card.pk) if card is not None else None
        if card is None or sd is None:
            raise ServiceError(f"{where}: card {item.card_number} carries no security domain of {bank.name}")
        if card.standing != Card.Standing.ACTIVE:
            raise ServiceError(
                f"{where}: card {item.card_number} is {card.get_standing_display().lower()}: it takes no new data",
                code="state",
            )
        if sd.state == SecurityDomain.State.PENDING and item.instance_aid not in _instances_awaited(sd):
            raise ServiceError(
                f"{where}: {bank.name}'s security domain on card {item.card_number} is not installed yet, and its "
                f"enrollment does not install {item.instance_aid}"
            )
        if (item.card_number, item.instance_aid) in seen:
            raise ServiceError(f"{where}: a second line for card {item.card_number} and {item.instance_aid}")
        seen.add((item.card_number, item.instance_aid))
        if not 5 <= len(item.instance_aid) // 2 <= 16 or not aid_in_bank_range(bank, item.instance_aid):
            raise ServiceError(f"{where}: {item.instance_aid} is not an AID in {bank.name}'s range")
        if sd.scp != 0x11:
            raise ServiceError(
                f"{where}: {bank.name}'s security domain on card {item.card_number} is not reached through "
                "its key service; personalisation data goes only to a bank's own key service"
            )
        if item.data is not None:
            if not 1 <= len(item.data) <= MAX_DATA:
                raise ServiceError(f"{where}: data must be 1..{MAX_DATA} bytes")
            point = point or _personalization_point(bank)
            envelope = seal(point, item.data, cin=bytes.fromhex(card.cin), aid=bytes.fromhex(item.instance_aid))
            length = len(item.data)
        else:
            envelope = item.sealed_envelope or b""
            try:
                length = plaintext_length(envelope)
            except GPError as exc:
                raise ServiceError(f"{where}: the sealed envelope is malformed ({exc})") from None
            if not 1 <= length <= MAX_DATA:
                raise ServiceError(f"{where}: data must be 1..{MAX_DATA} bytes")
        checked.append(_Checked(item, card, sd, envelope, length))
    return _store(bank, checked, actor)


def _instances_awaited(sd: SecurityDomain) -> set[str]:
    """The instances the pending enrollment of ``sd`` installs (a new or replacement card): data for
    them may be given ahead, and is delivered right after them in the same presentation."""
    jobs = CardJob.objects.filter(security_domain=sd, kind=CardJob.Kind.ENROLL_BANK, state__in=CardJob.OPEN_STATES)
    return {
        str(spec.get("instance_aid", "")).upper()
        for job in jobs
        for spec in (job.params or {}).get("default_applets") or []
        if isinstance(spec, dict)
    }


@transaction.atomic
def _store(bank: Organization, checked: list[_Checked], actor: User) -> list[Personalization]:
    records = []
    jobs: dict[int, CardJob] = {}
    for entry in checked:
        sd = entry.security_domain
        Personalization.objects.filter(
            security_domain=sd, instance_aid=entry.item.instance_aid, state=Personalization.State.PENDING
        ).update(state=Personalization.State.SUPERSEDED)
        job = jobs.get(sd.pk)
        if job is None:
            job = jobs[sd.pk] = _personalization_job(sd, actor=actor)
        digest = hashlib.sha256(entry.envelope).hexdigest()
        records.append(
            Personalization.objects.create(
                card=entry.card,
                security_domain=sd,
                instance_aid=entry.item.instance_aid,
                envelope=entry.envelope,
                envelope_sha256=digest,
                data_length=entry.data_length,
                job=job,
                created_by=actor,
            )
        )
        record_event(
            action="personalization.submitted",
            subject_type="applet_instance",
            subject_id=entry.item.instance_aid,
            card_cin=entry.card.cin,
            actor=actor,
            organization=bank,
            details={"envelope_sha256": digest, "length": entry.data_length, "job": job.pk},
        )
    return records


def recent_for(bank: Organization, limit: int = 50) -> list[Personalization]:
    """The bank's latest personalisation records (no envelope read: the page shows hashes)."""
    return list(
        Personalization.objects.filter(security_domain__organization=bank)
        .select_related("card")
        .defer("envelope")
        .order_by("-created_at")[:limit]
    )


def pending_for(sd: SecurityDomain) -> list[Personalization]:
    return list(
        Personalization.objects.filter(security_domain=sd, state=Personalization.State.PENDING).order_by("instance_aid")
    )


def _personalization_job(sd: SecurityDomain, *, actor: User | None, **params: Any) -> CardJob:
    """The SD's pending personalisation job, or a new one queued after its other work."""
    from cards.services import queue_job

    pending = CardJob.objects.filter(
        security_domain=sd, kind=CardJob.Kind.PERSONALIZE, state=CardJob.State.PENDING
    ).first()
    return pending or queue_job(
        card=sd.card,
        kind=CardJob.Kind.PERSONALIZE,
        organization=sd.organization,
        actor=actor,
        security_domain=sd,
        params={"ssd_aid": sd.aid, **params},
    )


def requeue_after_reinstall(sd_id: int, instance_aids: list[str]) -> CardJob | None:
    """A package was deleted and installed again (the card has no ELF upgrade): queue the last
    delivered data of its instances again, in a personalisation job after the current one."""
    sd = SecurityDomain.objects.select_related("card", "organization").get(pk=sd_id)
    delivered = Personalization.objects.filter(
        security_domain=sd, instance_aid__in=instance_aids, state=Personalization.State.DELIVERED
    )
    if not delivered.exists():
        return None
    job = _personalization_job(sd, actor=None, after_reinstall=sorted(instance_aids))
    redeliver_latest(sd, instance_aids, job)
    return job


def redeliver_latest(sd: SecurityDomain, instance_aids: list[str], job: CardJob) -> int:
    """Queue again the last delivered data of ``instance_aids`` (a package deleted and reinstalled
    where the card has no ELF upgrade): the same sealed envelopes, nothing new asked of the bank."""
    count = 0
    for aid in instance_aids:
        latest = (
            Personalization.objects.filter(
                security_domain=sd, instance_aid=aid, state=Personalization.State.DELIVERED
            ).first()  # ordering: newest first
        )
        if (
            latest is None
            or Personalization.objects.filter(
                security_domain=sd, instance_aid=aid, state=Personalization.State.PENDING
            ).exists()
        ):
            continue
        Personalization.objects.create(
            card_id=latest.card_id,
            security_domain=sd,
            instance_aid=aid,
            envelope=bytes(latest.envelope),
            envelope_sha256=latest.envelope_sha256,
            data_length=latest.data_length,
            job=job,
        )
        count += 1
    return count


def store_data_blocks(record: Personalization) -> int:
    return max(1, math.ceil(record.data_length / STORE_DATA_BLOCK))


def mark_delivered(record_ids: list[int]) -> None:
    Personalization.objects.filter(pk__in=record_ids, state=Personalization.State.PENDING).update(
        state=Personalization.State.DELIVERED, delivered_at=timezone.now()
    )


class SsdPersonalize(BankSsdStage):
    """INSTALL [for personalization] and STORE DATA of each pending instance's data, built by the
    bank's key service from the sealed envelope inside its channel (it alone can open it)."""

    name = "personalize"
    status_p1 = (STATUS_APPS,)

    def key_choices(self) -> list[KeyChoice]:
        if not self.delegated():
            raise JobFailed("personalisation data goes only through the bank's key service (an SCP11 domain)")
        return super().key_choices()

    def records(self) -> list[Personalization]:
        return pending_for(self.job_sd())

    def script(self, registry: Registry, channel: Any) -> list[Command]:
        script: list[Command] = []
        for record in self.records():
            aid = record.instance_aid
            if registry.app(aid) is None:
                raise JobFailed(f"applet {aid} is not on the card: install it before personalising it")
            script.append(
                Command(commands.install_for_personalization(bytes.fromhex(aid)), f"personalise {aid}: select")
            )
            blocks = store_data_blocks(record)
            envelope = base64.b64encode(bytes(record.envelope)).decode("ascii")
            for number in range(blocks):
                last = number == blocks - 1
                script.append(
                    Command(
                        b"",
                        f"personalise {aid}: data block {number + 1}/{blocks} (opened by the bank's key service)",
                        service={
                            "store_data": {
                                "instance": aid,
                                "sealed": envelope,
                                "block": number,
                                "block_size": STORE_DATA_BLOCK,
                            }
                        },
                        proves=f"personalized-data:{aid}:{record.pk}" if last else None,
                    )
                )
        return script

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        delivered, missing = [], []
        for record in self.records():
            if f"personalized-data:{record.instance_aid}:{record.pk}" in registry.proofs:
                delivered.append(record.pk)
            else:
                missing.append(record.instance_aid)
        effects: list[Effect] = [PersonalizationDelivered(tuple(delivered))] if delivered else []
        if missing:
            raise Unconfirmed(
                f"the card did not confirm the personalisation of {', '.join(missing)} with an R-MAC",
                tuple(effects),
            )
        return effects
