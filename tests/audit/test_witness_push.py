"""The platform sends its checkpoints to a real witness process (``python -m audit.witness serve``
on a loopback port), stores the cosignatures, publishes them with the checkpoint, retries after the
witness was down, and records a witness's refusal in the log. A regulator's
``python -m audit.verify --witness … --quorum 1`` accepts the real export and rejects it once the
witness's line is removed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest
from django.conf import LazySettings
from django.core.management import call_command
from rest_framework.test import APIClient

from audit import services, tasks
from audit.checkpoint import make_checkpoint, parse_cosigner_vkey, verify_cosignatures
from audit.models import AuditEntry, Checkpoint, WitnessCosignature, WitnessRefusal
from audit.witness import add_checkpoint_body, submit
from cards import services as card_services
from ecard.celery import app
from issuers import custody, log_signing
from tests.audit.test_witness import free_port, wait_until_up
from tests.factories import World

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
NAME = "regulator.example/witness"
ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


class WitnessProcess:
    """The regulator's witness, as a separate process; ``start``/``stop`` keep its key and state."""

    def __init__(self, tmp_path: Path, log_vkey: str, origin: str) -> None:
        self.key = tmp_path / "witness.key"
        made = subprocess.run(
            [sys.executable, "-m", "audit.witness", "keygen", "--name", NAME, "--out", str(self.key)],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=REPO,
            timeout=30,
            check=True,
        )
        self.vkey = made.stdout.strip()
        self.state = tmp_path / "witness-state.json"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_vkey, self.origin = log_vkey, origin
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "audit.witness",
                "serve",
                "--key",
                str(self.key),
                "--log-origin",
                self.origin,
                "--log-key",
                self.log_vkey,
                "--port",
                str(self.port),
                "--state",
                str(self.state),
            ],
            env=ENV,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_until_up(self.url, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def known_size(self) -> int:
        return json.loads(self.state.read_text())["logs"][self.origin]["size"]


@pytest.fixture
def witness(world: World, tmp_path: Path, settings: LazySettings) -> Iterator[WitnessProcess]:
    w = WitnessProcess(tmp_path, services.log_verifier_key(), settings.ECARD_LOG_ORIGIN)
    settings.ECARD_WITNESSES = [(NAME, w.url, w.vkey)]
    settings.ECARD_WITNESS_TIMEOUT = 5
    try:
        yield w
    finally:
        w.stop()


def sign(capture: Callable) -> Checkpoint:
    """Sign a checkpoint and run what its commit queues (the push task, in-process)."""
    with capture(execute=True):
        checkpoint, _created = services.ensure_checkpoint()
    return Checkpoint.objects.get(pk=checkpoint.pk)


def push(*args: int) -> dict[str, str]:
    """The push task as Celery runs it in-process (the embedded default)."""
    return tasks.push_checkpoint.delay(*args).get()


def verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit.verify", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_honest_growth_is_cosigned_and_published(
    world: World, witness: WitnessProcess, tmp_path: Path, django_capture_on_commit_callbacks: Callable
) -> None:
    witness.start()
    first = sign(django_capture_on_commit_callbacks)
    assert witness.known_size() == first.size
    for _ in range(3):
        card_services.issue_card(agency=world.agency, holder=None)
    second = sign(django_capture_on_commit_callbacks)
    assert second.size > first.size and witness.known_size() == second.size  # old = first.size, with a proof
    cosig = WitnessCosignature.objects.get(checkpoint=second)
    assert second.published_text == second.text + cosig.line
    [verified] = verify_cosignatures(second.published_text, [parse_cosigner_vkey(witness.vkey)])
    assert verified.timestamp == cosig.timestamp
    assert push(second.size) == {NAME: "done"}  # idempotent: nothing sent again

    client = APIClient()
    client.force_authenticate(world.users["regulator"])
    latest = client.get("/api/v1/audit/checkpoints/latest/").json()
    assert latest["text"] == second.published_text and latest["cosignatures"][0]["key_name"] == NAME

    path = tmp_path / "log.jsonl"
    call_command("audit_export", str(path), "--latest")
    vkey = services.log_verifier_key()
    ok = verify(path, "--key", vkey, "--witness", witness.vkey, "--quorum", "1")
    assert ok.returncode == 0 and f"cosigned by {NAME}" in ok.stdout, ok.stderr
    header, *rest = path.read_text().splitlines(keepends=True)
    obj = json.loads(header)
    assert cosig.line in obj["checkpoint"]
    obj["checkpoint"] = obj["checkpoint"].replace(cosig.line, "")
    stripped = tmp_path / "stripped.jsonl"
    stripped.write_text(json.dumps(obj) + "\n" + "".join(rest))
    assert verify(stripped, "--key", vkey).returncode == 0  # the log's signature alone is intact
    bad = verify(stripped, "--key", vkey, "--witness", witness.vkey, "--quorum", "1")
    assert bad.returncode == 1 and "cosigned by 0 of the given witnesses, quorum is 1" in bad.stderr

    # a range export from the first checkpoint, verified incrementally on top of the full one
    state = tmp_path / "state.json"
    full = tmp_path / "first.jsonl"
    call_command("audit_export", str(full), "--to", str(first.size))
    assert verify(full, "--key", vkey, "--since", state).returncode == 0
    part = tmp_path / "part.jsonl"
    call_command("audit_export", str(part), "--from", str(first.size), "--to", str(second.size))
    inc = verify(part, "--key", vkey, "--since", state, "--witness", witness.vkey, "--quorum", "1")
    assert inc.returncode == 0 and f"read entries {first.size}..{second.size - 1}" in inc.stdout, inc.stderr
    assert json.loads(state.read_text())["size"] == second.size


def test_retry_after_the_witness_was_down(
    world: World, witness: WitnessProcess, django_capture_on_commit_callbacks: Callable
) -> None:
    checkpoint = sign(django_capture_on_commit_callbacks)  # the witness is not running yet
    assert not WitnessCosignature.objects.exists() and not WitnessRefusal.objects.exists()
    assert push(checkpoint.size) == {NAME: "unavailable"}
    # with a broker the task retries itself, backing off
    task = app.tasks["audit.tasks.push_checkpoint"]
    with mock.patch.object(task, "retry", side_effect=RuntimeError("retry")) as retry:
        task.push_request(is_eager=False, retries=2)
        try:
            with pytest.raises(RuntimeError, match="retry"):
                task.run(checkpoint.size)
        finally:
            task.pop_request()
    assert retry.call_args.kwargs["countdown"] == 20
    witness.start()
    assert push() == {NAME: "cosigned"}  # beat's run: the latest checkpoint
    assert WitnessCosignature.objects.filter(checkpoint=checkpoint).count() == 1
    assert witness.known_size() == checkpoint.size
    witness.stop()  # the witness restarts with its state: it still knows that size
    witness.start()
    card_services.issue_card(agency=world.agency, holder=None)
    later = sign(django_capture_on_commit_callbacks)
    assert WitnessCosignature.objects.filter(checkpoint=later).exists() and witness.known_size() == later.size


def test_a_witness_that_saw_a_fork_refuses_and_the_refusal_is_logged(
    world: World, witness: WitnessProcess, django_capture_on_commit_callbacks: Callable
) -> None:
    witness.start()
    services.sequence_pending()
    size = services.selectors.current_size()
    # someone with the log's key showed the witness another tree of the same size (a split view)
    forged = make_checkpoint(witness.origin, size, b"\x11" * 32, custody.load_private_key(log_signing.signing_keyset()))
    assert submit(witness.url, add_checkpoint_body(0, [], forged))[0] == 200
    checkpoint = sign(django_capture_on_commit_callbacks)
    assert checkpoint.size == size
    refusal = WitnessRefusal.objects.get(checkpoint=checkpoint, witness=NAME)
    assert refusal.status == 409 and "fork" in refusal.reason
    assert not WitnessCosignature.objects.exists() and checkpoint.published_text == checkpoint.text
    services.sequence_pending()
    entry = AuditEntry.objects.get(action="audit.witness_refused")
    assert (entry.subject_id, entry.outcome, entry.details["checkpoint_size"]) == (NAME, "denied", size)
    assert push(size) == {NAME: "refused"}
    assert AuditEntry.objects.filter(action="audit.witness_refused").count() == 1  # once per checkpoint


def test_bad_witness_configuration_is_a_clear_error(settings: LazySettings) -> None:
    settings.ECARD_WITNESSES = [("w", "http://127.0.0.1:1", "not-a-key")]
    with pytest.raises(services.ServiceError, match="witness w: bad verifier key"):
        services.configured_witnesses()
    settings.ECARD_WITNESSES = [("w", "ftp://x/", "not-a-key")]
    with pytest.raises(services.ServiceError, match="witness w: its URL must be"):
        services.configured_witnesses()
