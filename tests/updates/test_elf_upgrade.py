"""Upgrades that keep the instances' data (issue 18, GP Amendment H, docs/elf-upgrade.md): the
engine sends MANAGE ELF UPGRADE START, the new version's load under the same package AID and
RESUME on a card that has it; the emulated card keeps each instance with its personalisation. A
card pulled at any APDU of the upgrade ends, after its next presentations, on the new version
with the data, never half-upgraded. The data is put on the card by the bank's own channel."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cards.models import CardJob, CardPackage, SecurityDomain
from cardsim.transport import InProcessCard
from gp import commands, dap
from gp.cap import LoadFile
from issuers import code_signing, custody
from issuers.code_signing import set_bank_dap_key
from tests.cardsim.test_upgrade import variant
from tests.otakit import (
    ApiServer,
    OtaWorld,
    PullableCard,
    PulledCard,
    build_ota_world,
    enroll,
    open_scp03,
    rolled_back,
    update_applet_job,
)
from tests.shared_data import cap_file
from updates.ota import MAX_ATTEMPTS, keyset_for
from updates.releases import add_dap_signature, create_release

pytestmark = pytest.mark.django_db

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
PACKAGE = "0102030405"
INSTANCE = "0102030405060708"
DATA = bytes(range(1, 41)) * 7  # 280 bytes: two STORE DATA blocks
INS_MANAGE_ELF_UPGRADE = 0xEA


class Recording:
    """A transport that remembers the plain header (CLA INS P1 P2) of each command it sends."""

    def __init__(self, inner: InProcessCard) -> None:
        self.inner = inner
        self.instructions: list[int] = []

    def transmit(self, capdu: bytes) -> bytes:
        self.instructions.append(capdu[1])
        return self.inner.transmit(capdu)


def bank_sd(world: OtaWorld) -> SecurityDomain:
    return SecurityDomain.objects.get(card=world.card, organization=world.bank)


def installed_and_personalised() -> OtaWorld:
    """Alpha enrolled with its Empty applet at v0.0; the instance personalised in Alpha's channel."""
    world = build_ota_world(cap_file(EMPTY))
    release = world.releases[PACKAGE]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    enroll(world)
    assert world.present().ok
    sd = bank_sd(world)
    keys = custody.load_static_keys(keyset_for(world.bank, world.card, sd.aid, sd.key_kvn))
    transport = world.card_transport()
    channel = open_scp03(transport, sd.aid, keys)
    for apdu in [
        commands.install_for_personalization(bytes.fromhex(INSTANCE)),
        *commands.store_data_commands(DATA, max_block=200),
    ]:
        assert transport.transmit(channel.wrap(apdu))[-2:] == b"\x90\x00"
    assert world.card_transport().personalization(INSTANCE) == DATA
    return world


def new_version(world: OtaWorld, version: tuple[int, int]):
    lf = variant(LoadFile.from_path(cap_file(EMPTY)), version)
    return create_release(
        bank=world.bank, cap_bytes=lf.load_file_data_block(), filename=f"empty-{version}.ijc", actor=world.operator
    )


def card_version(world: OtaWorld) -> tuple[int, int] | None:
    elf = world.card_transport().card.state["elfs"].get(PACKAGE)
    return tuple(elf["version"]) if elf else None


def test_an_upgrade_on_a_card_with_amendment_h_keeps_the_personalised_data() -> None:
    world = installed_and_personalised()
    assert world.card.elf_upgrade
    release = new_version(world, (0, 1))
    job = update_applet_job(world, bank_sd(world), {"packages": [{"release": release.pk, "instances": [INSTANCE]}]})
    transport = Recording(world.card_transport())
    result = world.present(transport=transport)
    assert result.ok, result
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE, job.last_error
    assert INS_MANAGE_ELF_UPGRADE in transport.instructions  # an upgrade, not DELETE and reinstall
    assert 0xE4 not in transport.instructions  # no DELETE
    assert card_version(world) == (0, 1)
    assert world.card_transport().personalization(INSTANCE) == DATA
    assert CardPackage.objects.get(security_domain=bank_sd(world), package_aid=PACKAGE).package_version == "0.1"


def test_a_card_without_amendment_h_is_updated_by_delete_and_reinstall() -> None:
    world = installed_and_personalised()
    world.card.elf_upgrade = False
    world.card.save(update_fields=["elf_upgrade"])
    release = new_version(world, (0, 1))
    job = update_applet_job(world, bank_sd(world), {"packages": [{"release": release.pk, "instances": [INSTANCE]}]})
    transport = Recording(world.card_transport())
    assert world.present(transport=transport).ok
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE, job.last_error
    assert INS_MANAGE_ELF_UPGRADE not in transport.instructions and 0xE4 in transport.instructions
    assert card_version(world) == (0, 1)
    assert world.card_transport().personalization(INSTANCE) is None  # this path loses the data...


def upgrade_size() -> int:
    with rolled_back():
        world = installed_and_personalised()
        release = new_version(world, (0, 1))
        update_applet_job(world, bank_sd(world), {"packages": [{"release": release.pk, "instances": [INSTANCE]}]})
        result = world.present()
        assert result.ok
        return result.apdus


@pytest.mark.slow
@pytest.mark.parametrize("lose_response", [False, True], ids=["before-apdu", "after-apdu"])
def test_card_pulled_at_every_apdu_of_an_upgrade_ends_upgraded_with_its_data(lose_response: bool) -> None:
    for limit in range(upgrade_size()):
        with rolled_back():
            world = installed_and_personalised()
            release = new_version(world, (0, 1))
            job = update_applet_job(
                world, bank_sd(world), {"packages": [{"release": release.pk, "instances": [INSTANCE]}]}
            )
            with pytest.raises(PulledCard):
                world.present(transport=PullableCard(world.card_transport(), limit, lose_response=lose_response))
            # Whatever the cut, the card is old or new or in an upgrade session, never without the data.
            card = world.card_transport().card
            assert card_version(world) in (None, (0, 0), (0, 1))
            assert card.state.get("upgrade") is not None or world.card_transport().personalization(INSTANCE) == DATA
            for _ in range(3):  # a RECOVERY costs one presentation, the upgrade another
                job.refresh_from_db()
                if job.state == CardJob.State.DONE:
                    break
                world.present(server=ApiServer(world.token))
            job.refresh_from_db()
            assert job.state == CardJob.State.DONE, (limit, job.last_error)
            assert card_version(world) == (0, 1), limit
            assert world.card_transport().personalization(INSTANCE) == DATA, limit
            assert world.card_transport().card.state.get("upgrade") is None


# --------------------------------------------------------------------------- code signing (DAP)


def signing_world() -> tuple[OtaWorld, ec.EllipticCurvePrivateKey]:
    """Alpha signs its code: its DAP key is set before the citizen enrolls, so its SSD is created
    with DAP Verification and receives the key; its v0.0 release carries a valid signature."""
    world = build_ota_world(cap_file(EMPTY))
    alpha_key = ec.generate_private_key(ec.SECP256R1())
    set_bank_dap_key(bank=world.bank, point=dap.public_point(alpha_key.public_key()), actor=None)
    release = world.releases[PACKAGE]
    add_dap_signature(release=release, signature=dap.sign(alpha_key, bytes.fromhex(release.lfdb_sha256)), actor=None)
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    enroll(world)
    result = world.present()
    assert result.ok, result
    sd = bank_sd(world)
    assert int(sd.privileges[:2], 16) & 0x40  # DAP Verification (GPC 2.3.1 §11.1.2)
    assert world.card_transport().card.state["sds"][sd.aid]["keys"].get(f"{dap.DAP_KVN:02X}")
    return world, alpha_key


def test_a_signed_release_loads_and_one_signed_by_another_banks_key_is_refused_by_the_card() -> None:
    world, _alpha_key = signing_world()
    assert card_version(world) == (0, 0)  # the signed v0.0 was accepted by the card at enrollment

    # Beta's key is recorded as Alpha's (a confused or malicious record): the platform believes
    # the v0.1 signature, but the card holds Alpha's real key and refuses the load.
    beta_key = ec.generate_private_key(ec.SECP256R1())
    release = new_version(world, (0, 1))
    set_bank_dap_key(bank=world.bank, point=dap.public_point(beta_key.public_key()), actor=None)
    add_dap_signature(release=release, signature=dap.sign(beta_key, bytes.fromhex(release.lfdb_sha256)), actor=None)
    job = update_applet_job(world, bank_sd(world), {"packages": [{"release": release.pk, "instances": [INSTANCE]}]})
    for _ in range(MAX_ATTEMPTS + 1):  # each attempt fails with the card's reason; then the job fails
        world.present()
        job.refresh_from_db()
        if job.state == CardJob.State.FAILED:
            break
    assert job.state == CardJob.State.FAILED
    assert "DAP" in job.last_error and "6982" in job.last_error, job.last_error
    assert card_version(world) == (0, 0)  # fully old, with its instance
    assert world.card_transport().card.state["apps"].get(INSTANCE) is not None


def test_a_load_without_a_valid_signature_is_not_planned() -> None:
    world, _alpha_key = signing_world()
    release = new_version(world, (0, 1))
    release.dap_signature = "00" * 64  # tampered in the database
    release.save(update_fields=["dap_signature"])
    job = update_applet_job(world, bank_sd(world), {"packages": [{"release": release.pk, "instances": [INSTANCE]}]})
    world.present()
    job.refresh_from_db()
    assert job.state == CardJob.State.FAILED
    assert "DAP signature" in job.last_error
    assert card_version(world) == (0, 0)


def test_an_install_campaign_job_installs_with_its_privileges_and_parameters() -> None:
    world = build_ota_world(cap_file(EMPTY))
    release = world.releases[PACKAGE]
    enroll(world)
    assert world.present().ok
    other = "0102030405060709"
    install = [{"instance_aid": other, "privileges": "000120", "install_params": "AA01"}]  # §11.1.2
    job = update_applet_job(
        world, bank_sd(world), {"packages": [{"release": release.pk, "instances": [other], "install": install}]}
    )
    assert world.present().ok
    job.refresh_from_db()
    assert job.state == CardJob.State.DONE, job.last_error
    app = world.card_transport().card.state["apps"][other]
    assert app["privileges"] == "000120"  # Global Service, Contactless Activation
    assert bytes.fromhex(app["params"]).startswith(bytes.fromhex("C902AA01"))


def test_with_mandated_dap_the_cards_isd_checks_the_agencys_signature_on_every_load() -> None:
    from dataclasses import replace

    from cards import services as card_services
    from issuers import services as issuer_services
    from issuers.models import Membership
    from tests.factories import make_user
    from updates import services as update_services
    from updates.releases import set_mandated_dap_policy

    world = build_ota_world(cap_file(EMPTY))
    admin = make_user("agency_admin")
    issuer_services.add_member(organization=world.agency, user=admin, role=Membership.Role.ADMIN)
    _settings, signed = set_mandated_dap_policy(enabled=True, actor=admin)
    assert signed == 1  # the release approved before is signed by the agency now
    holder = make_user("citizen9")
    card = card_services.issue_card(agency=world.agency, holder=holder, emulated=True)  # issued under Mandated DAP
    _credential, token = update_services.issue_agent_credential(user=holder, name="reader")
    world = replace(world, citizen=holder, card=card, token=token)
    card.refresh_from_db()
    assert card.mandated_dap
    isd = world.card_transport().card.state["sds"][card.isd_aid]
    assert isd["keys"].get(f"{dap.DAP_KVN:02X}", {}).get("q") == code_signing.mandated_dap_public_point().hex().upper()

    release = world.releases[PACKAGE]
    world.bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": INSTANCE}]
    world.bank.ssd_template.save()
    enroll(world)
    assert world.present().ok  # the load carried the agency's DAP block, and the ISD accepted it
    assert card_version(world) == (0, 0)

    # Mandated DAP switched off on the platform: new releases carry no agency signature, but the
    # card issued under it still demands one and refuses the load.
    set_mandated_dap_policy(enabled=False, actor=admin)
    new = new_version(world, (0, 1))
    assert not new.agency_dap_signature
    job = update_applet_job(world, bank_sd(world), {"packages": [{"release": new.pk, "instances": [INSTANCE]}]})
    for _ in range(MAX_ATTEMPTS + 1):
        world.present()
        job.refresh_from_db()
        if job.state == CardJob.State.FAILED:
            break
    assert job.state == CardJob.State.FAILED and "DAP" in job.last_error, job.last_error
    assert card_version(world) == (0, 0)
    assert INSTANCE in world.card_transport().card.state["apps"]
