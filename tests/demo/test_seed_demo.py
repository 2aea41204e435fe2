"""The demo seed: idempotent, complete, and its pending enrollment really runs over the air."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command

from cards.models import Card, CardJob, Enrollment
from demo.management.commands.seed_demo import DEMO_PASSWORD, DEMO_USERS
from issuers.custody_models import KeySet
from issuers.models import Organization
from tests.keyservice_process import free_port_pair, serving
from updates.models import Release

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _cards_dir(tmp_path, settings, monkeypatch):
    settings.ECARD_CARDS_DIR = tmp_path
    settings.ECARD_KEYSERVICE_DIR = tmp_path / "keyservice"
    settings.ECARD_KEYSERVICE_CLIENT_DIR = tmp_path / "platform-identity"
    monkeypatch.setenv("ECARD_DEMO_KEYSERVICE_PORT", str(free_port_pair()))


def counts() -> tuple[int, ...]:
    return (
        get_user_model().objects.count(),
        Organization.objects.count(),
        Card.objects.count(),
        Release.objects.count(),
        KeySet.objects.count(),
        Enrollment.objects.count(),
        CardJob.objects.count(),
    )


def test_seed_demo_is_idempotent_and_complete(tmp_path: Path) -> None:
    call_command("seed_demo")
    first = counts()
    call_command("seed_demo")
    assert counts() == first
    assert get_user_model().objects.filter(username__in=DEMO_USERS).count() == len(DEMO_USERS)
    for username in DEMO_USERS:
        assert authenticate(username=username, password=DEMO_PASSWORD) is not None
    assert set(Organization.objects.values_list("slug", "kind")) == {
        ("agency", "agency"),
        ("regulator", "regulator"),
        ("alpha", "bank"),
        ("beta", "bank"),
    }
    files = set()
    for number in (1, 2, 3):
        card = Card.objects.get(holder__username=f"citizen{number}")
        assert Path(card.state_file) == tmp_path / f"{card.cin}.json"  # one file per card, named by CIN
        assert Path(card.state_file).exists()
        files.add(card.state_file)
        out = io.StringIO()
        call_command("card_file", f"citizen{number}", stdout=out)
        assert out.getvalue().strip() == card.state_file
    assert len(files) == 3
    pending = CardJob.objects.get(card__holder__username="citizen1")
    assert pending.kind == CardJob.Kind.ENROLL_BANK and pending.organization.slug == "alpha"
    assert Release.objects.filter(bank__slug="alpha").count() == 2


def test_the_seeded_enrollment_runs_over_the_air_through_alphas_key_service(tmp_path: Path) -> None:
    from agent.core import run_session
    from cardsim.transport import InProcessCard
    from tests.otakit import ApiServer
    from updates.services import issue_agent_credential

    call_command("seed_demo")
    citizen = get_user_model().objects.get(username="citizen1")
    _credential, token = issue_agent_credential(user=citizen, name="demo reader")
    card = Card.objects.get(holder=citizen)
    transport = InProcessCard(card.state_file)
    transport.reset()
    with serving(tmp_path / "keyservice" / "alpha", tmp_path / "alpha-service.log"):
        result = run_session(transport, ApiServer(token))
    assert result.ok, result
    enrollment = Enrollment.objects.get(card=card)
    sd = enrollment.security_domain
    assert sd.scp == 0x11 and sd.key_kvn == 0x31  # keyed by Alpha's own service
    assert not KeySet.objects.filter(organization__slug="alpha", purpose=KeySet.Purpose.SCP_STATIC).exists()
    assert enrollment.status == Enrollment.Status.ACTIVE
    applet = enrollment.security_domain.applets.get()
    assert (applet.instance_aid, applet.package_version) == ("F0414C5048010101", "1.0")
