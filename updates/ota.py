"""The over-the-air session runner and its stages: runs a card's pending jobs through batched APDU
scripts. The engine's pure part (phases and their one transition table, the protocol vocabulary,
the stages' effects) is :mod:`updates.engine`; this module reads what an exchange needs from the
database and custody, moves through the table, and writes what the card proved.

A card session moves through phases, one relay exchange each (DESIGN.md §6; ``updates.engine.phases``):

``identify``  SELECT ISD, GET DATA CPLC and CIN (plain: no secure channel yet), with the first
              stage's SELECT and INITIALIZE UPDATE when the credential's card can be presumed
``open``      SELECT the security domain, INITIALIZE UPDATE with the stage's key set
``status``    EXTERNAL AUTHENTICATE and GET STATUS (the card registry, for idempotent resume); on a
              job's first attempt also the script computed from the registry the records
              expect, and GET STATUS again to verify
``script``    the whole secured script of the stage, then GET STATUS again to verify

A single-stage job thus takes three HTTP exchanges, session open included; each further stage
two. A job is a list of *stages*; each stage is one secure channel with the security domain that
owns the content (the ISD to create or delete SSDs, the bank's SSD for its own keys and
applets). What a stage records comes only from the registry the card R-MAC'd after its script,
so a job interrupted anywhere — connection cut, card pulled, server restarted — resumes by doing
only what the card does not show as done (DESIGN.md §5.7), and a script computed from the
records' expectation can cost an exchange, never a wrong record. A cryptogram failure is never
retried: the session fails and the security domain's failure count goes up; at the stop
threshold the platform refuses to try again until an operator intervenes (cards block key sets
after a few failures).

Whose fault (``gp.errors``): a :class:`~gp.errors.RemoteProtocolError`, or a direction-free
:class:`~gp.errors.EncodingError` from parsing what the card sent, rejects the session
(:func:`_card_reply`). A :class:`~gp.errors.LocalProtocolError` is the engine misusing ``gp`` (or
a phase move the transition table does not hold): a bug, logged as one by
:meth:`SessionEngine.advance` and raised on; the card and the relay are not blamed for it (no
rejection, no failure count, no alert).

The engine's position (phase, stage, expectations of the batch in flight) is JSON in
``CardSession.engine_state``; the secure channel (session keys, MAC chaining value, counters)
is sealed in ``CardSession.sealed_channel`` (``issuers.custody.sealing``: a per-process data key
wrapped under the owning organisation's KEK).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import F, Model
from django.utils import timezone

from audit.services import record_event
from cards.emulation import token_verification_keyset
from cards.models import (
    ISD_AID,
    STORED_ISD_KEYS,
    AppletInstance,
    Card,
    CardJob,
    CardPackage,
    Enrollment,
    SecurityDomain,
)
from ecard.errors import ServiceError
from ecard.prepared_sql import FieldsUpdate, JoinedRead, statement_cursor
from gp import aids, commands, dap, dm
from gp.apdu import SW
from gp.cap import LoadFile
from gp.commands import SecurityDomainLifeCycle
from gp.errors import (
    AuthenticationError,
    LocalProtocolError,
    RemoteProtocolError,
)
from gp.keys import Algorithm as KeyAlgorithm
from gp.keys import StaticKeys, encode_put_key_symmetric
from gp.scp import SCP02, SCP03, SecuredResponse
from gp.scp11.constants import SCP11_ID
from gp.tlv import decode_all, find
from issuers import custody
from issuers.custody_models import KeySet
from issuers.key_services import registered_service
from issuers.models import BankKeyService, Organization
from updates import policy
from updates.delegation import SCP11_SD_KID, SCP11_SD_KVN, RemoteChannel, ServiceHeld
from updates.engine.effects import (
    AppletOnCard,
    CardLifecycle,
    CardValidityStored,
    Effect,
    InstancesReinstalled,
    IsdKeysRotated,
    PackageOnCard,
    PackagesGone,
    PersonalizationDelivered,
    RegistrySurveyed,
    SdKeyVersion,
    SdLifecycle,
    sd_lifecycle,
)
from updates.engine.phases import Event, Phase, next_phase
from updates.engine.protocol import (
    AUTH_FAILURE_STOP,
    BANK_KVN,
    FULL_SCP02_LEVEL,
    FULL_SCP03_LEVEL,
    HOST_CHALLENGE_LEN,
    INTEGRITY_SWS,
    ISD_KEY_SCHEMES,
    MAX_ATTEMPTS,
    STATUS_APPS,
    STATUS_ELF_MODULES,
    TOKEN_SCHEME,
    Batch,
    Command,
    InFlight,
    JobFailed,
    KeyChoice,
    NeedsProof,
    Registry,
    SessionRejected,
    StepFailed,
    Unconfirmed,
    _card_reply,
    expected_first,
    initialize_update_apdu,
    refused,
    sw_of,
)
from updates.models import AuthRefusal, Release
from updates.presentation import PresentationRefused, open_jobs_read, presentable_jobs, standing_refusal
from updates.signals import job_state_changed

__all__ = [  # the engine's vocabulary, re-exported for the modules that import it from here
    "AUTH_FAILURE_STOP",
    "BANK_KVN",
    "HOST_CHALLENGE_LEN",
    "ISD_KEY_SCHEMES",
    "MAX_ATTEMPTS",
    "STATUS_APPS",
    "STATUS_ELF_MODULES",
    "TOKEN_SCHEME",
    "UNAUTHENTICATED_READS",
    "Batch",
    "Command",
    "Event",
    "JobFailed",
    "KeyChoice",
    "NeedsProof",
    "Phase",
    "Registry",
    "SessionEngine",
    "SessionRejected",
    "StepFailed",
    "Unconfirmed",
    "complete_job",
    "ensure_bank_keyset",
    "expected_first",
    "fail_job",
    "initialize_update_apdu",
    "keyset_for",
    "refused",
    "retry_job",
    "sw_of",
]

logger = logging.getLogger(__name__)

HostChannel = SCP02 | SCP03 | RemoteChannel
BANK_SCP03_KVN = BANK_KVN[0x03]  # the bank's first SCP03 key set, put by its key service
SCP03_I_AFTER_SCP11 = 0x70  # an SD installed for SCP11 speaks SCP03 with the card's default i
INTERNAL_AUTHENTICATE = "internal authenticate"
KEY_INFORMATION = "read the SD's key information"


@dataclass(frozen=True)
class UnauthenticatedRead:
    """A place where the engine reads a status word that no R-MAC covers, and what it does then.
    None of them records progress or absence (DESIGN.md §7a); tests/updates/test_unauthenticated_sw.py
    checks that this table names every such place and drives a forging relay at each."""

    where: str  # the SessionEngine method
    command: str
    effect: str


UNAUTHENTICATED_READS = (
    UnauthenticatedRead(
        "_on_identify",
        "SELECT ISD, GET DATA CPLC and CIN (no channel yet), then the presumed card's SELECT and INITIALIZE UPDATE",
        "not 9000: the session is rejected; 9000: the CIN only names which keys to try, the card cryptogram proves "
        "it; the carried SELECT/INITIALIZE UPDATE answers are read as _on_open's, and only for the presumed card "
        "with the same first job and key choices (otherwise ignored)",
    ),
    UnauthenticatedRead(
        "_on_open",
        "SELECT of the stage's SD, INITIALIZE UPDATE (or GET DATA BF21 for SCP11b)",
        "SELECT not 9000: retried later; INITIALIZE UPDATE 6A88: the next key set is tried (only a verified "
        "card cryptogram opens a channel); anything else: retried later",
    ),
    UnauthenticatedRead(
        "_on_key_agreement",
        "INTERNAL AUTHENTICATE of SCP11b (after GET DATA BF21, whose chain the bank's key service checks)",
        "not 9000: retried later; 9000 proves nothing by itself: the bank's key service checks the receipt, the "
        "card's proof that it holds the SD key the agency's card CA certified (Amd F §3.1.2)",
    ),
    UnauthenticatedRead(
        "_on_status",
        "EXTERNAL AUTHENTICATE (a bare status word by design)",
        "9000 proves nothing until an R-MAC'd answer follows; a refusal counts once per reader and holds that reader",
    ),
    UnauthenticatedRead(
        "_collect_status",
        "GET STATUS answered 6A88",
        "the listing is unproven, never empty: absence needs an R-MAC'd listing or an R-MAC'd DELETE",
    ),
    UnauthenticatedRead(
        "_on_script",
        "any script command answered with an error status word",
        "expected (DELETE 6A88): no proof is recorded; unexpected: the session is rejected or the job retried",
    ),
)


# ---------------------------------------------------------------------------------------------
# stages


class Stage:
    """One secure channel of a job: which SD, which keys, what script given the registry."""

    name = "stage"
    status_p1: tuple[int, ...] = (STATUS_APPS,)
    # Whether computing the script may write records (a Delegated Management token it asks for):
    # then an optimistic script runs in a savepoint, so that one the card never sees leaves none.
    script_writes = True
    opened_with: KeyChoice  # the key choice that opened the channel: set by SessionEngine.stage()

    def __init__(self, job: CardJob) -> None:
        self.job = job
        self.card = job.card

    # -- channel
    def sd_aid(self) -> str:
        raise NotImplementedError

    def owner(self) -> Organization:
        """Whose keys open the channel (and whose KEK seals its state)."""
        raise NotImplementedError

    def key_choices(self) -> list[KeyChoice]:
        raise NotImplementedError

    def security_domain(self) -> SecurityDomain | None:
        """The record of the SD the channel opens, read once per exchange (a stage lives for one):
        the job's own security domain when the channel is with it (read with the job), else one
        query (no ordering: the model's default joins the card table to order by its CIN)."""
        if not hasattr(self, "_security_domain"):
            aid = self.sd_aid()
            job = self.job
            if CardJob.security_domain.is_cached(job) and job.security_domain is not None:
                job_sd = job.security_domain
                if (
                    job_sd.card_id == self.card.pk
                    and job_sd.aid == aid
                    and SecurityDomain.organization.is_cached(job_sd)
                ):
                    self._security_domain: SecurityDomain | None = job_sd
                    return job_sd
            card = self.card
            if aid == card.isd_aid and Card.issued_by.is_cached(card):
                # the ISD: its organisation is the card's issuer, read with the card (not joined again);
                # its record too when the card was read at identification in this exchange
                sd = getattr(card, _IDENTIFIED_ISD, None) or SD_BY_AID.first(card.pk, aid)
                if sd is not None and sd.organization_id == card.issued_by_id:
                    sd.organization = card.issued_by
            else:
                sd = SD_WITH_OWNER_BY_AID.first(card.pk, aid)  # one per card and AID
            self._security_domain = sd
        return self._security_domain

    def job_sd(self) -> SecurityDomain:
        """The bank security domain the job works on (see :func:`job_security_domain`)."""
        return job_security_domain(self.job)

    # -- script
    def script(self, registry: Registry, channel: HostChannel) -> list[Command]:
        raise NotImplementedError

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        """Judge the registry the card R-MAC'd after the script: what it proves for the records
        (applied by the runner in the exchange's transaction), or StepFailed/NeedsProof."""
        return []

    def preflight(self) -> None:
        """Checks before the channel opens; raise :class:`JobFailed` to fail the job for good."""


# What the engine reads with a job, in the same query: its card (and the card's issuer, whose keys
# open ISD channels), its security domain with the owning bank, and its organisation.
JOB_RELATED = ("card", "card__issued_by", "security_domain", "security_domain__organization", "organization")


# What the session engine reads with a job (its card is the session's, read with the session).
ENGINE_JOB_RELATED = ("security_domain", "security_domain__organization", "organization")

# The engine's hot reads, as prepared statements (ecard.prepared_sql): the ORM would compile each
# afresh on every exchange.
ENGINE_JOB_BY_ID: JoinedRead[CardJob] = JoinedRead(CardJob, ENGINE_JOB_RELATED, ("id",))
CARD_BY_CIN: JoinedRead[Card] = JoinedRead(Card, ("issued_by",), ("cin",))
# The card that identified itself with its issuer and its ISD record (the SD an ISD stage opens):
# one statement where CARD_BY_CIN and SD_BY_AID took two.
ISD_RECORDS_BY_CIN: JoinedRead[SecurityDomain] = JoinedRead(
    SecurityDomain, ("card", "card__issued_by"), ("card__cin", "is_isd")
)
SD_BY_AID: JoinedRead[SecurityDomain] = JoinedRead(SecurityDomain, (), ("card", "aid"))
SD_WITH_OWNER_BY_AID: JoinedRead[SecurityDomain] = JoinedRead(SecurityDomain, ("organization",), ("card", "aid"))
ISDS_OF_HOLDER: JoinedRead[SecurityDomain] = JoinedRead(
    SecurityDomain, ("card", "card__issued_by"), ("is_isd", "card__holder")
)
SD_LIFECYCLE_UPDATE: FieldsUpdate[SecurityDomain] = FieldsUpdate(SecurityDomain, ("lifecycle", "updated_at"))
JOB_STARTED: FieldsUpdate[CardJob] = FieldsUpdate(CardJob, ("attempts", "state", "started_at"))
JOB_FINISHED: FieldsUpdate[CardJob] = FieldsUpdate(CardJob, ("state", "finished_at", "last_error"))


def job_security_domain(job: CardJob) -> SecurityDomain:
    """The job's security domain. Every job kind that works on a bank's SSD is created with one
    (``cards.services``); a job without it cannot be done and fails for good."""
    sd = job.security_domain
    if sd is None:
        raise JobFailed(f"the {job.kind} job names no security domain")
    return sd


_IDENTIFIED_ISD = "_identified_isd_record"  # an attribute of the card instance of one exchange


def _identified_card(cin: str) -> Card | None:
    """The card of this CIN (unique) with its issuer, carrying its ISD record for
    :meth:`Stage.security_domain` (one statement); a card without an ISD record is read alone."""
    isds = ISD_RECORDS_BY_CIN.rows(cin, True)
    if not isds:
        return CARD_BY_CIN.first(cin)
    card = isds[0].card  # every row joins the same card
    isd = next((sd for sd in isds if sd.aid == card.isd_aid), None)
    if isd is not None:
        isd.card = card
        setattr(card, _IDENTIFIED_ISD, isd)
    return card


def isd_keyset(card: Card, kvn: int) -> KeySet | None:
    """The card's stored ISD key set of version ``kvn`` (active), if any."""
    return keyset_for(card.issued_by, card, card.isd_aid, kvn)


def isd_choice(card: Card) -> list[KeyChoice]:
    if card.key_scheme == STORED_ISD_KEYS:
        keyset = isd_keyset(card, card.isd_kvn)
        if keyset is None:
            raise JobFailed(f"no stored ISD key set of version {card.isd_kvn:02X} for card {card.cin}")
        return [KeyChoice("keyset", card.isd_kvn, keyset.pk)]
    return [KeyChoice("isd", card.isd_kvn)]


def keyset_for(org: Organization, card: Card, sd_aid: str, kvn: int) -> KeySet | None:
    return KeySet.objects.filter(
        organization=org,
        card_cin=card.cin,
        sd_aid=sd_aid,
        kvn=kvn,
        purpose=KeySet.Purpose.SCP_STATIC,
        state=KeySet.State.ACTIVE,
    ).first()


def ssd_initial_keyset(card: Card) -> KeySet | None:
    """The card's initial SSD key set, stored by the agency at personalisation."""
    return KeySet.objects.filter(
        organization=card.issued_by,
        card_cin=card.cin,
        sd_aid="",
        purpose=KeySet.Purpose.SCP_STATIC,
        state=KeySet.State.ACTIVE,
    ).first()


def ensure_bank_keyset(job: CardJob, sd: SecurityDomain, kvn: int) -> KeySet:
    """The bank's key set for its SSD on this card, generated in the bank's custody once (idempotent)."""
    existing = keyset_for(sd.organization, job.card, sd.aid, kvn)
    if existing is not None:
        return existing
    template = sd.organization.ssd_template
    return custody.generate_static_keys(
        sd.organization,
        algorithm="aes" if sd.scp == 0x03 else "3des",
        length=template.key_length if sd.scp == 0x03 else 16,
        kvn=kvn,
        card_cin=job.card.cin,
        sd_aid=sd.aid,
    )


class IsdStage(Stage):
    """A stage in a channel with the card's ISD (keys diversified from the agency's master)."""

    def sd_aid(self) -> str:
        return self.card.isd_aid

    def owner(self) -> Organization:
        return self.card.issued_by

    def key_choices(self) -> list[KeyChoice]:
        return isd_choice(self.card)


class BankSsdStage(Stage):
    """A stage in a channel with the job's bank SSD: with the bank's key service when the SSD was
    installed for SCP11 (issue 17: the keys are the bank's alone, updates.delegation), otherwise
    with key sets in the platform's custody (the bank's KEK seals the channel)."""

    def sd_aid(self) -> str:
        return self.job_sd().aid

    def owner(self) -> Organization:
        return self.job_sd().organization

    def delegated(self) -> bool:
        return self.job_sd().scp == SCP11_ID  # installed with 81 02 11 i: its keys are its bank's alone

    def key_service(self) -> BankKeyService:
        """The bank's key service of a delegated SSD; ServiceHeld when the bank has none active."""
        if not hasattr(self, "_key_service"):
            owner = self.owner()
            service = registered_service(owner)
            if service is None:
                raise ServiceHeld(f"{owner.name} has no active key service for its SCP11 security domain")
            self._key_service = service
        return self._key_service

    def key_choices(self) -> list[KeyChoice]:
        if self.delegated():
            self.key_service()
            return self.delegated_key_choices()
        return self.custody_key_choices()

    def delegated_key_choices(self) -> list[KeyChoice]:
        """The bank's SCP03 key set at its service: the version the card last proved."""
        sd = self.job_sd()
        return [KeyChoice("bank", sd.key_kvn if sd.key_kvn is not None else BANK_SCP03_KVN)]

    def custody_key_choices(self) -> list[KeyChoice]:
        raise NotImplementedError


class IsdInstallSsd(IsdStage):
    """INSTALL [for install and make selectable] of the bank's SSD from the SSD module in ROM (§11.5)."""

    name = "install-ssd"

    def script(self, registry: Registry, channel: HostChannel) -> list[Command]:
        sd = self.job_sd()
        if registry.app(sd.aid) is not None:
            return []
        return [Command(install_ssd_apdu(sd), f"create {sd.organization.name} security domain")]

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        sd = self.job_sd()
        entry = registry.app(sd.aid)
        if entry is None:
            raise StepFailed("the card does not list the new security domain")
        return [SdLifecycle(sd.pk, sd_lifecycle(entry.lifecycle))]


SSD_PACKAGE_AID = aids.SSD_PACKAGE_AID.hex().upper()
SSD_MODULE_AID = aids.SSD_MODULE_AID.hex().upper()


def install_ssd_apdu(sd: SecurityDomain) -> bytes:
    """INSTALL [for install and make selectable] of ``sd`` from the SSD module in ROM (§11.5)."""
    return commands.install_for_install(
        bytes.fromhex(SSD_PACKAGE_AID),
        bytes.fromhex(SSD_MODULE_AID),
        bytes.fromhex(sd.aid),
        privileges=bytes.fromhex(sd.privileges),
        params=commands.install_parameters(commands.sd_install_parameters(sd.scp, sd.scp_i)),
    )


class SsdBankKeys(BankSsdStage):
    """Replace the SSD's initial key set with the bank's keys (PUT KEY in a session with the SSD),
    so the agency never holds the bank's keys in clear (DESIGN.md §5.3)."""

    name = "bank-keys"

    def bank_kvn(self) -> int:
        return BANK_KVN[self.job_sd().scp]

    def delegated_key_choices(self) -> list[KeyChoice]:
        """SCP11b with the key pair the card generated for the SSD; on a later attempt the bank's
        SCP03 keys first, since an earlier session may have put them (its answers lost)."""
        enroll, bank = KeyChoice("scp11b", SCP11_SD_KVN), KeyChoice("bank", BANK_SCP03_KVN)
        return [bank, enroll] if self.job.attempts > 1 else [enroll, bank]

    def custody_key_choices(self) -> list[KeyChoice]:
        sd = self.job_sd()
        bank = ensure_bank_keyset(self.job, sd, self.bank_kvn())
        choices = [KeyChoice("keyset", bank.kvn, bank.pk)]
        initial = ssd_initial_keyset(self.card)
        if initial is not None:
            choices.append(KeyChoice("keyset", initial.kvn, initial.pk))
        return expected_first(choices, sd.key_kvn if sd.key_kvn == bank.kvn else None)

    def script(self, registry: Registry, channel: HostChannel) -> list[Command]:
        if self.delegated():
            return self.delegated_script()
        if self.opened_with.kvn == self.bank_kvn():
            # the bank's keys already open the SSD: PUT KEY happened in an earlier session
            return self.dap_key_script(may_exist=True)
        if isinstance(channel, RemoteChannel):
            raise LocalProtocolError("a custody key set in a channel of a bank's key service")
        sd = self.job_sd()
        bank = keyset_for(sd.organization, self.card, sd.aid, self.bank_kvn())
        if bank is None:  # key_choices() generated it before the channel opened
            raise JobFailed("the bank has no key set for this security domain")
        keys = custody.load_static_keys(bank)
        algorithm: KeyAlgorithm = "aes" if sd.scp == 0x03 else "des"

        data = encode_put_key_symmetric(bank.kvn, keys, channel.encrypt_key, algorithm=algorithm)
        # encode_put_key_symmetric starts with the new KVN, which put_key writes itself (§11.8.2.3).
        apdu = commands.put_key(bank.kvn, data[1:], old_kvn=self.opened_with.kvn, key_id=0x01)
        return [Command(apdu, f"install {sd.organization.name} keys"), *self.dap_key_script(may_exist=False)]

    def dap_key_script(self, *, may_exist: bool) -> list[Command]:
        """PUT KEY of the bank's DAP verification key at KVN 73 (GPC 2.3.1 §11.8, gp.dap) when
        the SSD was created with DAP Verification. ``may_exist``: an earlier session may have put
        it (its answer lost); the card's 6A80 to adding it again proves nothing and is let pass,
        since the card itself checks every later load's DAP with the key it holds."""
        sd = self.job_sd()
        if not self.job.params.get("dap_key"):
            return []
        expect = (SW.SUCCESS, SW.WRONG_DATA) if may_exist else (SW.SUCCESS,)
        label = f"install {sd.organization.name}'s code signing (DAP) key"
        if self.delegated():
            return [Command(b"", label + " (from its key service)", expect, service={"put_dap_key": {}})]
        from issuers.code_signing import bank_dap_point

        point = bank_dap_point(sd.organization)
        if point is None:
            raise JobFailed(f"{sd.organization.name} has no DAP key set, but its security domain verifies DAP")
        data = dap.put_key_data(point)
        return [Command(commands.put_key(dap.DAP_KVN, data[1:], key_id=dap.DAP_KEY_ID, multiple=False), label, expect)]

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        if self.delegated():
            return self.delegated_finish(registry)
        return [SdKeyVersion(self.job_sd().pk, self.bank_kvn())]

    def _personalize(self, *, may_be_done: bool) -> Command:
        sd = self.job_sd()
        # SET STATUS P1 40 of the SD itself, to PERSONALIZED (GP 2.3.1 §11.10, §5.3.2): it closes
        # the SCP11b window, after which only the bank's keys change the SSD (docs/scp11.md).
        apdu = commands.set_status(0x40, SecurityDomainLifeCycle.PERSONALIZED, bytes.fromhex(sd.aid))
        expect = (SW.SUCCESS, SW.CONDITIONS_NOT_SATISFIED) if may_be_done else (SW.SUCCESS,)
        return Command(apdu, "personalize the security domain", expect, proves=f"personalized:{sd.aid}")

    def delegated_script(self) -> list[Command]:
        """In SCP11b: PUT KEY of the bank's SCP03 keys, built by its service under the session DEK,
        then PERSONALIZED. Opened with the bank's keys (a resumed enrollment): PERSONALIZED only."""
        sd = self.job_sd()
        if self.opened_with.kind == "bank":
            if sd.lifecycle == SecurityDomain.Lifecycle.PERSONALIZED:
                return self.dap_key_script(may_exist=True)
            return [*self.dap_key_script(may_exist=True), self._personalize(may_be_done=True)]
        put_key = Command(
            b"",
            f"install {sd.organization.name} keys (built by its key service)",
            service={"put_key": {"kvn": BANK_SCP03_KVN, "replace": 0}},
            proves=f"keys:{BANK_SCP03_KVN:02X}",
        )
        return [put_key, *self.dap_key_script(may_exist=False), self._personalize(may_be_done=False)]

    def delegated_finish(self, registry: Registry) -> list[Effect]:
        """The bank's keys are proven by an R-MAC'd 9000 to PUT KEY, or by the channel itself when
        the bank's service opened it with them (it verified the card cryptogram)."""
        sd = self.job_sd()
        if self.opened_with.kind != "bank" and f"keys:{BANK_SCP03_KVN:02X}" not in registry.proofs:
            raise StepFailed("the card did not confirm the bank's keys with an R-MAC")
        effects: list[Effect] = [SdKeyVersion(sd.pk, BANK_SCP03_KVN)]
        if f"personalized:{sd.aid}" in registry.proofs:
            effects.append(SdLifecycle(sd.pk, str(SecurityDomain.Lifecycle.PERSONALIZED)))
        return effects

    opened_with: KeyChoice


class SsdInstallApplets(BankSsdStage):
    """LOAD and INSTALL the bank's applets into its SSD, each operation with an agency DM token."""

    name = "install-applets"
    status_p1 = (STATUS_APPS, STATUS_ELF_MODULES)

    def custody_key_choices(self) -> list[KeyChoice]:
        sd = self.job_sd()
        bank = keyset_for(sd.organization, self.card, sd.aid, BANK_KVN[sd.scp])
        if bank is None:
            raise JobFailed("the bank has no key set for this security domain")
        return [KeyChoice("keyset", bank.kvn, bank.pk)]

    def preflight(self) -> None:
        sd = self.job_sd()
        if sd.management != "dm":
            return

        try:
            policy.check_security_domain(
                card=self.card, security_domain=sd, operation=f"session:{self.job.kind}", job=self.job
            )
        except policy.TokenDenied as exc:
            raise JobFailed(str(exc)) from exc

    def applets(self) -> list[dict[str, Any]]:
        return list(self.job.params.get("applets") or self.job.params.get("default_applets") or [])

    def script(self, registry: Registry, channel: HostChannel) -> list[Command]:
        sd = self.job_sd()
        script: list[Command] = []
        for spec in self.applets():
            release = Release.objects.get(pk=spec["release"])
            instance_aid = spec["instance_aid"].upper()
            module_aid = spec.get("module_aid", "").upper() or release.applet_aids[0]
            if registry.app(instance_aid) is not None and registry.elf(release.package_aid) is not None:
                continue  # already installed (resume)
            if registry.elf(release.package_aid) is None:
                script += load_script(self.card, sd, release, channel)
            script.append(
                install_command(
                    self.card,
                    sd,
                    release.package_aid,
                    module_aid,
                    instance_aid,
                    release=release,
                    privileges=str(spec.get("privileges") or ""),
                    install_params=str(spec.get("install_params") or ""),
                )
            )
        return script

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        sd = self.job_sd()
        effects: list[Effect] = []
        for spec in self.applets():
            release = Release.objects.get(pk=spec["release"])
            effects.append(PackageOnCard(sd.pk, release.package_aid, release.package_version))
            instance_aid = spec["instance_aid"].upper()
            entry = registry.app(instance_aid)
            if entry is None:
                raise StepFailed(f"applet {instance_aid} is not on the card after installation", tuple(effects))
            module_aid = spec.get("module_aid", "").upper() or release.applet_aids[0]
            effects.append(AppletOnCard(sd.pk, instance_aid, release.package_aid, release.package_version, module_aid))
        return effects


def package_details(sd: SecurityDomain, release: Any, instances: list[str] | None = None) -> dict[str, Any]:
    """What an audit entry says about a package the platform loaded: the release, its version, the
    SHA-256 of the Load File Data Block it sent (the hash of INSTALL [for load]) and the security
    domain it went into. No key material, no personal data."""
    details: dict[str, Any] = {
        "release": release.pk,
        "version": release.package_version,
        "package_aid": release.package_aid,
        "load_file_hash": release.lfdb_sha256.lower(),
        "sd_aid": sd.aid,
    }
    if instances is not None:
        details["instances"] = sorted(aid.upper() for aid in instances)
    return details


def _token_signer(card: Card) -> Any:
    return custody.load_private_key(token_verification_keyset(card.issued_by))


def with_token(card: Card, sd: SecurityDomain, apdu: bytes) -> bytes:
    """Attach the agency's Delegated Management token when the SSD has the DM privilege (§9.2.2)."""
    if sd.management != "dm":
        return apdu

    try:
        policy.authorize(card=card, security_domain=sd, command=apdu)
    except policy.TokenDenied as exc:
        raise JobFailed(str(exc)) from exc
    token = dm.sign_token(_token_signer(card), dm.token_data_for_command(apdu), TOKEN_SCHEME)
    return dm.attach_token(apdu, token)


def load_script(card: Card, sd: SecurityDomain, release: Any, channel: HostChannel) -> list[Command]:
    """INSTALL [for load] with the LFDB hash, then LOAD blocks sized for the channel's overhead."""
    lf = LoadFile.from_bytes(bytes(release.cap_file), name=release.filename)
    lfdb = lf.load_file_data_block()
    digest = hashlib.sha256(lfdb).digest()
    install = commands.install_for_load(bytes.fromhex(release.package_aid), bytes.fromhex(sd.aid), digest)
    script = [Command(with_token(card, sd, install), f"prepare load of {release.package_aid}")]
    daps = dap_blocks(card, sd, release)
    blocks = commands.load_commands(lfdb, channel.max_data_length(), dap_blocks=daps)
    for number, block in enumerate(blocks):
        last = number == len(blocks) - 1
        receipt = (
            {"op": "load", "fields": [release.package_aid, sd.aid], "package": package_details(sd, release)}
            if last and sd.management == "dm"
            else None
        )
        script.append(
            Command(
                block,
                f"load block {number + 1}/{len(blocks)}",
                receipt=receipt,
                dap_checked=last and (bool(daps) or card.mandated_dap),
            )
        )
    return script


def verifies_dap(sd: SecurityDomain) -> bool:
    """Whether the SD was created with DAP Verification (GPC 2.3.1 §11.1.2, Table 11-7)."""
    return commands.Privileges.DAP_VERIFICATION in commands.Privileges.from_bytes(bytes.fromhex(sd.privileges))


def dap_blocks(card: Card, sd: SecurityDomain, release: Any) -> list[tuple[bytes, bytes]]:
    """The DAP blocks before the LFDB (GPC 2.3.1 §11.6.2.3): the bank's signature for its SSD
    when the SSD verifies DAP, the agency's for the ISD (Mandated DAP) when the release carries
    one. The card checks them; the platform only carries them."""
    from updates.release_gate import Signature, obtain_bank_signature
    from updates.selectors import release_dap_blocks

    verifies = verifies_dap(sd)
    if verifies and obtain_bank_signature(release) != Signature.VALID:
        raise JobFailed(
            f"release {release.package_aid} v{release.package_version} carries no valid DAP signature of "
            f"{sd.organization.name}, whose security domain on this card verifies one"
        )
    out = []
    for signer, signature in release_dap_blocks(release):
        if signer == "bank" and verifies:
            out.append((bytes.fromhex(sd.aid), signature))
        elif signer == "agency":
            out.append((bytes.fromhex(card.isd_aid), signature))
    return out


def install_command(
    card: Card,
    sd: SecurityDomain,
    elf_aid: str,
    module_aid: str,
    instance_aid: str,
    *,
    release: Any = None,
    privileges: str = "",
    install_params: str = "",
) -> Command:
    """INSTALL [for install and make selectable] (§11.5.2.3.2) with the bank's application
    privileges (1 or 3 bytes, §11.1.2) and application-specific parameters (the value of ``C9``,
    §11.5.2.3.7), as its template or campaign gave them (validated there: no SD privileges)."""
    apdu = commands.install_for_install(
        bytes.fromhex(elf_aid),
        bytes.fromhex(module_aid),
        bytes.fromhex(instance_aid),
        privileges=bytes.fromhex(privileges or "00"),
        params=commands.install_parameters(bytes.fromhex(install_params)),
    )
    receipt: dict[str, Any] | None = None
    if sd.management == "dm":
        receipt = {"op": "install", "fields": [elf_aid, instance_aid]}
        if release is not None:
            receipt["package"] = package_details(sd, release, [instance_aid])
    return Command(with_token(card, sd, apdu), f"install applet {instance_aid}", receipt=receipt)


def delete_command(aid: str, label: str, *, may_be_absent: bool, receipt: dict[str, Any] | None = None) -> Command:
    """DELETE with related objects (§11.2.2.1, P2 80). When the listing did not prove ``aid``
    absent, ``6A88`` is accepted too so the batch goes on; being unauthenticated, it proves
    nothing (only an R-MAC'd 9000 adds the fact ``deleted:<aid>``)."""
    expect = (SW.SUCCESS, SW.REFERENCED_DATA_NOT_FOUND) if may_be_absent else (SW.SUCCESS,)
    return Command(
        commands.delete(bytes.fromhex(aid), related=True), label, expect, receipt=receipt, proves=f"deleted:{aid}"
    )


class IsdDeleteSsd(IsdStage):
    """DELETE the bank's SSD with its related objects (§11.2: P2 80), from the ISD.

    Done only when the card proved the SSD gone: an R-MAC'd 9000 to the DELETE, or an R-MAC'd
    listing without it. When the card has no other application its listing is a bare ``6A88``
    and an earlier session's DELETE answer may have been lost; then the SSD's absence is proven
    by a probe whose answers carry R-MACs: INSTALL of the same AID (accepted only if the AID is
    free) and DELETE of what it created.
    """

    name = "delete-ssd"

    def script(self, registry: Registry, channel: HostChannel) -> list[Command]:
        sd = self.job_sd()
        if registry.app_absent(sd.aid):
            return []
        if registry.app(sd.aid) is not None:
            return [delete_command(sd.aid, f"delete {sd.aid} and its content", may_be_absent=False)]
        return [delete_command(sd.aid, f"delete {sd.aid} if present", may_be_absent=True)]

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        sd = self.job_sd()
        if registry.app(sd.aid) is not None:
            raise StepFailed("the security domain is still on the card")
        if registry.app_absent(sd.aid):
            return []  # the job's completion records the removal (complete_job)
        raise NeedsProof(
            [
                Command(install_ssd_apdu(sd), f"probe: {sd.aid} is free", proves=f"free:{sd.aid}"),
                delete_command(sd.aid, f"probe: delete {sd.aid}", may_be_absent=False),
            ]
        )


class SsdRotateKeys(BankSsdStage):
    """PUT KEY a fresh key set (next KVN) into the bank's SSD in a session opened with the current one."""

    name = "rotate-keys"

    def target_kvn(self) -> int:
        return int(self.job.params["to_kvn"])

    def delegated_key_choices(self) -> list[KeyChoice]:
        sd = self.job_sd()
        choices = [KeyChoice("bank", self.target_kvn())]
        if self.job.params.get("from_kvn") is not None:
            choices.append(KeyChoice("bank", int(self.job.params["from_kvn"])))
        return expected_first(choices, sd.key_kvn)

    def custody_key_choices(self) -> list[KeyChoice]:
        sd = self.job_sd()
        choices = []
        new = ensure_bank_keyset(self.job, sd, self.target_kvn())
        choices.append(KeyChoice("keyset", new.kvn, new.pk))
        old = keyset_for(sd.organization, self.card, sd.aid, int(self.job.params["from_kvn"]))
        if old is not None:
            choices.append(KeyChoice("keyset", old.kvn, old.pk))
        return expected_first(choices, sd.key_kvn)

    def script(self, registry: Registry, channel: HostChannel) -> list[Command]:
        if self.opened_with.kvn == self.target_kvn():
            return []
        sd = self.job_sd()
        if self.delegated():
            # the bank's service derives the new key set and builds PUT KEY under the session DEK
            return [
                Command(
                    b"",
                    f"rotate keys to version {self.target_kvn():02X} (at the bank's key service)",
                    service={"put_key": {"kvn": self.target_kvn(), "replace": self.opened_with.kvn}},
                )
            ]
        if isinstance(channel, RemoteChannel):
            raise LocalProtocolError("a custody key set in a channel of a bank's key service")
        new = keyset_for(sd.organization, self.card, sd.aid, self.target_kvn())
        if new is None:  # key_choices() generated it before the channel opened
            raise JobFailed("the bank has no key set of the new version for this security domain")

        data = encode_put_key_symmetric(
            new.kvn, custody.load_static_keys(new), channel.encrypt_key, algorithm="aes" if sd.scp == 3 else "des"
        )
        apdu = commands.put_key(new.kvn, data[1:], old_kvn=self.opened_with.kvn, key_id=0x01)
        return [Command(apdu, f"rotate keys to version {new.kvn:02X}")]

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        sd = self.job_sd()
        old_kvn = sd.key_kvn
        new_kvn = self.target_kvn()
        return [SdKeyVersion(sd.pk, new_kvn, old_kvn if old_kvn is not None and old_kvn != new_kvn else None)]

    opened_with: KeyChoice


class IsdSetStatus(IsdStage):
    """SET STATUS of the bank's SSD to LOCKED or back to PERSONALIZED (§11.10, SD life cycle §5.3.2)."""

    name = "set-status"
    script_writes = False  # SET STATUS by the ISD: no token, nothing recorded before the card answers

    def locking(self) -> bool:
        return self.job.kind == CardJob.Kind.LOCK_SD

    def script(self, registry: Registry, channel: HostChannel) -> list[Command]:
        sd = self.job_sd()
        entry = registry.app(sd.aid)
        if entry is None:
            raise StepFailed("the security domain is not on the card")
        locked = bool(entry.lifecycle & commands.LOCKED_BIT)
        if locked == self.locking():
            return []
        # P1 60: the SD and its associated applications; P2 80 locks, 00 unlocks (§11.10.2).
        apdu = commands.set_status(
            commands.SET_STATUS_SD_AND_APPS, commands.LOCKED_BIT if self.locking() else 0x00, bytes.fromhex(sd.aid)
        )
        return [Command(apdu, "lock" if self.locking() else "unlock")]

    def finish(self, registry: Registry, key: KeyChoice) -> list[Effect]:
        sd = self.job_sd()
        entry = registry.app(sd.aid)
        if entry is None or bool(entry.lifecycle & commands.LOCKED_BIT) != self.locking():
            raise StepFailed("the card does not show the new lock state")
        lifecycle = SecurityDomain.Lifecycle.LOCKED if self.locking() else SecurityDomain.Lifecycle.PERSONALIZED
        return [SdLifecycle(sd.pk, str(lifecycle))]


SD_LIFECYCLE_BYTES: dict[str, int] = {
    SecurityDomain.Lifecycle.INSTALLED: SecurityDomainLifeCycle.INSTALLED,
    SecurityDomain.Lifecycle.SELECTABLE: SecurityDomainLifeCycle.SELECTABLE,
    SecurityDomain.Lifecycle.PERSONALIZED: SecurityDomainLifeCycle.PERSONALIZED,
    SecurityDomain.Lifecycle.LOCKED: SecurityDomainLifeCycle.PERSONALIZED | commands.LOCKED_BIT,
}


def expected_registry(stage: Stage) -> Registry:
    """The registry the platform's records say the card holds (GET STATUS P1 40 and 10 as the
    card would list them): its live SSDs, applet instances and load files. Only ever used to
    compute a script ahead of the card's own listing, never as evidence (DESIGN.md §7a).
    One statement (the three tables' rows of the card, UNION ALL), sorted here by AID."""
    sds: list[tuple[str, str]] = []
    instances: list[tuple[str, str]] = []
    packages: list[tuple[str, str]] = []
    live = (SecurityDomain.State.ACTIVE, SecurityDomain.State.REMOVING)
    cursor = statement_cursor(connection)
    cursor.execute(_registry_sql(), [stage.card.pk, *live, stage.card.pk, stage.card.pk])
    for kind, aid, other in cursor.fetchall():
        (sds, instances, packages)[kind].append((aid, other))
    apps = [
        commands.RegistryEntry(
            bytes.fromhex(aid), SD_LIFECYCLE_BYTES.get(lifecycle, SecurityDomainLifeCycle.PERSONALIZED), kind="sd"
        )
        for aid, lifecycle in sorted(sds)
    ]
    apps += [
        commands.RegistryEntry(bytes.fromhex(aid), 0x07, elf_aid=bytes.fromhex(elf)) for aid, elf in sorted(instances)
    ]
    elfs = [
        commands.RegistryEntry(bytes.fromhex(aid), 0x01, kind="elf", elf_version=_version_bytes(version))
        for aid, version in sorted(packages)
    ]
    return Registry(apps=apps, elfs=elfs, proven_listings=frozenset(stage.status_p1))


@functools.cache
def _registry_sql() -> str:
    """The records of one card's registry in one statement: (0, SD AID, life cycle) of its live
    bank SSDs, (1, instance AID, package AID) of its applet instances, (2, package AID, version)
    of its load files. Names from the models' metadata."""
    sd, instance, package = SecurityDomain._meta, AppletInstance._meta, CardPackage._meta

    def col(meta: Any, name: str) -> str:
        return connection.ops.quote_name(meta.get_field(name).column)

    sd_table = connection.ops.quote_name(sd.db_table)
    sd_id, sd_card = col(sd, "id"), col(sd, "card")
    # identifiers from the models' metadata; every value is a bound parameter
    return (
        f"SELECT 0, {col(sd, 'aid')}, {col(sd, 'lifecycle')} FROM {sd_table} "  # noqa: S608
        f"WHERE {sd_card} = %s AND NOT {col(sd, 'is_isd')} AND {col(sd, 'state')} IN (%s, %s) "
        f"UNION ALL SELECT 1, i.{col(instance, 'instance_aid')}, i.{col(instance, 'package_aid')} "
        f"FROM {connection.ops.quote_name(instance.db_table)} i JOIN {sd_table} s "
        f"ON i.{col(instance, 'security_domain')} = s.{sd_id} WHERE s.{sd_card} = %s "
        f"UNION ALL SELECT 2, p.{col(package, 'package_aid')}, p.{col(package, 'package_version')} "
        f"FROM {connection.ops.quote_name(package.db_table)} p JOIN {sd_table} s "
        f"ON p.{col(package, 'security_domain')} = s.{sd_id} WHERE s.{sd_card} = %s"
    )


def _supersede_open_sessions(session_model: type[Model], card_id: int, session_id: Any) -> None:
    """Close the card's other open sessions (expired, channel state dropped), as one prepared
    UPDATE: every identification runs it, and it usually matches nothing."""
    own_id = session_model._meta.get_field("id").get_db_prep_value(session_id, connection)  # type: ignore[union-attr]
    statement_cursor(connection).execute(
        _supersede_sql(session_model), ["expired", "superseded by a new presentation", card_id, "open", own_id]
    )


@functools.cache
def _supersede_sql(session_model: type[Model]) -> str:
    meta = session_model._meta
    quote = connection.ops.quote_name

    def col(name: str) -> str:
        return quote(str(meta.get_field(name).column))  # type: ignore[union-attr]

    return (
        f"UPDATE {quote(meta.db_table)} SET {col('state')} = %s, {col('closed_reason')} = %s, "  # noqa: S608
        f"{col('sealed_channel')} = NULL WHERE {col('card')} = %s AND {col('state')} = %s AND {col('id')} <> %s"
    )


def _version_bytes(version: str) -> bytes | None:
    try:
        major, minor = (int(x) for x in version.split("."))
        return bytes((major, minor))
    except ValueError:
        return None


def apply_effects(stage: Stage, effects: Iterable[Effect]) -> None:
    """Record what a stage's verified outcome proves (``updates.engine.effects``), inside the
    exchange's transaction; the job's security domain object follows what is written."""
    now = timezone.now()
    sd = stage.job.security_domain
    for effect in effects:
        if isinstance(effect, SdLifecycle):
            if sd is not None and sd.pk == effect.sd:
                sd.lifecycle = effect.lifecycle
                SD_LIFECYCLE_UPDATE.save(sd)  # the job's own SD (the usual case): a prepared UPDATE
            else:
                SecurityDomain.objects.filter(pk=effect.sd).update(lifecycle=effect.lifecycle, updated_at=now)
        elif isinstance(effect, SdKeyVersion):
            SecurityDomain.objects.filter(pk=effect.sd).update(key_kvn=effect.kvn, updated_at=now)
            if sd is not None and sd.pk == effect.sd:
                sd.key_kvn = effect.kvn
            if effect.supersedes is not None:
                target = SecurityDomain.objects.values_list("organization_id", "aid").get(pk=effect.sd)
                KeySet.objects.filter(
                    organization_id=target[0], card_cin=stage.card.cin, sd_aid=target[1], kvn=effect.supersedes
                ).update(state=KeySet.State.SUPERSEDED, rotated_at=now)
        elif isinstance(effect, PackageOnCard):
            CardPackage.objects.update_or_create(
                security_domain_id=effect.sd,
                package_aid=effect.package_aid,
                defaults={"package_version": effect.version},
            )
        elif isinstance(effect, AppletOnCard):
            AppletInstance.objects.update_or_create(
                security_domain_id=effect.sd,
                instance_aid=effect.instance_aid,
                defaults={
                    "package_aid": effect.package_aid,
                    "package_version": effect.package_version,
                    "module_aid": effect.module_aid,
                    "lifecycle": AppletInstance.Lifecycle.SELECTABLE,
                },
            )
        elif isinstance(effect, PackagesGone):
            AppletInstance.objects.filter(security_domain_id=effect.sd, package_aid__in=effect.package_aids).delete()
            CardPackage.objects.filter(security_domain_id=effect.sd, package_aid__in=effect.package_aids).delete()
        elif isinstance(effect, PersonalizationDelivered):
            from updates.personalization import mark_delivered

            mark_delivered(list(effect.records))
        elif isinstance(effect, InstancesReinstalled):
            from updates.personalization import requeue_after_reinstall

            requeue_after_reinstall(effect.sd, list(effect.instance_aids))
        elif isinstance(effect, RegistrySurveyed):
            from updates.repair import record_survey

            record_survey(effect)
        elif isinstance(effect, IsdKeysRotated | CardValidityStored):
            from updates.renewal import record_renewal_effect

            record_renewal_effect(stage, effect)
        elif isinstance(effect, CardLifecycle):
            from updates.card_status import apply_card_lifecycle

            apply_card_lifecycle(stage.card, effect)


def stages_for(job: CardJob) -> list[type[Stage]]:
    kind = job.kind
    if kind == CardJob.Kind.ENROLL_BANK:
        stages: list[type[Stage]] = [IsdInstallSsd, SsdBankKeys]
        if job.params.get("default_applets"):
            stages.append(SsdInstallApplets)
        return stages
    if kind == CardJob.Kind.REMOVE_BANK:
        return [IsdDeleteSsd]
    if kind == CardJob.Kind.ROTATE_KEYS:
        return [SsdRotateKeys]
    if kind in (CardJob.Kind.LOCK_SD, CardJob.Kind.UNLOCK_SD):
        return [IsdSetStatus]
    if kind == CardJob.Kind.UPDATE_APPLET:
        from updates.plans import update_stages

        return update_stages(job)
    if kind == CardJob.Kind.PERSONALIZE:
        from updates.personalization import SsdPersonalize

        return [SsdPersonalize]
    if kind in (CardJob.Kind.SURVEY_CARD, CardJob.Kind.REPAIR_ISD):
        from updates.repair_stages import IsdDeleteUnknown, IsdSurvey

        return [IsdSurvey] if kind == CardJob.Kind.SURVEY_CARD else [IsdDeleteUnknown]
    if kind == CardJob.Kind.RENEW_CARD:
        from updates.renewal import IsdRenewCard

        return [IsdRenewCard]
    if kind == CardJob.Kind.CARD_STATUS:
        from updates.card_status import IsdCardStatus

        return [IsdCardStatus]
    raise JobFailed(f"no plan for job kind {kind}")


# ---------------------------------------------------------------------------------------------
# the session driver


def _entry_json(e: commands.RegistryEntry) -> dict[str, Any]:
    return {"aid": e.aid.hex().upper(), "lc": e.lifecycle, "elf": e.elf_aid.hex().upper() if e.elf_aid else None}


class SessionEngine:
    """Drives one :class:`updates.models.CardSession` from exchange to exchange.

    ``start()`` gives the first batch; ``advance(responses)`` takes the agent's responses to the
    batch in flight (already checked by the relay for order and completeness) and gives the next.
    """

    def __init__(self, session: Any) -> None:
        self.session = session
        self.state: dict[str, Any] = dict(session.engine_state or {})
        self._channel: HostChannel | None = None
        # answers of this exchange already unwrapped by a bank's key service, by id() of the raw answer
        self._remote_answers: dict[int, SecuredResponse | str] = {}
        self._static: Any = None  # static keys of the open channel (for PUT KEY's DEK)
        self._receipt_key: tuple[bytes, str] | None = None  # the card's receipt key, opened for this exchange
        self._jobs: dict[int, CardJob] = {}
        self._stages: dict[tuple[int, int], Stage] = {}

    # ---------------------------------------------------------------- public
    def start(self) -> Batch:
        self.state = {"phase": Phase.IDENTIFY.value, "jobs": [], "finished": [], "stage": 0}
        cmds = [
            Command(commands.select(bytes.fromhex(ISD_AID)), "select card manager", secure=False),
            Command(commands.get_data(0x9F7F), "read CPLC", secure=False),
            Command(commands.get_data(0x45), "read card image number", secure=False),
        ]
        cmds += self._predicted_open()
        return self._send(cmds)

    def _predicted_open(self) -> list[Command]:
        """The first stage's SELECT and INITIALIZE UPDATE, sent with the identification when the
        credential's holder has one live card with work for it (saves an exchange).

        Nothing here is trusted: the card's answers are used only if the card then identifies as
        the presumed one, with the same first job, and its cryptogram verifies with that card's
        keys (GP 2.3.1 §11.13: INITIALIZE UPDATE spends no authentication try). Otherwise they
        are ignored and the stage opens in its own exchange."""
        credential = self.session.credential
        if credential.user_id is None:
            return []  # a terminal presents any card: there is no card to presume
        # the first by CIN, chosen here (a holder has a card or two) rather than by an ORDER BY
        # the holder's live cards with their ISD records (the failure count), in one read
        isds = [isd for isd in ISDS_OF_HOLDER.rows(True, credential.user_id) if isd.card.is_live]
        isd = min(isds, key=lambda record: record.card.cin, default=None)
        if isd is None:
            return []
        card = isd.card
        try:
            jobs = presentable_jobs(credential, card, related=ENGINE_JOB_RELATED)
        except PresentationRefused:
            return []
        if not jobs:
            return []
        job = jobs[0]  # read with what the engine needs (ENGINE_JOB_RELATED)
        job.card = card  # the job is this card's (presentable_jobs): not read again
        try:
            stage = stages_for(job)[0](job)
            job_sd = job.security_domain
            if job_sd is not None and job_sd.aid == stage.sd_aid():
                failures: int | None = job_sd.auth_failures  # read with the job
            elif isd.aid == stage.sd_aid():  # the ISD (its record is read again once the card has identified)
                failures = isd.auth_failures
            else:
                record = SD_BY_AID.first(card.pk, stage.sd_aid())
                failures = record.auth_failures if record is not None else None
            if failures:
                return []  # the refusal rules of _open_stage speak first
            # Key choices, not the policy's preflight: that one speaks (and audits) once the card
            # has identified, in _open_stage.
            choices = stage.key_choices()
        except (JobFailed, StepFailed):
            return []  # said again, and acted on, once the card has identified
        # The SD is selected even when it is the ISD, which is already: the open phase's batch
        # stays the same whether it travels alone or after the identification.
        cmds = [
            Command(commands.select(bytes.fromhex(stage.sd_aid())), f"select {stage.sd_aid()}", secure=False),
            self._initialize_update(stage, choices[0], len(choices) > 1, keyless=True),
        ]
        self.state["predicted"] = {
            "card": card.pk,
            "job": job.pk,
            "choices": [c.to_json() for c in choices],
            "host_challenge": self.state.pop("host_challenge", None),
            "commands": len(cmds),
        }
        return cmds

    def advance(self, responses: list[bytes]) -> Batch:
        phase = self.state.get("phase")
        try:
            if self.state.get("channel") and phase in (Phase.STATUS, Phase.SCRIPT):
                self._unwrap_remotely(responses)
            if phase == Phase.IDENTIFY:
                return self._on_identify(responses)
            if phase == Phase.OPEN:
                return self._on_open(responses)
            if phase == Phase.STATUS:
                return self._on_status(responses)
            if phase == Phase.SCRIPT:
                return self._on_script(responses)
        except JobFailed as exc:
            self._fail_job(str(exc))
            return self._next_stage_or_job(advance_job=True)
        except ServiceHeld as exc:
            self._hold(str(exc))
            return self._done()
        except StepFailed as exc:
            self._retry_later(str(exc))
            return self._done()
        except LocalProtocolError as exc:
            # Nothing the card or the relay sent causes these: do not reject, count or alert.
            logger.exception(
                "OTA engine bug: gp refused the engine's own use of it (%s) in phase %r of card session %s",
                type(exc).__name__,
                phase,
                self.session.pk,
            )
            raise
        raise SessionRejected(f"no exchange expected in phase {phase!r}")

    def _unwrap_remotely(self, responses: list[bytes]) -> None:
        """One call to the bank's key service unwraps every secured answer of this exchange; the
        engine then reads them in order as it would from its own channel (see _unwrap)."""
        channel = self._restore_channel()
        if not isinstance(channel, RemoteChannel):
            raise LocalProtocolError("a remote channel state that restores as a local one")
        secured = [raw for raw, meta in zip(responses, self._in_flight(), strict=False) if meta.secure]
        for raw, answer in zip(secured, channel.unwrap_all(secured), strict=False):
            self._remote_answers[id(raw)] = answer

    # ---------------------------------------------------------------- helpers
    @property
    def card(self) -> Card:
        return self.session.card

    def job(self) -> CardJob:
        """The current job, read once per exchange (the engine lives for one exchange)."""
        job_id = self.state["jobs"][0]
        job = self._jobs.get(job_id)
        if job is None:
            job = ENGINE_JOB_BY_ID.first(job_id)
            if job is None:
                raise CardJob.DoesNotExist(f"card job {job_id}")
            card = self.session.card if type(self.session).card.is_cached(self.session) else None
            if card is not None and card.pk == job.card_id:
                job.card = card  # the session's card (read with it, its issuer too): not read again
            self._jobs[job_id] = job
        return job

    def stage(self) -> Stage:
        job = self.job()
        key = (job.pk, self.state["stage"])
        stage = self._stages.get(key)
        if stage is None:
            stage = stages_for(job)[self.state["stage"]](job)
            self._stages[key] = stage
        if "key" in self.state:
            stage.opened_with = KeyChoice.from_json(self.state["key"])
        return stage

    def _move(self, event: Event) -> None:
        """Change phase through the one transition table (updates.engine.phases.TRANSITIONS)."""
        self.state["phase"] = next_phase(self.state["phase"], event).value

    def _send(self, cmds: list[Command], *, event: Event | None = None) -> Batch:
        wire = []
        sent = []
        channel = self._channel
        secured = [cmd for cmd in cmds if cmd.secure]
        if secured and channel is None:
            raise LocalProtocolError(f"{secured[0].label}: a secured command with no channel open")
        # a bank's key service wraps the whole batch in one call
        remotely = iter(channel.wrap_all(secured)) if isinstance(channel, RemoteChannel) else None
        for cmd in cmds:
            apdu = cmd.apdu
            if cmd.service is not None and (remotely is None or not cmd.secure):
                raise LocalProtocolError(f"{cmd.label}: only a bank's key service builds this command")
            if cmd.secure:
                if remotely is not None:
                    apdu = next(remotely)
                elif channel is not None and not isinstance(channel, RemoteChannel):
                    apdu = channel.wrap(cmd.apdu)
            wire.append({"apdu": apdu.hex().upper(), "expect": [f"{sw:04X}" for sw in cmd.expect], "label": cmd.label})
            sent.append(InFlight.of(cmd).to_json())
        if event is not None:
            self._move(event)
        self.state["sent"] = sent
        self._save_channel()
        return Batch(commands=wire, progress=self.progress())

    def progress(self) -> dict[str, Any]:
        jobs = self.state.get("jobs", [])
        finished = self.state.get("finished", [])
        current = None
        if jobs and self.state.get("phase") not in (Phase.IDENTIFY, Phase.DONE):
            job = self.job()
            if job is not None:
                current = {
                    "id": job.pk,
                    "kind": job.kind,
                    "label": job.get_kind_display(),
                    "stage": self.state.get("stage", 0),
                    "stages": len(stages_for(job)),
                }
        return {
            "jobs_total": len(jobs) + len(finished),
            "jobs_finished": len(finished),
            "current": current,
            "phase": self.state.get("phase"),
        }

    def _save_channel(self) -> None:
        self.state.pop("channel", None)
        if isinstance(self._channel, RemoteChannel):
            # the bank's service sealed it under its own key: the platform stores it as it came
            self.session.sealed_channel = self._channel.sealed
            self.session.sealed_by = self.stage().owner()
            self.state["channel"] = {"remote": True, "max_data": self._channel.data_limit}
            return
        if self._channel is None or not self._channel.is_authenticated:
            self.session.sealed_channel = None
            self.session.sealed_by = None
            return
        owner = self.stage().owner()
        state: dict[str, Any] = dict(self._channel.session_state())
        if self._static is not None:
            # Sealed with the session keys, so the next exchange needs no second custody lookup.
            state["static"] = {
                "enc": self._static.enc.hex(),
                "mac": self._static.mac.hex(),
                "dek": self._static.dek.hex(),
                "version": self._static.version,
            }
        self.session.sealed_channel = custody.seal_channel_state(owner, state, context=str(self.session.id))
        self.session.sealed_by = owner

    def _restore_channel(self) -> HostChannel:
        if self._channel is not None:
            return self._channel
        if not self.session.sealed_channel or self.session.sealed_by is None:
            raise SessionRejected("no secure channel is open")
        remote = self.state.get("channel")
        if remote:
            stage = self.stage()
            if not isinstance(stage, BankSsdStage):
                raise LocalProtocolError("a key service's channel for a stage that is not the bank's")
            self._channel = RemoteChannel.restore(
                stage.key_service(),
                str(self.session.id),
                self.card.cin,
                stage.sd_aid(),
                bytes(self.session.sealed_channel),
                int(remote["max_data"]),
            )
            return self._channel
        try:
            state = custody.open_channel_state(
                self.session.sealed_by, bytes(self.session.sealed_channel), context=str(self.session.id)
            )
        except custody.CustodyError as exc:
            # A KEK rotation since the last exchange: the session restarts, as after any channel failure.
            raise SessionRejected(f"the secure channel state no longer opens ({exc})") from exc
        cls = SCP03 if self.state["scp"] == 0x03 else SCP02
        static = state.pop("static", None)
        if static is not None:
            self._static = StaticKeys(
                bytes.fromhex(static["enc"]),
                bytes.fromhex(static["mac"]),
                bytes.fromhex(static["dek"]),
                version=static["version"],
            )
        elif "key" in self.state:
            self._static = self._static_keys(KeyChoice.from_json(self.state["key"]))
        self._channel = cls.from_session_state(self._static, state)
        return self._channel

    def _static_keys(self, choice: KeyChoice) -> Any:
        """The static keys behind a key choice (the channel needs the DEK for PUT KEY)."""
        card = self.card
        if choice.kind == "isd":
            scheme = ISD_KEY_SCHEMES.get(card.key_scheme)
            if scheme is None:  # the same refusal card_isd_keys gives
                raise ServiceError(f"unknown diversification scheme {card.key_scheme!r}", field="scheme")
            return custody.card_isd_keys(card.issued_by, card.cin, bytes.fromhex(card.kdd), scheme)
        if choice.keyset_id is None:  # what get(pk=None) raised: a key-set choice always names one
            raise KeySet.DoesNotExist("the key choice names no key set")
        return custody.load_static_keys(KeySet.objects.get(pk=choice.keyset_id))

    def _unwrap(self, rapdu: bytes) -> SecuredResponse:
        channel = self._restore_channel()
        if isinstance(channel, RemoteChannel):
            answer = self._remote_answers.get(id(rapdu))
            if answer is None:
                raise LocalProtocolError("an answer the bank's key service was not asked to check")
            if isinstance(answer, str):
                raise SessionRejected(answer)
            return answer
        try:
            return channel.unwrap_response(rapdu)
        except RemoteProtocolError as exc:
            raise SessionRejected(f"response integrity check failed: {exc}") from exc

    # ---------------------------------------------------------------- identify
    def _on_identify(self, responses: list[bytes]) -> Batch:
        opening = responses[3:]
        responses = responses[:3]
        if len(responses) != 3 or any(sw_of(r) != SW.SUCCESS for r in responses):
            raise SessionRejected("the card did not identify itself (SELECT/GET DATA failed)")
        with _card_reply("the card's identification data is malformed"):
            # The CPLC is parsed to check its shape only: nothing read before the secure channel
            # is authenticated is stored.
            commands.parse_cplc(commands.tagged_value(responses[1][:-2], commands.TAG_CPLC))
            cin = commands.tagged_value(responses[2][:-2], commands.TAG_CIN).hex().upper()
        card = _identified_card(cin)
        try:
            # the jobs with what the engine needs, in the query that decides which may run
            presentable = presentable_jobs(self.session.credential, card, related=ENGINE_JOB_RELATED)
        except PresentationRefused as exc:
            raise SessionRejected(str(exc)) from exc
        jobs = [job.pk for job in presentable]
        if card is None:  # presentable_jobs refuses an unknown card; this narrows the type
            raise SessionRejected("this card is not registered")
        self.session.card = card
        # One presentation at a time: an earlier session of this card that was never finished
        # (card pulled, connection lost) is closed now; its jobs resume here.
        _supersede_open_sessions(type(self.session), card.pk, self.session.pk)
        now = timezone.now()
        first_attempts: set[int] = set()
        for job in presentable:
            job.card = card  # the card that identified (its jobs: presentable_jobs), not read again
            self._jobs[job.pk] = job  # the engine's copy for this exchange (see job())
            if job.attempts == 0:
                first_attempts.add(job.pk)
            job.attempts += 1
            job.state = CardJob.State.RUNNING
            job.started_at = job.started_at or now
            JOB_STARTED.save(job)
            record_event(
                action="job.attempt",
                subject_type="card_job",
                subject_id=job.pk,
                card_cin=card.cin,
                organization=job.organization,
                actor_type="agent",
                details={"kind": job.kind, "attempt": job.attempts, "session": str(self.session.id)},
            )
        self.state["jobs"] = jobs
        self.state["stage"] = 0
        self.state["optimistic"] = [pk for pk in jobs if pk in first_attempts]
        predicted = self.state.pop("predicted", None)
        if predicted and opening and predicted["card"] == card.pk and jobs and jobs[0] == predicted["job"]:
            return self._open_stage(predicted=predicted, opening=opening)
        return self._open_stage()

    # ---------------------------------------------------------------- open
    def _open_stage(self, *, predicted: dict[str, Any] | None = None, opening: list[bytes] | None = None) -> Batch:
        if not self.state["jobs"]:
            return self._done()
        stage = self.stage()
        sd = stage.security_domain()
        if sd is not None and sd.auth_failures >= AUTH_FAILURE_STOP:
            self._sd_event(
                "secure_channel.stopped",
                sd.aid,
                sd.organization,
                outcome="denied",
                reason=f"{sd.auth_failures} failed authentications: close to the card's limit",
            )
            self._fail_job(
                f"{sd.aid}: {sd.auth_failures} failed authentications; stopped before the card blocks the key set"
            )
            return self._next_stage_or_job(advance_job=True)
        if sd is not None and sd.auth_failures and self._reader_held(sd):
            self._retry_later(
                f"{sd.aid}: the last EXTERNAL AUTHENTICATE through this reader was refused; "
                "present the card through another reader"
            )
            return self._done()
        try:
            stage.preflight()
            choices = stage.key_choices()
        except JobFailed as exc:
            self._fail_job(str(exc))
            return self._next_stage_or_job(advance_job=True)
        self.state["key_index"] = 0
        self.state["choices"] = [c.to_json() for c in choices]
        # Whether the SD had refusals counted when this channel opened (see _card_authenticated).
        self.state["opened_with_refusals"] = bool(sd is not None and sd.auth_failures)
        self.state.pop("key", None)
        self._channel = None
        if predicted is not None and opening and predicted["choices"] == self.state["choices"]:
            # The identification batch carried this stage's SELECT and INITIALIZE UPDATE: their
            # answers are read as the open phase's (still unauthenticated, see _on_open).
            self.state["host_challenge"] = predicted["host_challenge"]
            self._move(Event.OPEN_STAGE)
            self.state["sent"] = self.state["sent"][3:]
            return self._on_open(opening)
        select = Command(commands.select(bytes.fromhex(stage.sd_aid())), f"select {stage.sd_aid()}", secure=False)
        return self._send(
            [select, self._initialize_update(stage, choices[0], len(choices) > 1)], event=Event.OPEN_STAGE
        )

    def _sd_event(
        self,
        action: str,
        sd_aid: str,
        organization: Organization,
        *,
        outcome: str,
        reason: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """An audit entry about a security domain of this card, from the platform itself."""
        record_event(
            action=action,
            subject_type="security_domain",
            subject_id=sd_aid,
            card_cin=self.card.cin,
            organization=organization,
            outcome=outcome,
            reason=reason,
            actor_type="system",
            details=details,
        )

    def _reader_held(self, sd: SecurityDomain) -> bool:
        """This reader saw the SD refuse an authentication since the card last proved the key set."""
        held = AuthRefusal.objects.filter(security_domain=sd, credential=self.session.credential).exists()
        if held:
            self._sd_event(
                "secure_channel.reader_held",
                sd.aid,
                sd.organization,
                outcome="denied",
                reason="this reader already saw an authentication refused; another reader must present the card",
                details={"reader": self.session.credential.key_id},
            )
        return held

    def _host_channel(self, stage: Stage, choice: KeyChoice, host_challenge: bytes | None) -> SCP02 | SCP03:
        card = stage.card
        sd_aid = bytes.fromhex(stage.sd_aid())
        keys = self._static_keys(choice)
        self._static = keys
        if choice.kind == "isd":
            scp, i = card.scp, card.scp_i
        else:
            sd = stage.security_domain()
            scp, i = (sd.scp, sd.scp_i) if sd is not None else (card.scp, card.scp_i)
        self.state["scp"] = scp
        if scp == 0x03:
            return SCP03(keys, FULL_SCP03_LEVEL, host_challenge, sd_aid=sd_aid)
        return SCP02(keys, FULL_SCP02_LEVEL, host_challenge, i=i, sd_aid=sd_aid)

    def _initialize_update(self, stage: Stage, choice: KeyChoice, more: bool, *, keyless: bool = False) -> Command:
        """INITIALIZE UPDATE needs only the key version and a host challenge: ``keyless`` builds it
        without reading the static keys (read when its answer comes back, see _on_open)."""
        expect = (SW.SUCCESS, SW.REFERENCED_DATA_NOT_FOUND) if more else (SW.SUCCESS,)
        if choice.kind == "scp11b":
            # SCP11b opens from the SD's certificate chain, read in the clear (Amd F §7.4.2); the
            # bank's key service checks it, so nothing here is believed.
            self.state.pop("host_challenge", None)
            apdu = commands.get_certificate_store(SCP11_SD_KID, choice.kvn)
            return Command(
                apdu, f"read the SD's certificates ({SCP11_SD_KID:02X}/{choice.kvn:02X})", expect, secure=False
            )
        label = f"INIT-UPD key set {choice.kvn:02X}"
        if keyless or choice.kind == "bank":
            challenge = secrets.token_bytes(HOST_CHALLENGE_LEN)
            self.state["host_challenge"] = challenge.hex()
            return Command(initialize_update_apdu(choice.kvn, challenge), label, expect, secure=False)
        channel = self._host_channel(stage, choice, None)
        self.state["host_challenge"] = channel.host_challenge.hex()
        return Command(channel.initialize_update(), label, expect, secure=False)

    def _on_open(self, responses: list[bytes]) -> Batch:
        stage = self.stage()
        sent = self.state["sent"]
        if sent and sent[0]["label"] == INTERNAL_AUTHENTICATE:
            return self._on_key_agreement(stage, responses)
        if len(sent) == 2:
            select_sw = sw_of(responses[0])
            if select_sw != SW.SUCCESS:
                raise StepFailed(f"{stage.sd_aid()} cannot be selected (SW {select_sw:04X})")
            responses = responses[1:]
        if not responses:
            raise SessionRejected("no INITIALIZE UPDATE response")
        iu = responses[0]
        choices = [KeyChoice.from_json(c) for c in self.state["choices"]]
        index = self.state["key_index"]
        if sw_of(iu) == SW.REFERENCED_DATA_NOT_FOUND and index + 1 < len(choices):
            self.state["key_index"] = index + 1
            more = index + 2 < len(choices)
            return self._send([self._initialize_update(stage, choices[index + 1], more)], event=Event.NEXT_KEY)
        if sw_of(iu) != SW.SUCCESS:
            raise StepFailed(f"INITIALIZE UPDATE refused (SW {sw_of(iu):04X})")
        choice = choices[index]
        if choice.kind in ("bank", "scp11b"):
            return self._open_at_key_service(stage, choice, iu)
        channel = self._host_channel(stage, choice, bytes.fromhex(self.state["host_challenge"]))
        channel.initialize_update()
        try:
            ea = channel.external_authenticate(iu)
        except AuthenticationError as exc:
            # Detected on the host before any EXTERNAL AUTHENTICATE: the card spent no try. Still
            # an alert: wrong keys on record, another card, or a relay altering the exchange.
            self._sd_event(
                "secure_channel.card_cryptogram_invalid",
                stage.sd_aid(),
                stage.owner(),
                outcome="failure",
                reason=str(exc),
            )
            raise SessionRejected(f"card cryptogram did not verify for {stage.sd_aid()}: not retried") from exc
        except RemoteProtocolError as exc:
            raise SessionRejected(f"INITIALIZE UPDATE response rejected: {exc}") from exc
        if choice.kind == "isd" and channel.kdd and channel.kdd.hex().upper() != self.card.kdd:
            raise SessionRejected("the card's key diversification data does not match its record")
        return self._authenticated_batch(stage, choice, channel, [Command(ea, "external authenticate", secure=False)])

    def _open_at_key_service(self, stage: Stage, choice: KeyChoice, answer: bytes) -> Batch:
        """The bank's key service opens the channel: SCP03 from INITIALIZE UPDATE's answer (it
        checks the card cryptogram), or SCP11b from the SD's certificate chain (it checks the
        chain up to the agency's card CA, then the receipt of INTERNAL AUTHENTICATE)."""
        if not isinstance(stage, BankSsdStage):
            raise LocalProtocolError(f"{stage.name}: a key service's key choice for a stage that is not the bank's")
        service = stage.key_service()
        where = {"session": str(self.session.id), "card_cin": self.card.cin, "sd_aid": stage.sd_aid()}
        if choice.kind == "scp11b":
            channel, internal_authenticate = RemoteChannel.open_scp11b(service, certificates=answer[:-2], **where)
            self._channel = channel
            self.state["key"] = choice.to_json()  # _on_key_agreement opens the stage with it
            stage.opened_with = choice
            return self._send(
                [Command(internal_authenticate, INTERNAL_AUTHENTICATE, secure=False)], event=Event.KEY_AGREEMENT
            )
        challenge = bytes.fromhex(self.state["host_challenge"])
        channel, ea = RemoteChannel.open_scp03(
            service,
            kvn=choice.kvn,
            i=SCP03_I_AFTER_SCP11,
            host_challenge=challenge,
            initialize_update_response=answer,
            **where,
        )
        return self._authenticated_batch(stage, choice, channel, [Command(ea, "external authenticate", secure=False)])

    def _on_key_agreement(self, stage: Stage, responses: list[bytes]) -> Batch:
        """INTERNAL AUTHENTICATE's answer: the bank's service checks its receipt, which proves the
        card holds the certified SD key (Amd F §3.1.2); then the channel carries the stage."""
        channel = self._restore_channel()
        if not isinstance(channel, RemoteChannel) or not responses:
            raise SessionRejected("no INTERNAL AUTHENTICATE answer")
        if sw_of(responses[0]) != SW.SUCCESS:
            raise StepFailed(f"INTERNAL AUTHENTICATE refused (SW {sw_of(responses[0]):04X})")
        answers = channel.unwrap_all(responses[:1])
        if not answers or isinstance(answers[0], str) or not answers[0].authenticated:
            raise SessionRejected(f"the SD's key agreement receipt did not verify for {stage.sd_aid()}")
        # The bank's service puts its keys only after the SD's R-MAC'd key information shows no
        # key but the SD's own SCP11 keys (nobody used the SCP11b window before it; GP 2.3.1
        # §11.3.3.1): it travels first, and the script follows in the next exchange.
        key_information = Command(commands.get_data(0x00E0), KEY_INFORMATION)
        return self._authenticated_batch(
            stage, KeyChoice.from_json(self.state["key"]), channel, [key_information], ahead=False
        )

    def _authenticated_batch(
        self, stage: Stage, choice: KeyChoice, channel: HostChannel, first: list[Command], *, ahead: bool = True
    ) -> Batch:
        """The channel is open: ``first`` (EXTERNAL AUTHENTICATE, or nothing after SCP11b), the
        registry listing, and, when it can be computed ahead, the script and the listing again."""
        self._channel = channel
        self.state["key"] = choice.to_json()
        stage.opened_with = choice
        self._clear_evidence()
        self.state["proofs"] = []
        self.state["probed"] = False
        self.state["card_proved"] = False
        cmds = list(first)
        cmds += [self._get_status(p1) for p1 in stage.status_p1]
        script = self._optimistic_script(stage, channel) if ahead else []
        self.state.pop("optimistic_len", None)
        if script:
            # EXTERNAL AUTHENTICATE travels with the registry read and the script computed from
            # the registry the platform expects; the GET STATUS after it decides (_on_status).
            self.state["optimistic_len"] = len(stage.status_p1)
            self.state["script_len"] = len(script)
            cmds += script + [self._get_status(p1) for p1 in stage.status_p1]
        return self._send(cmds, event=Event.AUTHENTICATE)

    def _optimistic_script(self, stage: Stage, channel: HostChannel) -> list[Command]:
        """The stage's script from the registry this session already read (after a reopen), or
        from the one the platform's records expect (a job's first attempt only: a resumed job's
        records may lag the card). Nothing is believed from it: the card's R-MAC'd listings that
        follow decide, and a difference costs an exchange (see _on_status)."""
        known = self.state.pop("known", None)
        if known is not None:
            registry = self._registry_of(known["registry"], known["unproven"], [])
        elif self.job().pk in self.state.get("optimistic", []) and not self.state.get("spent"):
            registry = expected_registry(stage)
        else:
            return []
        try:
            # a refused token leaves no entry: it is asked again on the card's registry
            with transaction.atomic() if stage.script_writes else nullcontext():
                return stage.script(registry, channel)
        except (JobFailed, StepFailed):
            return []

    def _count_auth_refusal(self, stage: Stage, sw: int) -> None:
        """EXTERNAL AUTHENTICATE refused after the card cryptogram verified. The host cryptogram
        came from the same keys, so it was right: the relay made the refusal up or altered the
        command (then the card counted a try), or the card is faulty. The bare status word cannot
        tell which, so the relay is the unit of blame: each reader adds at most one to the SD's
        count and is then held for this SD, and the platform stops at ``AUTH_FAILURE_STOP``
        (refusals through as many readers), before the card's own limit. One relay can never
        stop a bank; a card that refuses through every reader still stops in time."""
        sd = stage.security_domain()
        credential = self.session.credential
        if sd is not None:
            _refusal, first_from_reader = AuthRefusal.objects.get_or_create(
                security_domain=sd,
                credential=credential,
                defaults={"session_id": self.session.pk, "status_word": f"{sw:04X}"},
            )
            if first_from_reader:
                SecurityDomain.objects.filter(pk=sd.pk).update(auth_failures=F("auth_failures") + 1)
        self._sd_event(
            "secure_channel.auth_failed",
            stage.sd_aid(),
            stage.owner(),
            outcome="failure",
            reason=(
                f"EXTERNAL AUTHENTICATE refused ({sw:04X}) although the card cryptogram verified: "
                "the relay or the card is at fault"
            ),
            details={"reader": credential.key_id},
        )

    def _card_authenticated(self) -> None:
        """The card R-MAC'd an answer in this channel: it accepted our EXTERNAL AUTHENTICATE, so
        earlier refusals blocked nothing. Clear the SD's count and held readers (once per channel)."""
        if self.state.get("card_proved"):
            return
        self.state["card_proved"] = True
        if self.state.get("opened_with_refusals") is False:
            # None were counted when this channel opened (read then, in this session): nothing to
            # clear, no read. One counted since by another reader stays until the SD's next
            # proved channel: it can only stop the platform earlier, never let it spend a try.
            return
        stage = self.stage()
        job_sd = stage.job.security_domain
        if hasattr(stage, "_security_domain") or (job_sd is not None and job_sd.aid == stage.sd_aid()):
            sd = stage.security_domain()  # read already, or the job's own (no query)
            sd_id, failures = (sd.pk, sd.auth_failures) if sd is not None else (None, 0)
        else:  # only its count is needed here
            record = SD_BY_AID.first(stage.card.pk, stage.sd_aid())
            sd_id, failures = (record.pk, record.auth_failures) if record is not None else (None, 0)
        if sd_id is not None and failures:
            SecurityDomain.objects.filter(pk=sd_id).update(auth_failures=0)
            AuthRefusal.objects.filter(security_domain_id=sd_id).delete()

    @staticmethod
    def _get_status(p1: int, *, next_occurrence: bool = False) -> Command:
        return Command(
            commands.get_status(p1, next_occurrence=next_occurrence),
            f"read registry ({p1:02X})",
            (SW.SUCCESS, SW.WARNING_MORE_DATA, SW.REFERENCED_DATA_NOT_FOUND),
            status_p1=p1,
        )

    # ---------------------------------------------------------------- status
    def _clear_evidence(self) -> None:
        """Forget the listings read so far (a new channel, or a listing read again after a script)."""
        self.state["registry"] = {}
        self.state["unproven"] = []

    def _in_flight(self) -> list[InFlight]:
        """The commands of the batch the responses answer, as stored by _send."""
        return [InFlight.from_json(meta) for meta in self.state.get("sent", [])]

    def _collect_status(self, responses: list[bytes], sent: list[InFlight]) -> list[int]:
        """Unwrap GET STATUS answers into ``state['registry']``; return the P1s that need continuing.

        Only R-MAC'd listings are kept. ``6A88`` ("no entry matches") carries no R-MAC
        (Amd D §6.2.5), so it marks the listing unproven instead of empty."""
        more = []
        for rapdu, meta in zip(responses, sent, strict=False):
            answer = self._unwrap(rapdu)
            if answer.sw not in (SW.SUCCESS, SW.WARNING_MORE_DATA, SW.REFERENCED_DATA_NOT_FOUND):
                refused("GET STATUS", answer.sw)
            p1 = meta.status_p1
            if p1 is None:  # _collect_status is handed GET STATUS commands only
                raise LocalProtocolError(f"{meta.label}: read as a registry listing")
            self.state["registry"].setdefault(str(p1), "")
            if answer.sw == SW.REFERENCED_DATA_NOT_FOUND:
                self.state["unproven"].append(p1)
                continue
            if not answer.authenticated:
                raise SessionRejected(f"GET STATUS {p1:02X} answered {answer.sw:04X} without an R-MAC")
            self.state["registry"][str(p1)] += answer.data.hex()
            if answer.sw == SW.WARNING_MORE_DATA:
                more.append(p1)
            elif answer.sw == SW.SUCCESS:
                self._card_authenticated()
        return more

    def _registry(self) -> Registry:
        return self._registry_of(
            self.state.get("registry", {}), self.state.get("unproven", []), self.state.get("proofs", [])
        )

    @staticmethod
    def _registry_of(listings: dict[str, str], unproven_p1s: list[int], proofs: list[str]) -> Registry:
        unproven = set(unproven_p1s)
        registry = Registry(
            proven_listings=frozenset(int(p1) for p1 in listings if int(p1) not in unproven),
            proofs=frozenset(proofs),
        )
        with _card_reply("the card registry does not parse"):
            for p1, data in listings.items():
                entries = commands.parse_get_status(bytes.fromhex(data), int(p1))
                if int(p1) == STATUS_APPS:
                    registry.apps.extend(entries)
                else:
                    registry.elfs.extend(entries)
        return registry

    def _on_status(self, responses: list[bytes]) -> Batch:
        sent = self._in_flight()
        if sent and sent[0].label == "external authenticate":
            # A bare status word, never R-MAC'd: 9000 here proves nothing yet (the first R-MAC'd
            # answer does, see _card_authenticated); a refusal is counted per reader.
            ea_sw = sw_of(responses[0])
            if ea_sw != SW.SUCCESS:
                self._count_auth_refusal(self.stage(), ea_sw)
                raise SessionRejected(
                    f"the card refused the host cryptogram (SW {ea_sw:04X}): not retried through this reader"
                )
            responses, sent = responses[1:], sent[1:]
        if sent and sent[0].label == KEY_INFORMATION:
            # checked by the bank's service as it unwrapped it; here it must merely be authentic
            answer = self._unwrap(responses[0]) if responses else None
            if answer is None or answer.sw != SW.SUCCESS or not answer.authenticated:
                raise StepFailed("the SD's key information could not be read")
            responses, sent = responses[1:], sent[1:]
        channel = self._restore_channel()
        optimistic = self.state.pop("optimistic_len", None)
        if optimistic is not None:
            return self._on_optimistic(responses, sent, optimistic)
        more = self._collect_status(responses, sent)
        if len(responses) < len(sent):
            raise StepFailed("the registry could not be read")
        if more:
            return self._send([self._get_status(p1, next_occurrence=True) for p1 in more], event=Event.CONTINUE_LISTING)
        stage = self.stage()
        script = stage.script(self._registry(), channel)
        if not script:
            return self._finish_stage(stage)
        return self._send_script(stage, script)

    def _on_optimistic(self, responses: list[bytes], sent: list[InFlight], listings: int) -> Batch:
        """Answers to [GET STATUS…, script computed from the expected registry, GET STATUS…]
        after EXTERNAL AUTHENTICATE. The first listings are kept (R-MAC'd only) in case the
        script must be redone; the script's answers and the last listings are judged exactly as
        a script's (_on_script), with one second chance for the stage (``spent``)."""
        more = self._collect_status(responses[:listings], sent[:listings])
        if len(responses) <= listings:
            raise StepFailed("the registry could not be read")
        before = None if more else {"registry": self.state["registry"], "unproven": self.state["unproven"]}
        self.state["before"] = before
        self._clear_evidence()
        self.state["sent"] = [meta.to_json() for meta in sent[listings:]]
        self._move(Event.SCRIPT_ANSWERED)
        self.state["second_chance"] = not self.state.get("spent")
        return self._on_script(responses[listings:])

    def _reopen(self, stage: Stage, why: str, *, untouched: bool) -> Batch:
        """The card refused a command of a script computed from the expected registry: the host's
        channel counted commands the card never saw, so the stage opens a new channel, once. When
        the refused command was the script's first, the registry the card R-MAC'd just before is
        still the card's, and the new channel's first batch carries the script computed from it;
        otherwise the stage reads the registry again first. No state is taken from the refusal."""
        logger.info("card session %s: %s; the stage %s opens again", self.session.pk, why, stage.name)
        self.state["spent"] = True
        before = self.state.pop("before", None)
        if before is not None and untouched:
            self.state["known"] = before
        return self._open_stage()

    def _send_script(self, stage: Stage, script: list[Command]) -> Batch:
        """The stage's script, then its listings again: their answers are what finish() judges."""
        self._clear_evidence()
        self.state["script_len"] = len(script)
        return self._send(script + [self._get_status(p1) for p1 in stage.status_p1], event=Event.SCRIPT)

    def _finish_stage(self, stage: Stage, *, second_chance: bool = False) -> Batch:
        registry = self._registry()
        try:
            apply_effects(stage, stage.finish(registry, KeyChoice.from_json(self.state["key"])))
        except NeedsProof as need:
            if self.state.get("probed"):
                raise Unconfirmed(f"{stage.name}: the card did not prove the result with an R-MAC") from None
            self.state["probed"] = True
            return self._send_script(stage, need.commands)
        except StepFailed as failed:
            apply_effects(stage, failed.effects)  # what the card did prove stays recorded
            if not second_chance:
                raise
            # The script came from the expected registry and the card's R-MAC'd listing shows
            # the stage not done: script again from that listing, in the same channel, once.
            script = stage.script(registry, self._restore_channel())
            if not script:
                raise
            self.state["spent"] = True
            return self._send_script(stage, script)
        return self._next_stage_or_job()

    # ---------------------------------------------------------------- script
    def _on_script(self, responses: list[bytes]) -> Batch:
        sent = self._in_flight()
        script_len = self.state["script_len"]
        second_chance = bool(self.state.pop("second_chance", False))
        self._restore_channel()
        stage = self.stage()
        for index, (rapdu, meta) in enumerate(zip(responses[:script_len], sent[:script_len], strict=False)):
            answer = self._unwrap(rapdu)
            if meta.dap_checked and answer.sw == SW.SECURITY_STATUS_NOT_SATISFIED and answer.sw in meta.expect:
                # An upgrade's load refused for its DAP: the script went on to RECOVERY, which
                # put the old version back; the attempt fails with the card's reason.
                refused(meta.label, answer.sw, dap_checked=True)
            if answer.sw not in meta.expect:
                if second_chance and answer.sw not in INTEGRITY_SWS:
                    why = f"{meta.label}: the card answered {answer.sw:04X}"
                    return self._reopen(stage, why, untouched=index == 0)
                refused(meta.label, answer.sw, dap_checked=meta.dap_checked)
            if answer.sw != SW.SUCCESS or not answer.authenticated:
                continue  # an accepted error status word (no R-MAC): it proves nothing
            self._card_authenticated()
            if meta.receipt:
                self._check_receipt(answer.data, meta.receipt, stage)
            proven = meta.proven_by(answer.data)
            if proven:
                self.state["proofs"].append(proven)
        if len(responses) < script_len:
            raise StepFailed("the script stopped before its end")
        status_responses = responses[script_len:]
        status_sent = sent[script_len:]
        more = self._collect_status(status_responses, status_sent)
        if more:
            self.state["script_len"] = 0
            self.state["second_chance"] = second_chance
            return self._send([self._get_status(p1, next_occurrence=True) for p1 in more], event=Event.CONTINUE_LISTING)
        return self._finish_stage(stage, second_chance=second_chance)

    def _check_receipt(self, data: bytes, spec: dict[str, Any], stage: Stage) -> None:
        """Verify a Delegated Management receipt (GP 2.3.1 Annex C) with the card's receipt key; the
        confirmation counter must grow, so a replayed receipt is refused."""
        card = self.card
        with _card_reply("malformed confirmation"):
            confirmation = dm.parse_confirmation(data)
            unique = decode_all(confirmation.card_unique_data)
        if not confirmation.receipt:
            raise SessionRejected("the card gave no receipt for a delegated operation")
        cin = find(unique, 0x45)
        if cin is None or cin.value.hex().upper() != card.cin:
            raise SessionRejected("the receipt names another card")
        counter = int.from_bytes(confirmation.counter, "big")
        if counter <= card.receipt_counter:
            raise SessionRejected("the receipt's confirmation counter did not advance (replayed receipt)")
        builders: dict[str, Callable[..., bytes]] = {
            "load": dm.load_receipt_data,
            "install": dm.install_receipt_data,
            "delete": dm.delete_receipt_data,
        }
        fields = [bytes.fromhex(f) for f in spec["fields"]]
        receipt_input = builders[spec["op"]](confirmation.counter, confirmation.card_unique_data, *fields)
        if self._receipt_key is None:  # read and opened once per exchange (a script may give several receipts)
            keyset = KeySet.objects.filter(
                organization=card.issued_by,
                card_cin=card.cin,
                purpose=KeySet.Purpose.RECEIPT,
                state=KeySet.State.ACTIVE,
            ).first()
            if keyset is None:
                raise SessionRejected("no receipt key on record for this card")
            alg = "aes" if keyset.algorithm == KeySet.Algorithm.AES else "des"
            self._receipt_key = (custody.load_secret_key(keyset), alg)
        secret, alg = self._receipt_key
        if not dm.verify_receipt(secret, receipt_input, confirmation.receipt, alg=alg):
            raise SessionRejected(f"the card's {spec['op']} receipt does not verify")
        Card.objects.filter(pk=card.pk).update(receipt_counter=counter)
        card.receipt_counter = counter
        record_event(
            action=f"receipt.{spec['op']}",
            subject_type="card_job",
            subject_id=self.state["jobs"][0],
            card_cin=card.cin,
            organization=stage.owner(),
            receipt=confirmation.receipt,
            actor_type="agent",
            # the release, its version, the LFDB hash and the SD (load and install; a delete names its AID)
            details={"fields": spec["fields"], "counter": counter, **spec.get("package", {})},
        )

    # ---------------------------------------------------------------- job transitions
    def _next_stage_or_job(self, *, advance_job: bool = False) -> Batch:
        self._channel = None
        for key in ("spent", "known", "before", "second_chance", "optimistic_len"):
            self.state.pop(key, None)
        if not self.state["jobs"]:
            return self._done()
        if not advance_job:
            job = self.job()
            if self.state["stage"] + 1 < len(stages_for(job)):
                self.state["stage"] += 1
                return self._open_stage()
            self._complete_job(job)
        self.state["jobs"] = self.state["jobs"][1:]
        self.state["stage"] = 0
        return self._open_stage()

    def _complete_job(self, job: CardJob) -> None:
        complete_job(job)
        self.state["finished"].append({"id": job.pk, "kind": job.kind, "state": "done"})

    def _retry_later(self, error: str) -> None:
        """This attempt failed; the job waits for the next presentation (or fails after MAX_ATTEMPTS).
        Later jobs wait too: they may depend on this one."""
        job = self.job()
        if job.attempts >= MAX_ATTEMPTS:
            self._fail_job(f"gave up after {job.attempts} attempts: {error}")
            return
        retry_job(job, error)
        self.state["finished"].append({"id": job.pk, "kind": job.kind, "state": "pending", "error": error})
        self.state["jobs"] = []

    def _hold(self, error: str) -> None:
        """The bank's key service could not be reached: the job waits, uncharged; later jobs too."""
        job = self.job()
        hold_job(job, error)
        self.state["finished"].append({"id": job.pk, "kind": job.kind, "state": "pending", "error": error})
        self.state["jobs"] = []

    def _fail_job(self, error: str) -> None:
        job = self.job()
        fail_job(job, error)
        self.state["finished"].append({"id": job.pk, "kind": job.kind, "state": "failed", "error": error})

    def _done(self) -> Batch:
        refusal = standing_refusal(self.session.card) if self.session.card_id else None
        if refusal is not None:
            # A blocked or terminated card ran only its card status work: the session ends refused,
            # and says why (the agent prints it). What the card proved stays recorded.
            raise SessionRejected(refusal)
        self._move(Event.FINISH)
        self.state["sent"] = []
        self._channel = None
        self._save_channel()
        finished = self.state.get("finished", [])
        remaining = 0
        if self.session.card_id:
            remaining = open_jobs_read(()).count(self.session.card_id, CardJob.OPEN_STATES)
        return Batch(commands=[], done=True, progress=self.progress(), result={"jobs": finished, "pending": remaining})


def _job_changed(job: CardJob, action: str, error: str = "", **details: Any) -> None:
    """Tell listeners (rollouts) and the audit log that a job changed state."""
    job_state_changed.send(sender=CardJob, job=job, state=job.state, error=error)
    record_event(
        action=action,
        subject_type="card_job",
        subject_id=job.pk,
        card_cin=job.card.cin,
        organization=job.organization,
        outcome="failure" if error else "success",
        reason=error,
        actor_type="agent",
        details={"kind": job.kind, **details},
    )


def complete_job(job: CardJob) -> None:
    """Record a finished job and what it means for the registry, with its audit entry."""
    now = timezone.now()
    if job.kind == CardJob.Kind.ENROLL_BANK:
        sd = job_security_domain(job)
        sd.state = SecurityDomain.State.ACTIVE
        sd.save(update_fields=["state", "updated_at"])
        if job.enrollment_id is not None:  # filter(pk=None) matched nothing
            Enrollment.objects.filter(pk=job.enrollment_id).update(status=Enrollment.Status.ACTIVE, updated_at=now)
    elif job.kind == CardJob.Kind.REMOVE_BANK:
        sd = job_security_domain(job)
        sd.state = SecurityDomain.State.REMOVED
        sd.save(update_fields=["state", "updated_at"])
        sd.applets.all().delete()
        sd.packages.all().delete()
        if job.enrollment_id is not None:  # filter(pk=None) matched nothing
            Enrollment.objects.filter(pk=job.enrollment_id).update(status=Enrollment.Status.REMOVED, updated_at=now)
        KeySet.objects.filter(
            organization=sd.organization, card_cin=job.card.cin, sd_aid=sd.aid, state=KeySet.State.ACTIVE
        ).update(state=KeySet.State.SUPERSEDED, rotated_at=now)
    job.state = CardJob.State.DONE
    job.finished_at = now
    job.last_error = ""
    JOB_FINISHED.save(job)
    _job_changed(job, "job.done", **job_done_details(job))


def _key_algorithm(job: CardJob, sd: SecurityDomain, kvn: int | None) -> str:
    keyset = keyset_for(sd.organization, job.card, sd.aid, kvn) if kvn is not None else None
    if keyset is None:
        keyset = (
            KeySet.objects.filter(organization=sd.organization, card_cin=job.card.cin, sd_aid=sd.aid, kvn=kvn or 0)
            .order_by("-pk")
            .first()
        )
    if keyset is not None:
        return keyset.algorithm
    return KeySet.Algorithm.AES if sd.scp == 0x03 else KeySet.Algorithm.DES3


def job_packages(job: CardJob, sd: SecurityDomain) -> list[dict[str, Any]]:
    """The packages a finished install or update job put into ``sd`` (``package_details`` each, with
    the instances), from the job's parameters: the releases it loaded."""
    params = job.params or {}
    instances: dict[int, list[str]] = {}
    for spec in params.get("packages") or []:
        instances.setdefault(int(spec["release"]), []).extend(spec.get("instances", []))
    applets = params.get("applets") or (params.get("default_applets") if job.kind == CardJob.Kind.ENROLL_BANK else [])
    for spec in applets or []:
        instances.setdefault(int(spec["release"]), []).append(spec["instance_aid"])
    releases = Release.objects.in_bulk(list(instances))
    return [package_details(sd, releases[pk], aids) for pk, aids in instances.items() if pk in releases]


def job_done_details(job: CardJob) -> dict[str, Any]:
    """What a ``job.done`` entry says happened on the card, enough to replay the card's state from
    the log alone (``audit.reports.card_at``): the security domain, its key version and algorithm
    where keys changed, its life cycle where it changed, the packages loaded (release, version,
    load file hash) and those removed."""
    if job.security_domain_id is None:
        return {}
    sd = job.security_domain if CardJob.security_domain.is_cached(job) else None
    if sd is None or sd.pk != job.security_domain_id or not SecurityDomain.organization.is_cached(sd):
        # as the stages left it (the engine's job carries its SD with the owning bank, kept in step
        # with what the stages wrote by apply_effects and complete_job: no need to read it again)
        sd = SecurityDomain.objects.select_related("organization").get(pk=job.security_domain_id)
    details: dict[str, Any] = {"sd_aid": sd.aid}
    kind = job.kind
    if kind in (CardJob.Kind.ENROLL_BANK, CardJob.Kind.ROTATE_KEYS):
        details["key_version"] = sd.key_kvn
        details["algorithm"] = _key_algorithm(job, sd, sd.key_kvn)
        if kind == CardJob.Kind.ROTATE_KEYS and job.params.get("from_kvn") is not None:
            details["previous_key_version"] = int(job.params["from_kvn"])
        if kind == CardJob.Kind.ENROLL_BANK:
            details["lifecycle"] = sd.lifecycle
    if kind in (CardJob.Kind.LOCK_SD, CardJob.Kind.UNLOCK_SD):
        details["lifecycle"] = sd.lifecycle
    if kind == CardJob.Kind.PERSONALIZE:  # which data, by its sealed envelope's hash: never the data
        details["personalized"] = [
            {"instance_aid": aid, "envelope_sha256": digest}
            for aid, digest in job.personalizations.filter(state="delivered").values_list(
                "instance_aid", "envelope_sha256"
            )
        ]
    if kind in (CardJob.Kind.ENROLL_BANK, CardJob.Kind.UPDATE_APPLET):
        packages = job_packages(job, sd)
        if packages or kind == CardJob.Kind.UPDATE_APPLET:
            details["packages"] = packages
        removed = [aid.upper() for aid in (job.params or {}).get("remove", [])]
        if removed:
            details["removed_packages"] = removed
    return details


def retry_job(job: CardJob, error: str) -> None:
    """A failed attempt: the job waits for the card's next presentation."""
    CardJob.objects.filter(pk=job.pk).update(state=CardJob.State.PENDING, last_error=error)
    job.state, job.last_error = CardJob.State.PENDING, error
    _job_changed(job, "job.attempt_failed", error, attempt=job.attempts)


def hold_job(job: CardJob, error: str) -> None:
    """The job waits for something outside the card (a bank's key service that is down): back to
    pending, and this attempt is not counted against it."""
    CardJob.objects.filter(pk=job.pk).update(state=CardJob.State.PENDING, last_error=error, attempts=F("attempts") - 1)
    job.state, job.last_error, job.attempts = CardJob.State.PENDING, error, max(job.attempts - 1, 0)
    _job_changed(job, "job.held", error)


def fail_job(job: CardJob, error: str) -> None:
    now = timezone.now()
    job.state = CardJob.State.FAILED
    job.finished_at = now
    job.last_error = error
    JOB_FINISHED.save(job)
    if job.kind == CardJob.Kind.ENROLL_BANK and job.enrollment_id:
        Enrollment.objects.filter(pk=job.enrollment_id).update(status=Enrollment.Status.FAILED, updated_at=now)
    _job_changed(job, "job.failed", error)
