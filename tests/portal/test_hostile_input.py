"""Hostile input to the portal is a clear 4xx, never a 500 (security review, "inputs that give 500"):
non-integer record ids in POSTs, malformed agency CSV batches, oversized uploads."""

from __future__ import annotations

import io

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from cards.models import Card
from portal import batch
from tests.factories import World
from updates import services as update_services
from updates.models import AgentCredential

pytestmark = pytest.mark.django_db


# ------------------------------------------------------------------------------------ record ids


@pytest.mark.parametrize("value", ["abc", "-1", "0", "1.5", "1e3", "", " ", "\x00", str(10**30), "٣"])
def test_revoking_a_credential_with_a_malformed_id_is_a_404(world: World, as_user, value: str) -> None:
    """The reported 500: POST /card/connect/ with action=revoke&id=abc."""
    credential, _token = update_services.issue_agent_credential(user=world.users["citizen1"], name="reader")
    client = as_user("citizen1")  # raises on a server error instead of answering 500
    response = client.post("/card/connect/", {"action": "revoke", "id": value})
    assert response.status_code == 404
    credential.refresh_from_db()
    assert credential.revoked_at is None


def test_revoking_without_an_id_is_a_404(world: World, as_user) -> None:
    assert as_user("citizen1").post("/card/connect/", {"action": "revoke"}).status_code == 404


def test_revoking_with_a_valid_id_still_works(world: World, as_user) -> None:
    credential, _token = update_services.issue_agent_credential(user=world.users["citizen1"], name="reader")
    response = as_user("citizen1").post("/card/connect/", {"action": "revoke", "id": str(credential.pk)})
    assert response.status_code == 302
    assert AgentCredential.objects.get(pk=credential.pk).revoked_at is not None


def test_another_citizens_credential_id_is_a_404(world: World, as_user) -> None:
    credential, _token = update_services.issue_agent_credential(user=world.users["citizen2"], name="reader")
    assert as_user("citizen1").post("/card/connect/", {"action": "revoke", "id": credential.pk}).status_code == 404


@pytest.mark.parametrize("value", ["abc", "-1", str(10**30)])
def test_malformed_ids_and_pages_in_other_portal_pages_are_not_500s(world: World, as_user, value: str) -> None:
    bank = as_user("alpha_op")
    assert bank.get(f"/bank/alpha/rollouts/?release={value}").status_code == 200
    assert (
        bank.post(
            "/bank/alpha/rollouts/",
            {
                "release": value,
                "groups": "100%",
                "success_threshold": value,
                "error_threshold": "1",
                "retry_count": "1",
            },
        ).status_code
        == 400
    )
    agency = as_user("agency_admin")
    assert agency.get(f"/agency/cards/?page={value}").status_code == 200
    assert agency.get(f"/audit/?page={value}&since={value}").status_code == 200
    assert agency.get(f"/audit/checkpoints/?page={value}").status_code == 200


# ------------------------------------------------------------------------------------ CSV batches


def csv_upload(data: bytes, name: str = "cards.csv") -> io.BytesIO:
    upload = io.BytesIO(data)
    upload.name = name
    return upload


def post_batch(as_user, data: bytes) -> str:
    """Post a batch as an agency operator; it must be refused whole (400) with the page listing why."""
    before = Card.objects.count()
    response = as_user("agency_op").post("/agency/cards/batch/", {"csv_file": csv_upload(data)})
    assert response.status_code == 400, response.status_code
    assert Card.objects.count() == before
    html = response.content.decode()
    assert "No card was issued" in html
    return html.split('id="row-errors"')[1]


def test_csv_field_over_the_csv_modules_limit_is_refused(world: World, as_user) -> None:
    """The reported 500: a field over 128 KiB (_csv.Error: field larger than field limit)."""
    rows = post_batch(as_user, b"holder,scp\n" + b"a" * (128 * 1024 + 1) + b",03\n")
    assert "not valid CSV" in rows and "field limit" in rows


def test_csv_quoted_field_over_the_limit_is_refused(world: World, as_user) -> None:
    rows = post_batch(as_user, b'holder,scp\n"' + b"a\n" * (70 * 1024) + b'",03\n')
    assert "not valid CSV" in rows


def test_csv_long_field_within_the_csv_limit_is_a_row_error_without_echo(world: World, as_user) -> None:
    rows = post_batch(as_user, b"holder,scp,cin,serial\n" + b"h" * 5000 + b",03," + b"A" * 64 + b",s\n")
    assert "holder is longer than 150 characters" in rows and "cin is longer than 32 characters" in rows
    assert "h" * 200 not in rows


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"holder,scp\n\xff\xfeci\xe9n,03\n", "not UTF-8"),
        (b"holder,scp\ncitizen\x007,03\n", "NUL characters"),
        (b"\x00\x00\x00\x00", "NUL characters"),
        (b"holder,scp\nnew1,03,extra,extra\n", "more fields than columns"),
        (("holder," + ",".join(f"c{i}" for i in range(5000)) + "\n").encode(), "unknown column(s)"),
        (b"holder,scp,holder\nnew1,03,new2\n", "named twice"),
        (b"holder\n" + b"x\n" * (batch.MAX_ROWS + 1), f"more than {batch.MAX_ROWS} rows"),
        (b"holder\n" + b"x" * batch.MAX_BYTES, "larger than"),
        (b"\n\n\n", "header row"),
        (b"holder,scp\n" + b",\n" * 1000, "no rows"),
    ],
    ids=[
        "bad-encoding",
        "nul-in-field",
        "nul-only",
        "too-many-fields",
        "too-many-columns",
        "duplicate-column",
        "too-many-rows",
        "too-large",
        "blank-lines",
        "only-empty-rows",
    ],
)
def test_malformed_csv_is_refused_with_a_reason(world: World, as_user, data: bytes, reason: str) -> None:
    rows = post_batch(as_user, data)
    assert reason in rows
    assert len(rows) < 150_000  # the refusal lists bounded messages (at most one per row), not the file


def test_empty_csv_file_is_refused(world: World, as_user) -> None:
    response = as_user("agency_op").post("/agency/cards/batch/", {"csv_file": csv_upload(b"")})
    assert response.status_code == 400


def test_a_valid_batch_after_the_checks_still_issues(world: World, as_user) -> None:
    get_user_model().objects.create_user("new1", password="x")
    response = as_user("agency_op").post("/agency/cards/batch/", {"csv_file": csv_upload(b"holder,scp\r\nnew1,03\r\n")})
    assert response.status_code == 302
    assert Card.objects.filter(holder__username="new1").exists()


def test_nul_in_a_holder_never_reaches_the_database() -> None:
    with pytest.raises(batch.BatchRefused) as refused:
        batch.parse(b"holder\nab\x00c\n")
    assert "NUL" in refused.value.errors[0].message


# ------------------------------------------------------------------------------------ upload sizes


def test_portal_upload_over_the_request_bound_is_a_413(world: World, as_user) -> None:
    data = b"holder\n" + b"x" * settings.ECARD_MAX_UPLOAD_BYTES
    response = as_user("agency_op").post("/agency/cards/batch/", {"csv_file": csv_upload(data)})
    assert response.status_code == 413
    assert "Traceback" not in response.content.decode()


def test_batch_upload_is_read_only_up_to_its_bound(world: World, as_user, monkeypatch) -> None:
    """A file under the request bound but over the batch bound is not read whole into memory."""
    seen: list[int] = []
    original = batch.parse

    def spy(data: bytes) -> list[batch.Row]:
        seen.append(len(data))
        return original(data)

    monkeypatch.setattr(batch, "parse", spy)
    post_batch(as_user, b"holder\n" + b"x" * (2 * batch.MAX_BYTES))
    assert seen == [batch.MAX_BYTES + 1]


@pytest.mark.parametrize(
    ("username", "path"),
    [
        ("citizen1", "/card/%00/"),
        ("citizen1", "/card/%00/add-bank/"),
        ("agency_admin", "/agency/cards/%00/"),
        ("agency_admin", "/agency/cards/?q=%00"),
        ("agency_admin", "/audit/?card=%00"),
        ("alpha_op", "/bank/alpha/rollouts/?release=%00"),
    ],
)
def test_nul_in_a_portal_address_or_query_is_a_400(world: World, as_user, username: str, path: str) -> None:
    """PostgreSQL refuses NUL in text: /card/%00/ was a 500 there."""
    response = as_user(username).get(path)
    assert response.status_code == 400
    assert "Traceback" not in response.content.decode()
