"""Rollouts end to end: emulated cards presented through the in-process agent and the relay API.

A fleet of citizens, each with an emulated card carrying Alpha Bank's wallet v1 and Beta Bank's
applet (both banks enrolled over the air). Alpha uploads v2 through the API and rolls it out in
groups; cards presented over time get v2 only once their group is active.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import pytest
from rest_framework.test import APIClient

from agent.core import run_session
from audit.models import AuditEntry
from cards import services as card_services
from cards.models import AppletInstance, Card, CardJob, SecurityDomain
from cardsim.transport import InProcessCard
from gp import commands
from gp.scp import SCP03
from issuers import custody
from issuers import services as issuer_services
from issuers.models import Membership, Organization
from tests.factories import make_user
from tests.otakit import ApiServer
from updates.demo_cap import build_cap
from updates.models import Release, Rollout, RolloutTarget
from updates.releases import create_release

pytestmark = pytest.mark.django_db

ALPHA_RID, BETA_RID = "F0414C5048", "F042455441"
ALPHA_PKG, ALPHA_APPLET, ALPHA_INSTANCE = ALPHA_RID + "01", ALPHA_RID + "0101", ALPHA_RID + "010101"
BETA_PKG, BETA_APPLET, BETA_INSTANCE = BETA_RID + "01", BETA_RID + "0101", BETA_RID + "010101"


@dataclass
class Holder:
    citizen: Any
    card: Card
    token: str

    def transport(self) -> InProcessCard:
        transport = InProcessCard(self.card.state_file)
        transport.reset()
        return transport

    def present(self, transport: Any = None) -> Any:
        result = run_session(transport or self.transport(), ApiServer(self.token), mode="batch")
        return result


@dataclass
class Fleet:
    agency: Organization
    alpha: Organization
    beta: Organization
    alpha_op: Any
    alpha_op2: Any
    beta_op: Any
    alpha_v1: Release
    beta_v1: Release
    holders: list[Holder] = field(default_factory=list)

    def api(self, user: Any) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client

    def holder(self, card_id: int) -> Holder:
        return next(h for h in self.holders if h.card.pk == card_id)


def alpha_cap(version: tuple[int, int], code_size: int = 512) -> bytes:
    return build_cap(ALPHA_PKG, [ALPHA_APPLET], version, name="alpha.wallet", code_size=code_size)


def build_fleet(cards: int) -> Fleet:
    """Agency, Alpha and Beta (default applets v1), ``cards`` citizens with emulated cards on which
    both banks are enrolled over the air."""
    agency = issuer_services.create_organization(name="National Card Agency", slug="agency", kind="agency")
    alpha = issuer_services.admit_bank(name="Alpha Bank", slug="alpha", rid=ALPHA_RID)
    beta = issuer_services.admit_bank(name="Beta Bank", slug="beta", rid=BETA_RID)
    users = {}
    for name, bank in (("alpha_op", alpha), ("alpha_op2", alpha), ("beta_op", beta)):
        users[name] = make_user(name)
        issuer_services.add_member(organization=bank, user=users[name], role=Membership.Role.OPERATOR)
    alpha_v1 = create_release(
        bank=alpha, cap_bytes=alpha_cap((1, 0)), filename="alpha-1.0.cap", actor=users["alpha_op"]
    )
    beta_v1 = create_release(
        bank=beta, cap_bytes=build_cap(BETA_PKG, [BETA_APPLET], (1, 0), name="beta.pay"), filename="beta-1.0.cap"
    )
    for bank, release, instance in ((alpha, alpha_v1, ALPHA_INSTANCE), (beta, beta_v1, BETA_INSTANCE)):
        bank.ssd_template.default_applets = [{"release": release.pk, "instance_aid": instance}]
        bank.ssd_template.save()
    fleet = Fleet(agency, alpha, beta, users["alpha_op"], users["alpha_op2"], users["beta_op"], alpha_v1, beta_v1)
    from updates import services as update_services

    for number in range(cards):
        citizen = make_user(f"citizen{number}")
        card = card_services.issue_card(agency=agency, holder=citizen, emulated=True)
        _credential, token = update_services.issue_agent_credential(user=citizen, name="reader")
        for bank in (alpha, beta):
            card_services.request_enrollment(
                card=card,
                bank=bank,
                citizen=citizen,
                consent_text=card_services.consent_text_for(card, bank),
                accepted=True,
            )
        holder = Holder(citizen, card, token)
        result = holder.present()
        assert result.ok and result.pending == 0, result
        fleet.holders.append(holder)
    return fleet


def card_content(holder: Holder) -> dict[str, tuple[int, str]]:
    """The card's registry through an ISD session (GET STATUS): AID -> (life cycle, version)."""
    card = holder.card
    transport = holder.transport()
    keys = custody.card_isd_keys(card.issued_by, card.cin, bytes.fromhex(card.kdd), card.key_scheme)
    assert transport.transmit(commands.select(bytes.fromhex(card.isd_aid)))[-2:] == b"\x90\x00"
    channel = SCP03(keys, 0x33)
    response = transport.transmit(channel.initialize_update())
    assert transport.transmit(channel.external_authenticate(response))[-2:] == b"\x90\x00"
    content: dict[str, tuple[int, str]] = {}
    for p1 in (0x40, 0x20):
        command = commands.get_status(p1)
        while True:
            plain = channel.unwrap(transport.transmit(channel.wrap(command)))
            if plain[-2:] in (b"\x90\x00", b"\x63\x10"):
                for entry in commands.parse_get_status(plain[:-2], p1):
                    version = entry.elf_version
                    content[entry.aid.hex().upper()] = (
                        entry.lifecycle,
                        f"{version[0]}.{version[1]}" if version and len(version) == 2 else "",
                    )
            if plain[-2:] != b"\x63\x10":
                break
            command = commands.get_status(p1, next_occurrence=True)
    return content


def beta_view(content: dict[str, tuple[int, str]], beta_sd: str) -> dict[str, tuple[int, str]]:
    return {aid: v for aid, v in content.items() if aid.startswith(BETA_RID) or aid == beta_sd}


def upload(fleet: Fleet, cap: bytes, name: str, user: Any = None) -> Any:
    handle = io.BytesIO(cap)
    handle.name = name
    return fleet.api(user or fleet.alpha_op).post(
        "/api/v1/releases/", {"cap_file": handle, "changelog": "faster PIN"}, format="multipart"
    )


def group_of(rollout: Rollout) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for card_id, index in RolloutTarget.objects.filter(rollout=rollout).values_list("card_id", "group__index"):
        groups.setdefault(index, []).append(card_id)
    return groups


def alpha_version(holder: Holder) -> str:
    return card_content(holder)[ALPHA_PKG][1]


def test_rollout_in_three_groups_updates_every_card_and_leaves_beta_untouched() -> None:
    fleet = build_fleet(20)
    beta_sds = {h.card.pk: SecurityDomain.objects.get(card=h.card, organization=fleet.beta).aid for h in fleet.holders}
    before = {h.card.pk: beta_view(card_content(h), beta_sds[h.card.pk]) for h in fleet.holders}
    assert all(ALPHA_PKG not in b and BETA_PKG in b and BETA_INSTANCE in b for b in before.values())
    beta_records = sorted(
        AppletInstance.objects.filter(security_domain__organization=fleet.beta).values_list(
            "security_domain__card_id", "instance_aid", "package_version"
        )
    )

    response = upload(fleet, alpha_cap((2, 0), code_size=900), "alpha-2.0.cap")
    assert response.status_code == 201, response.content
    v2 = response.json()
    assert v2["version"] == "2.0" and v2["state"] == "approved" and v2["bank"] == "alpha"

    api = fleet.api(fleet.alpha_op)
    response = api.post(
        "/api/v1/rollouts/",
        {
            "release": v2["id"],
            "from_version": "1.0",
            "groups": ["10%", "50%", "100%"],
            "success_threshold": 100,
            "error_threshold": 20,
            "require_approval": True,
            "name": "wallet 2.0",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "awaiting_approval" and body["total"] == 20
    assert [g["total"] for g in body["progress"]["groups"]] == [2, 8, 10]
    rollout = Rollout.objects.get(pk=body["id"])
    # Four eyes: the creator cannot approve or start it; a second Alpha operator approves.
    assert api.post(f"/api/v1/rollouts/{rollout.pk}/approve/").status_code == 403
    assert api.post(f"/api/v1/rollouts/{rollout.pk}/start/").status_code == 409
    assert fleet.api(fleet.alpha_op2).post(f"/api/v1/rollouts/{rollout.pk}/approve/").json()["state"] == "ready"
    assert not CardJob.objects.filter(kind=CardJob.Kind.UPDATE_APPLET).exists()
    assert api.post(f"/api/v1/rollouts/{rollout.pk}/start/").json()["state"] == "running"

    groups = group_of(rollout)
    assert [len(groups[i]) for i in (1, 2, 3)] == [2, 8, 10]
    for index in (1, 2, 3):
        later = [cid for i in range(index + 1, 4) for cid in groups[i]]
        # Cards of groups not yet active are presented first: nothing for them.
        for card_id in later:
            result = fleet.holder(card_id).present()
            assert result.ok and result.jobs == [], result
            assert alpha_version(fleet.holder(card_id)) == "1.0"
        for card_id in groups[index]:
            result = fleet.holder(card_id).present()
            assert result.ok and [j["state"] for j in result.jobs] == ["done"], result
            assert alpha_version(fleet.holder(card_id)) == "2.0"
        progress = api.get(f"/api/v1/rollouts/{rollout.pk}/").json()["progress"]
        assert progress["groups"][index - 1]["succeeded"] == len(groups[index])

    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.COMPLETED
    body = api.get(f"/api/v1/rollouts/{rollout.pk}/").json()
    assert body["progress"]["overall"]["succeeded"] == 20 and body["progress"]["overall"]["failed"] == 0
    assert [g["state"] for g in body["progress"]["groups"]] == ["done", "done", "done"]

    for holder in fleet.holders:
        content = card_content(holder)
        assert content[ALPHA_PKG][1] == "2.0", content  # GET STATUS shows the new package version
        assert ALPHA_INSTANCE in content
        assert beta_view(content, beta_sds[holder.card.pk]) == before[holder.card.pk]  # Beta untouched
        target = RolloutTarget.objects.get(rollout=rollout, card=holder.card)
        assert target.status == RolloutTarget.Status.SUCCEEDED and target.attempts == 1
        # Every delegated operation of the update came back with a receipt that verified.
        receipts = set(
            AuditEntry.objects.filter(subject_type="card_job", subject_id=str(target.job_id)).values_list(
                "action", flat=True
            )
        )
        # An emulated card upgrades in place (GP Amendment H): no DELETE nor INSTALL, its
        # instance kept; the new version's LOAD still comes back with its receipt.
        assert {"receipt.load", "job.done"} <= receipts, receipts
        assert not {"receipt.delete", "receipt.install"} & receipts, receipts
        assert (
            AppletInstance.objects.get(security_domain__card=holder.card, instance_aid=ALPHA_INSTANCE).package_version
            == "2.0"
        )
    assert (
        sorted(
            AppletInstance.objects.filter(security_domain__organization=fleet.beta).values_list(
                "security_domain__card_id", "instance_aid", "package_version"
            )
        )
        == beta_records
    )
    actions = list(
        AuditEntry.objects.filter(subject_type="rollout", subject_id=str(rollout.pk)).values_list("action", flat=True)
    )
    for action in (
        "rollout.created",
        "rollout.approved",
        "rollout.started",
        "rollout.group_started",
        "rollout.group_done",
        "rollout.completed",
    ):
        assert action in actions, (action, actions)
    assert actions.count("rollout.group_started") == 3 and actions.count("rollout.card_result") == 20


def shrink_memory(holder: Holder) -> None:
    """Inject a card error: leave the card too little memory for v2 (LOAD answers 6A84)."""
    transport = holder.transport()
    state = transport.state
    used = transport.card._memory_used()
    state["memory_total"] = used + 200
    from cardsim import store

    store.save(holder.card.state_file, state)


def restore_memory(holder: Holder) -> None:
    transport = holder.transport()
    state = transport.state
    state["memory_total"] = 64 * 1024
    from cardsim import store

    store.save(holder.card.state_file, state)


def test_error_threshold_pauses_the_rollout_and_resume_after_a_fix_completes_it() -> None:
    fleet = build_fleet(10)
    # Cards without ELF upgrade: DELETE, then a LOAD the card refuses for memory (6A84); an
    # upgrade's refusals and recovery are tests/updates/test_elf_upgrade.py's.
    Card.objects.filter(pk__in=[h.card.pk for h in fleet.holders]).update(elf_upgrade=False)
    release = create_release(
        bank=fleet.alpha, cap_bytes=alpha_cap((2, 0), code_size=2000), filename="a2.cap", actor=fleet.alpha_op
    )
    api = fleet.api(fleet.alpha_op)
    response = api.post(
        "/api/v1/rollouts/",
        {
            "release": release.pk,
            "groups": ["100%"],
            "error_threshold": 30,
            "retry_count": 1,
            "retry_backoff": 3600,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    rollout = Rollout.objects.get(pk=response.json()["id"])
    assert api.post(f"/api/v1/rollouts/{rollout.pk}/start/").json()["state"] == "running"
    failing = fleet.holders[:3]  # 30% of the group
    for holder in failing:
        shrink_memory(holder)
    healthy = fleet.holders[3:]
    for holder in healthy[:4]:
        assert holder.present().ok
    for holder in failing:
        result = holder.present()
        assert result.jobs and result.jobs[0]["state"] in ("pending", "failed"), result
        assert "6A84" in result.jobs[0]["error"]
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.PAUSED, rollout.pause_reason
    assert "3 of 10 cards failed" in rollout.pause_reason
    # Paused: the cards not yet reached get nothing.
    untouched = healthy[4:]
    for holder in untouched:
        result = holder.present()
        assert result.jobs == [], result
        assert alpha_version(holder) == "1.0"
    body = api.get(f"/api/v1/rollouts/{rollout.pk}/").json()
    assert body["progress"]["overall"] == {**body["progress"]["overall"], "failed": 3, "succeeded": 4, "pending": 3}
    failures = api.get(f"/api/v1/rollouts/{rollout.pk}/failures/").json()
    assert failures["failed"] == 3 and "6A84" in failures["reasons"][0]["reason"]
    failed_cards = api.get(f"/api/v1/rollouts/{rollout.pk}/cards/?status=failed").json()
    assert failed_cards["count"] == 3 and all("6A84" in row["last_error"] for row in failed_cards["results"])
    assert AuditEntry.objects.filter(action="rollout.paused", subject_id=str(rollout.pk)).exists()

    for holder in failing:  # the fix: enough memory on the cards
        restore_memory(holder)
    assert api.post(f"/api/v1/rollouts/{rollout.pk}/resume/").json()["state"] == "running"
    for holder in failing + untouched:
        result = holder.present()
        assert result.ok and [j["state"] for j in result.jobs] == ["done"], result
        assert alpha_version(holder) == "2.0"
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.COMPLETED
    overall = api.get(f"/api/v1/rollouts/{rollout.pk}/").json()["progress"]["overall"]
    assert overall["succeeded"] == 10 and overall["failed"] == 0
    assert RolloutTarget.objects.get(rollout=rollout, card=failing[0].card).attempts == 2
