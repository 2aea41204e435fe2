"""Isolation matrix: every API endpoint and method, as each actor who must not see or change
Alpha Bank's content on citizen1's card. Refusals are 401/403/404/405 problem documents and no
response — list, error or pagination total — names anything of what is hidden."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from cards.models import CardJob
from tests.factories import World

pytestmark = pytest.mark.django_db

REFUSED = {401, 403, 404, 405}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: dict | None = None

    @property
    def is_write(self) -> bool:
        return self.method != "get"


def alpha_calls(world: World) -> list[Call]:
    """Every endpoint × method aimed at Alpha's content on card1 (and at Alpha itself)."""
    card1 = world.cards["card1"]
    sd = world.sds["alpha@card1"]
    applet = world.applets["alpha@card1"]
    enrollment = world.enrollments["alpha@card1"]
    job = CardJob.objects.filter(security_domain=sd).first()
    member = world.alpha.memberships.first()
    calls = [
        Call("get", f"/api/v1/organizations/{world.alpha.pk}/"),
        Call("patch", f"/api/v1/organizations/{world.alpha.pk}/", {"is_active": False}),
        Call("put", f"/api/v1/organizations/{world.alpha.pk}/", {"is_active": False}),
        Call("delete", f"/api/v1/organizations/{world.alpha.pk}/"),
        Call("post", "/api/v1/organizations/", {"name": "Gamma", "rid": "A000000777"}),
        Call("get", f"/api/v1/members/{member.pk}/"),
        Call("delete", f"/api/v1/members/{member.pk}/"),
        Call("post", "/api/v1/members/", {"organization": "alpha", "username": "outsider", "role": "admin"}),
        Call("get", f"/api/v1/cards/{card1.pk}/"),
        Call("patch", f"/api/v1/cards/{card1.pk}/", {"holder": "outsider"}),
        Call("delete", f"/api/v1/cards/{card1.pk}/"),
        Call("post", "/api/v1/cards/", {"holder": "outsider"}),
        Call("get", f"/api/v1/security-domains/{sd.pk}/"),
        Call("post", f"/api/v1/security-domains/{sd.pk}/rotate-keys/"),
        Call("post", f"/api/v1/security-domains/{sd.pk}/lock/"),
        Call("post", f"/api/v1/security-domains/{sd.pk}/unlock/"),
        Call("delete", f"/api/v1/security-domains/{sd.pk}/"),
        Call("patch", f"/api/v1/security-domains/{sd.pk}/", {"aid": "A000000001"}),
        Call("get", f"/api/v1/applets/{applet.pk}/"),
        Call("delete", f"/api/v1/applets/{applet.pk}/"),
        Call("post", "/api/v1/applets/", {"instance_aid": "A000000001"}),
        Call("get", f"/api/v1/enrollments/{enrollment.pk}/"),
        Call("delete", f"/api/v1/enrollments/{enrollment.pk}/"),
        Call(
            "post", "/api/v1/enrollments/", {"card": card1.cin, "bank": "beta", "consent_text": "x", "accepted": True}
        ),
        Call("get", f"/api/v1/enrollments/consent/?card={card1.cin}&bank=beta"),
        Call("get", f"/api/v1/jobs/{job.pk}/"),
        Call("delete", f"/api/v1/jobs/{job.pk}/"),
        Call("post", "/api/v1/jobs/", {"kind": "rotate_keys"}),
    ]
    return calls


LIST_PATHS = (
    "/api/v1/organizations/",
    "/api/v1/members/",
    "/api/v1/cards/",
    "/api/v1/security-domains/",
    "/api/v1/applets/",
    "/api/v1/packages/",
    "/api/v1/enrollments/",
    "/api/v1/jobs/",
    "/api/v1/key-sets/",
)


def secrets_of_alpha_on_card1(world: World) -> list[str]:
    """Strings that must not appear in any response to someone outside Alpha and card1."""
    return [
        world.cards["card1"].cin,
        world.sds["alpha@card1"].aid,
        world.applets["alpha@card1"].instance_aid,
        World.ALPHA_RID + "01",  # Alpha's AID prefix
    ]


def client_for(world: World, username: str | None) -> APIClient:
    client = APIClient()
    if username is not None:
        client.force_authenticate(world.users[username])
    return client


def send(client: APIClient, call: Call):
    return getattr(client, call.method)(call.path, data=call.body, format="json")


@pytest.mark.parametrize("actor", [None, "citizen2", "beta_op", "beta_admin", "outsider"])
def test_outsiders_are_refused_and_learn_nothing(world: World, actor: str | None) -> None:
    client = client_for(world, actor)
    hidden = secrets_of_alpha_on_card1(world)
    for call in alpha_calls(world):
        if (
            actor in ("citizen2", "outsider")
            and call.path.startswith("/api/v1/organizations/")
            and call.method == "get"
        ):
            continue  # citizens may look up banks by name to enroll (checked below: no AIDs)
        response = send(client, call)
        assert response.status_code in REFUSED, (actor, call, response.status_code, response.content[:300])
        assert response["Content-Type"].startswith("application/problem+json"), (actor, call)
        text = response.content.decode()
        for secret in hidden:
            assert secret not in text, (actor, call, secret)
    for path in LIST_PATHS:
        response = client.get(path)
        if actor is None:
            assert response.status_code in (401, 403)
            continue
        assert response.status_code == 200, (actor, path)
        text = json.dumps(response.json())
        for secret in hidden:
            assert secret not in text, (actor, path, secret)
        body = response.json()
        assert body["count"] == len(body["results"]), "a pagination total must count only visible rows"


def test_a_bank_sees_only_its_own_domains_on_a_shared_card(world: World) -> None:
    client = client_for(world, "beta_op")
    sds = client.get("/api/v1/security-domains/").json()
    assert {sd["organization"] for sd in sds["results"]} == {"beta"}
    assert sds["count"] == 2  # card2 and card3
    cards = client.get("/api/v1/cards/").json()
    assert {c["cin"] for c in cards["results"]} == {world.cards["card2"].cin, world.cards["card3"].cin}
    assert all(set(c) == {"id", "cin", "lifecycle"} for c in cards["results"]), "banks never see holders"
    card3 = client.get(f"/api/v1/cards/{world.cards['card3'].pk}/").json()
    assert "holder" not in card3
    applets = client.get("/api/v1/applets/").json()
    assert {a["security_domain"] for a in applets["results"]} == {
        world.sds["beta@card2"].aid,
        world.sds["beta@card3"].aid,
    }
    orgs = client.get("/api/v1/organizations/").json()
    assert [o["slug"] for o in orgs["results"]] == ["beta"]


def test_citizens_see_banks_to_enroll_but_no_aid_ranges(world: World) -> None:
    client = client_for(world, "citizen2")
    orgs = client.get("/api/v1/organizations/").json()["results"]
    assert {o["slug"] for o in orgs} == {"alpha", "beta"}
    assert all(o["aid_ranges"] is None and o["ssd_template"] is None for o in orgs)
    cards = client.get("/api/v1/cards/").json()["results"]
    assert [c["cin"] for c in cards] == [world.cards["card2"].cin]
    assert cards[0]["holder"] == "citizen2"


def test_owners_see_what_outsiders_cannot(world: World) -> None:
    """Positive control: the same reads succeed for Alpha and for citizen1, so the refusals above
    are scoping, not a broken endpoint."""
    hidden = secrets_of_alpha_on_card1(world)
    for actor in ("alpha_op", "citizen1", "agency_op", "regulator"):
        client = client_for(world, actor)
        seen = ""
        for call in alpha_calls(world):
            if call.method == "get" and "/consent/" not in call.path and "/members/" not in call.path:
                if actor == "citizen1" and "/organizations/" in call.path:
                    continue
                response = send(client, call)
                assert response.status_code == 200, (actor, call, response.content[:200])
                seen += response.content.decode()
        for path in LIST_PATHS:
            seen += client.get(path).content.decode()
        for secret in hidden:
            assert secret in seen, (actor, secret)


@pytest.mark.parametrize("actor", ["regulator"])
def test_regulators_read_everything_and_write_nothing(world: World, actor: str) -> None:
    client = client_for(world, actor)
    for path in LIST_PATHS:
        body = client.get(path).json()
        assert body["count"] > 0, path
    for call in alpha_calls(world):
        if call.is_write:
            response = send(client, call)
            assert response.status_code in (403, 405), (call, response.status_code)
    card = client.get(f"/api/v1/cards/{world.cards['card1'].pk}/").json()
    assert card["holder"] is None, "regulators see no personal data beyond the card identifier"


def test_bank_auditor_reads_but_cannot_act(world: World) -> None:
    client = client_for(world, "alpha_auditor")
    sd = world.sds["alpha@card1"]
    assert client.get(f"/api/v1/security-domains/{sd.pk}/").status_code == 200
    assert client.post(f"/api/v1/security-domains/{sd.pk}/rotate-keys/").status_code == 403


def test_key_set_metadata_visibility(world: World) -> None:
    """Banks see their own key sets in full, never another bank's; the agency sees a bank's KVN and
    algorithm but no check values; regulators see metadata; citizens nothing; no key bytes ever."""
    from issuers import custody
    from issuers.custody_models import KeySet
    from updates.ota import ensure_bank_keyset

    job = CardJob.objects.filter(security_domain=world.sds["alpha@card1"]).first()
    alpha_set = ensure_bank_keyset(job, world.sds["alpha@card1"], 0x31)
    keys = custody.load_static_keys(alpha_set)
    secrets = [keys.enc.hex(), keys.enc.hex().upper(), keys.mac.hex().upper(), keys.dek.hex().upper()]

    own = client_for(world, "alpha_op").get("/api/v1/key-sets/").json()["results"]
    assert {k["organization"] for k in own} == {"alpha"}
    mine = next(k for k in own if k["id"] == alpha_set.pk)
    assert mine["kcv"] == {"enc": alpha_set.kcv_enc, "mac": alpha_set.kcv_mac, "dek": alpha_set.kcv_dek}
    assert mine["kvn"] == 0x31 and mine["key_length"] == 16

    beta = client_for(world, "beta_op").get("/api/v1/key-sets/").json()["results"]
    assert all(k["organization"] == "beta" for k in beta)
    assert client_for(world, "beta_op").get(f"/api/v1/key-sets/{alpha_set.pk}/").status_code == 404

    agency_view = client_for(world, "agency_op").get(f"/api/v1/key-sets/{alpha_set.pk}/").json()
    assert agency_view["kvn"] == 0x31 and agency_view["algorithm"] == "aes"
    assert "kcv" not in agency_view and "key_length" not in agency_view

    regulator_view = client_for(world, "regulator").get(f"/api/v1/key-sets/{alpha_set.pk}/").json()
    assert regulator_view["kcv"]["enc"] == alpha_set.kcv_enc

    assert client_for(world, "citizen1").get("/api/v1/key-sets/").json()["count"] == 0
    for actor in ("alpha_op", "agency_op", "regulator"):
        body = client_for(world, actor).get("/api/v1/key-sets/?limit=500").content.decode()
        assert not any(secret in body for secret in secrets)
    assert KeySet.objects.filter(pk=alpha_set.pk).exists()
