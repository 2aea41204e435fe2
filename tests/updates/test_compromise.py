"""The compromise test (issue 17): the agency orchestrates every update but cannot open a bank's
domain.

Two banks, each with its own key service and SoftHSM2 token, enroll on three cards through the
relay; one bank rotates its keys on a card and updates an applet on another. The attacker then
takes everything the platform has: the whole database (``dumpdata``), the master key that unwraps
every key set in it, the relay transcripts (every APDU both ways and every JSON answer) and the
audit log. With all of it, every key it can unwrap or derive (every key set, each card's ISD keys,
the initial SSD keys) fails to open any bank SSD, the banks' keys appear nowhere in the haul, and
SCP11b, which anyone can open, changes nothing in a personalised SSD. Given Alpha's token, the
same test opens Alpha's SSDs, and still none of Beta's.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import LazySettings
from django.core.management import call_command

from agent.core import run_session
from cards import services as card_services
from cards.models import Card, CardJob, SecurityDomain
from cardsim import store
from cardsim.transport import InProcessCard
from gp import commands
from gp.errors import AuthenticationError
from gp.keys import StaticKeys, encode_put_key_symmetric
from gp.scp import SCP03
from gp.scp11 import SCP11b, parse_certificates
from issuers import custody
from issuers.custody.authorities import ca_public_pem
from issuers.custody_models import KeySet
from issuers.key_services import platform_identity
from tests.bankservice import RunningService, running_bank_service
from tests.cardsim.scp11_host import SCP11Session, certificate_store
from tests.factories import make_user
from tests.otakit import ApiServer, OtaWorld, build_ota_world, enroll, register_key_service, update_applet_job
from tests.shared_data import cap_file
from updates import services as update_services
from updates.ota import BANK_SCP03_KVN

pytestmark = pytest.mark.django_db

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
PACKAGE = "0102030405"
INSTANCE = "0102030405060708"


class RecordingCard:
    """The relay's view of a card: every C-APDU and R-APDU that crossed it."""

    def __init__(self, inner: InProcessCard, transcript: list[bytes]) -> None:
        self.inner, self.transcript = inner, transcript

    def transmit(self, capdu: bytes) -> bytes:
        rapdu = self.inner.transmit(capdu)
        self.transcript += [capdu, rapdu]
        return rapdu

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecordingServer(ApiServer):
    def __init__(self, token: str, transcript: list[bytes]) -> None:
        super().__init__(token)
        self.transcript = transcript

    def open_session(self, mode: str) -> dict[str, Any]:
        answer = super().open_session(mode)
        self.transcript.append(str(answer).encode())
        return answer

    def exchange(self, session: str, number: int, responses: list[str]) -> dict[str, Any]:
        answer = super().exchange(session, number, responses)
        self.transcript.append(str(answer).encode())
        return answer


@pytest.fixture
def world(tmp_path: Path, settings: LazySettings) -> OtaWorld:
    settings.ECARD_KEYSERVICE_CLIENT_DIR = str(tmp_path / "platform-identity")
    return build_ota_world(cap_file(EMPTY), bank_scp=0x11)


@pytest.fixture
def services(world: OtaWorld, tmp_path: Path) -> Iterator[dict[str, RunningService]]:
    card_ca = ca_public_pem(world.agency, KeySet.Purpose.CARD_CA)
    platform_cert = platform_identity().certificate_pem
    with (
        running_bank_service(
            tmp_path / "alpha",
            bank="alpha",
            aid_prefixes=[bytes.fromhex(p) for p in world.bank.aid_ranges.values_list("prefix", flat=True)],
            card_ca_pem=card_ca,
            platform_cert_pem=platform_cert,
        ) as alpha,
        running_bank_service(
            tmp_path / "beta",
            bank="beta",
            aid_prefixes=[bytes.fromhex(p) for p in world.other_bank.aid_ranges.values_list("prefix", flat=True)],
            card_ca_pem=card_ca,
            platform_cert_pem=platform_cert,
        ) as beta,
    ):
        register_key_service(world.bank, alpha)
        register_key_service(world.other_bank, beta)
        yield {"alpha": alpha, "beta": beta}


def present(card: Card, token: str, transcript: list[bytes]) -> None:
    transport = InProcessCard(card.state_file)
    transport.reset()
    result = run_session(RecordingCard(transport, transcript), RecordingServer(token, transcript))
    assert result.ok and result.pending == 0, result


def transport_of(card: Card) -> InProcessCard:
    transport = InProcessCard(card.state_file)
    transport.reset()
    return transport


def opens(card: Card, sd_aid: str, keys: StaticKeys) -> bool:
    """Whether ``keys`` open SCP03 with ``sd_aid``: the card cryptogram verifies and the card
    accepts EXTERNAL AUTHENTICATE. A wrong key is caught at the card cryptogram, before EXTERNAL
    AUTHENTICATE, so the trials spend none of the card's authentication tries."""
    transport = transport_of(card)
    assert transport.transmit(commands.select(bytes.fromhex(sd_aid)))[-2:] == b"\x90\x00"
    channel = SCP03(keys, 0x33, sd_aid=bytes.fromhex(sd_aid))
    answer = transport.transmit(channel.initialize_update())
    if answer[-2:] != b"\x90\x00":
        return False
    try:
        ea = channel.external_authenticate(answer)
    except AuthenticationError:
        return False
    return transport.transmit(ea)[-2:] == b"\x90\x00"


def haul_keys(world: OtaWorld, cards: list[Card]) -> list[StaticKeys]:
    """Every symmetric key the platform's database and master key give: each key set unwrapped
    (as a key set and each key alone), and each card's ISD keys diversified from the agency master."""
    found: list[bytes] = []
    sets: list[StaticKeys] = []
    for keyset in KeySet.objects.all():
        if keyset.purpose == KeySet.Purpose.SCP_STATIC:
            keys = custody.load_static_keys(keyset)
            sets.append(keys)
            found += [keys.enc, keys.mac, keys.dek]
        elif keyset.algorithm in (KeySet.Algorithm.AES, KeySet.Algorithm.DES3):
            found.append(custody.load_secret_key(keyset))
    for card in cards:
        isd = custody.card_isd_keys(world.agency, card.cin, bytes.fromhex(card.kdd), "kdf3")
        sets.append(isd)
        found += [isd.enc, isd.mac, isd.dek]
    candidates = []
    for kvn in range(0x30, 0x40):
        for keys in sets:
            candidates.append(StaticKeys(keys.enc, keys.mac, keys.dek, version=kvn))
        for key in {k for k in found if len(k) in (16, 24, 32)}:
            candidates.append(StaticKeys.single(key, kvn))
    return candidates


def scp11b_put_key_refused(card: Card, sd_aid: str) -> bool:
    """Anyone can open SCP11b (it authenticates the card only): in a personalised SSD it changes
    nothing. True when the card refuses the attacker's PUT KEY."""
    transport = transport_of(card)
    chain = parse_certificates(certificate_store(transport.transmit, bytes.fromhex(sd_aid)))
    channel = SCP11b(sd_public_key=chain[-1].public_key_point, kvn=0x01, kid=0x13)
    assert SCP11Session(transport.transmit, bytes.fromhex(sd_aid), channel).open() == 0x9000
    attacker = StaticKeys.single(bytes(range(16)), 0x3E)
    data = encode_put_key_symmetric(0x3E, attacker, channel.encrypt_key, algorithm="aes")
    answer = channel.unwrap_response(transport.transmit(channel.wrap(commands.put_key(0x3E, data[1:], key_id=0x01))))
    return answer.sw != 0x9000


def test_the_platforms_whole_database_master_key_transcripts_and_audit_log_open_no_bank_ssd(
    world: OtaWorld, services: dict[str, RunningService]
) -> None:
    transcript: list[bytes] = []
    cards = [world.card]
    tokens = {world.card.pk: world.token}
    for n in (2, 3):
        citizen = make_user(f"citizen{n}")
        card = card_services.issue_card(agency=world.agency, holder=citizen, emulated=True)
        _credential, tokens[card.pk] = update_services.issue_agent_credential(user=citizen, name="reader")
        cards.append(card)
    for card in cards:
        world.card, world.citizen = card, card.holder
        enroll(world, world.bank)
        enroll(world, world.other_bank)
        present(card, tokens[card.pk], transcript)
    release = world.releases[PACKAGE]
    services["alpha"].approve_release(bytes.fromhex(PACKAGE), bytes.fromhex(release.lfdb_sha256), "alpha-officer")
    alpha_sds = {c.pk: SecurityDomain.objects.get(card=c, organization=world.bank) for c in cards}
    beta_sds = {c.pk: SecurityDomain.objects.get(card=c, organization=world.other_bank) for c in cards}
    card_services.request_key_rotation(security_domain=alpha_sds[cards[0].pk], actor=world.operator)
    world.card = cards[1]
    update_applet_job(world, alpha_sds[cards[1].pk], {"packages": [{"release": release.pk, "instances": [INSTANCE]}]})
    for card in cards[:2]:
        present(card, tokens[card.pk], transcript)
    assert not CardJob.objects.exclude(state=CardJob.State.DONE).exists()
    for sd in SecurityDomain.objects.filter(card__in=cards, is_isd=False):
        assert sd.scp == 0x11 and sd.lifecycle == SecurityDomain.Lifecycle.PERSONALIZED

    # the haul: the database, the master key (custody unwraps everything in it), transcripts, audit
    dump = io.StringIO()
    call_command("dumpdata", stdout=dump)
    audit_export = io.StringIO()
    call_command("dumpdata", "audit", stdout=audit_export)
    haul = (dump.getvalue() + audit_export.getvalue()).upper() + b"".join(transcript).hex().upper()
    candidates = haul_keys(world, cards)
    assert len(candidates) > 100

    bank_sds = [(card, alpha_sds[card.pk], services["alpha"]) for card in cards]
    bank_sds += [(card, beta_sds[card.pk], services["beta"]) for card in cards]
    for card, sd, service in bank_sds:
        sd.refresh_from_db()
        real = service.derive_static_keys(bytes.fromhex(card.cin), bytes.fromhex(sd.aid), sd.key_kvn)
        for key in (real.enc, real.mac, real.dek):
            assert key.hex().upper() not in haul  # the bank's keys are nowhere in the haul
        assert not any(opens(card, sd.aid, keys) for keys in candidates), f"{sd.aid} opened with the haul"
        assert scp11b_put_key_refused(card, sd.aid)

    # the bank's own token opens its SSDs, and only its own
    alpha = services["alpha"]
    for card in cards:
        sd = alpha_sds[card.pk]
        sd.refresh_from_db()
        assert opens(card, sd.aid, alpha.derive_static_keys(bytes.fromhex(card.cin), bytes.fromhex(sd.aid), sd.key_kvn))
        beta_sd = beta_sds[card.pk]
        for kvn in range(0x30, 0x40):
            assert not opens(
                card, beta_sd.aid, alpha.derive_static_keys(bytes.fromhex(card.cin), bytes.fromhex(beta_sd.aid), kvn)
            )
    assert store.load(Path(cards[0].state_file))  # the cards are intact
    assert BANK_SCP03_KVN in {alpha_sds[c.pk].key_kvn for c in cards}
