"""Round trips (issue 6, acceptance 2): HTTP exchanges per job do not grow with the CAP's size.

Counted through the relay API (Django's test client) with the in-process emulated card: an
enrollment, then one ``update_applet`` job per test CAP in ``../shared/testdata/cap`` (libraries
before the service that imports them) and per synthetic CAP of 10 and 30 KB. Every load job takes
the same number of exchanges — identify, open the SSD's channel, authenticate and read the
registry, the whole secured script — whatever the number of LOAD blocks.
"""

from __future__ import annotations

import pytest

from bench.bench_ota import synthetic_cap
from cards.models import CardJob
from issuers import services as issuer_services
from tests.otakit import ApiServer, assert_registry_matches_records, build_ota_world, card_registry, enroll
from tests.shared_data import cap_file
from updates.releases import create_release

pytestmark = pytest.mark.django_db

EMPTY = "Empty_0102030405_8d5ac9e2_2.2.1.cap"
# load order: the openjavacard libraries before the service importing them
CAPS = [
    EMPTY,
    "openjavacard-lib-ber.cap",
    "openjavacard-lib-debug.cap",
    "openjavacard-svc-debug.cap",
    "AlgTest_v1.6_supportOnly_jc212.cap",
]


def count(world, mode: str = "batch") -> tuple[int, int, int]:
    """Present the card once: (HTTP exchanges, round trips the session reports, APDUs)."""
    server = ApiServer(world.token)
    result = world.present(server=server, mode=mode)
    assert result.ok and result.pending == 0, result
    assert server.requests == result.round_trips
    return server.requests, result.round_trips, result.apdus


def load_job(world, sd_id: int, release) -> CardJob:
    return CardJob.objects.create(
        card=world.card,
        kind=CardJob.Kind.UPDATE_APPLET,
        organization=world.bank,
        security_domain_id=sd_id,
        params={"packages": [{"release": release.pk, "instances": list(release.applet_aids)}]},
    )


def test_round_trips_do_not_grow_with_cap_size(capsys) -> None:
    world = build_ota_world()
    issuer_services.add_aid_range(organization=world.bank, rid="A00000FFFF")  # openjavacard
    issuer_services.add_aid_range(organization=world.bank, rid="6D79706163")  # AlgTest ("mypac...")
    enrollment = enroll(world)
    enroll_trips, _, enroll_apdus = count(world)
    rows = [("enrollment (SSD, bank keys)", 0, enroll_trips, enroll_apdus)]

    loads: list[tuple[str, int, int, int]] = []
    for name in CAPS:
        path = cap_file(name)
        release = create_release(bank=world.bank, cap_bytes=path.read_bytes(), filename=name, actor=world.operator)
        load_job(world, enrollment.security_domain_id, release)
        trips, _, apdus = count(world)
        loads.append((name, release.lfdb_size, trips, apdus))
    for kib, version in ((10, (1, 0)), (30, (2, 0))):
        cap = synthetic_cap(cap_file(EMPTY).read_bytes(), kib * 1024, version=version)
        release = create_release(bank=world.bank, cap_bytes=cap, filename=f"synthetic-{kib}k.cap", actor=world.operator)
        load_job(world, enrollment.security_domain_id, release)  # an upgrade: DELETE the old version, LOAD, INSTALL
        trips, _, apdus = count(world)
        loads.append((f"synthetic {kib} KB (upgrade: DELETE, LOAD)", release.lfdb_size, trips, apdus))
    on_card = card_registry(world)
    assert {"A00000FFFFA0", "A00000FFFFA3", "A00000FFFFA4", "6D797061636B616731", "0102030405"} <= on_card["elfs"]
    assert {"A00000FFFFA401", "6D7970616330303031", "0102030405060708"} <= on_card["apps"]
    assert_registry_matches_records(world)  # libraries included: the platform records every load file

    with capsys.disabled():
        print("\nHTTP exchanges per job (batched relay):")
        for name, size, trips, apdus in rows + loads:
            print(f"  {name:<40} LFDB {size or '-':>6} B  {trips} exchanges  {apdus:>3} APDUs")
    # more LOAD blocks, same number of exchanges
    assert {trips for _, _, trips, _ in loads} == {loads[0][2]}, loads
    assert loads[-1][3] > loads[0][3] + 100  # the 30 KB load needs over a hundred more APDUs
    assert enroll_trips <= 12


def test_per_apdu_mode_needs_a_round_trip_per_apdu() -> None:
    world = build_ota_world(cap_file(EMPTY))
    enrollment = enroll(world)
    count(world)
    release = create_release(
        bank=world.bank,
        cap_bytes=synthetic_cap(cap_file(EMPTY).read_bytes(), 10 * 1024),
        filename="synthetic-10k.cap",
        actor=world.operator,
    )
    load_job(world, enrollment.security_domain_id, release)
    trips, _, apdus = count(world, mode="apdu")
    assert trips == apdus + 1  # one exchange per APDU, plus the session's opening
