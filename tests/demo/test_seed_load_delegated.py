"""``seed_load --delegated`` and the delegated job of ``bench/bench_load.py --delegated``: the load
cards are enrolled with Load Bank D through its own key service (a subprocess), and the bench's
job, a key rotation of that SSD, runs through the service, its key versions wrapping from 0x3F
back to 0x31."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from bench.loadkit import Feeder
from cards.models import CardJob, Enrollment, SecurityDomain
from cardsim.transport import InProcessCard
from demo import key_services
from demo.management.commands.seed_load import DELEGATED_BANK_SLUG, DELEGATED_OPERATOR, InProcessRelay
from issuers.models import BankKeyService
from tests.keyservice_process import free_port_pair
from updates import services as update_services

pytestmark = pytest.mark.django_db

SCP11 = 0x11


@pytest.fixture(autouse=True)
def _dirs(tmp_path, settings):
    settings.ECARD_CARDS_DIR = tmp_path / "cards"
    settings.ECARD_KEYSERVICE_DIR = tmp_path / "keyservice"
    settings.ECARD_KEYSERVICE_CLIENT_DIR = tmp_path / "platform-identity"
    settings.VAR_DIR = tmp_path


def journal(directory: Path) -> list[dict[str, object]]:
    path = directory / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_delegated_seed_and_the_bench_job_run_through_the_key_service(tmp_path: Path) -> None:
    from agent.core import run_session

    tokens = tmp_path / "tokens.jsonl"
    port = free_port_pair()
    call_command("seed_load", "--cards", "2", "--tokens", str(tokens), stdout=io.StringIO())
    rows = [json.loads(line) for line in tokens.read_text().splitlines()]
    assert all("delegated_sd_id" not in row for row in rows)  # the default is unchanged: no Load Bank D
    assert not SecurityDomain.objects.filter(organization__slug=DELEGATED_BANK_SLUG).exists()

    args = ["seed_load", "--cards", "2", "--tokens", str(tokens), "--delegated", "--keyservice-port", str(port)]
    call_command(*args, stdout=io.StringIO())
    service = BankKeyService.objects.get(organization__slug=DELEGATED_BANK_SLUG, is_active=True)
    assert service.endpoint == f"https://127.0.0.1:{port}"
    directory = key_services.service_directory(service.organization)
    opened = [e for e in journal(directory) if e["action"] == "open"]
    rows = [json.loads(line) for line in tokens.read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        sd = SecurityDomain.objects.get(pk=row["delegated_sd_id"])
        assert sd.organization.slug == DELEGATED_BANK_SLUG and sd.scp == SCP11 and sd.card_id == row["card_id"]
        assert sd.state == SecurityDomain.State.ACTIVE
        assert Enrollment.objects.get(card_id=row["card_id"], bank=sd.organization).status == Enrollment.Status.ACTIVE
        assert any(e["card"] == row["cin"] for e in opened)  # the enrollment's channel: the service's
    # idempotent: nothing new is enrolled, the same SSDs are named
    call_command(*args, stdout=io.StringIO())
    again = [json.loads(line) for line in tokens.read_text().splitlines()]
    assert [r["delegated_sd_id"] for r in again] == [r["delegated_sd_id"] for r in rows]
    assert SecurityDomain.objects.filter(organization__slug=DELEGATED_BANK_SLUG).count() == 2

    # The bench's delegated job, queued by its feeder, presented as the agents present it.
    row = again[0]
    sd = SecurityDomain.objects.get(pk=row["delegated_sd_id"])
    operator = get_user_model().objects.get(username=DELEGATED_OPERATOR)
    feeder = Feeder(DELEGATED_OPERATOR, job="rotate")
    credential, _token = update_services.issue_agent_credential(user=sd.card.holder, name="test reader")
    seen = []
    before = len(journal(directory))
    with key_services.serving(directory, tmp_path / "keyservice.log"):
        for _ in range(17):  # from 0x31: 0x32 … 0x3F, then back to 0x31, 0x32, 0x33
            done, box = threading.Event(), []
            feeder._serve([(row["delegated_sd_id"], done, box)], operator)
            assert done.is_set() and box == []
            job = CardJob.objects.get(security_domain=sd, state__in=CardJob.OPEN_STATES)
            assert job.kind == CardJob.Kind.ROTATE_KEYS
            result = run_session(InProcessCard(row["state_file"]), InProcessRelay(credential))
            assert result.ok and result.pending == 0, result
            job.refresh_from_db()
            assert job.state == CardJob.State.DONE
            sd.refresh_from_db()
            seen.append(sd.key_kvn)
    assert seen == [*range(0x32, 0x40), 0x31, 0x32, 0x33]
    wraps = [e for e in journal(directory)[before:] if e["action"] == "wrap"]
    assert len(wraps) >= 17  # every rotation's PUT KEY was built and wrapped by the service

    # The bench's same-machine baseline: the same rotation in the load bank's SSD, platform custody.
    custody = SecurityDomain.objects.get(pk=row["sd_id"])
    assert custody.scp == 0x03 and custody.organization.slug == "loadbank"
    entries = len(journal(directory))
    done, box = threading.Event(), []
    Feeder("loadbank_op", job="rotate-custody")._serve([(row["sd_id"], done, box)], operator)
    assert box == []
    result = run_session(InProcessCard(row["state_file"]), InProcessRelay(credential))
    assert result.ok and result.pending == 0, result
    custody.refresh_from_db()
    assert custody.key_kvn == 0x32
    assert len(journal(directory)) == entries  # the service had no part in it
