"""Hostile input to the API is a 4xx problem document, never a 500 (security review, "inputs that
give 500"): deeply nested and oversized bodies, unbounded page sizes, audit proof parameters at
and beyond their edges. Each test below sends what the review sent."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.test import APIClient

from ecard import parsers
from ecard.pagination import MAX_OFFSET
from tests.factories import World
from updates import services as update_services

pytestmark = pytest.mark.django_db

DEEP = "[" * 50_000 + "]" * 50_000
EMPTY_ROOT_B64 = base64.b64encode(hashlib.sha256(b"").digest()).decode()


def api_as(world: World, username: str) -> APIClient:
    client = APIClient(raise_request_exception=False)
    client.force_login(world.users[username])
    return client


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in response.content.decode()
    return body


def agent_token(world: World) -> str:
    _credential, token = update_services.issue_agent_credential(user=world.users["citizen1"], name="reader")
    return token


# ------------------------------------------------------------------------------------ JSON bodies


@pytest.mark.parametrize(
    ("username", "path"),
    [
        ("agency_admin", "/api/v1/organizations/"),
        ("agency_op", "/api/v1/cards/"),
        ("citizen1", "/api/v1/enrollments/"),
        ("citizen1", "/api/v1/agent-credentials/"),
        ("alpha_admin", "/api/v1/members/"),
        ("alpha_op", "/api/v1/rollouts/"),
    ],
)
def test_deeply_nested_json_is_a_400(world: World, username: str, path: str) -> None:
    response = api_as(world, username).post(path, data=DEEP, content_type="application/json")
    body = assert_problem(response, 400)
    assert "nested deeper than" in body["detail"]


def test_deeply_nested_json_on_the_relay_is_a_400(world: World) -> None:
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Agent {agent_token(world)}")
    assert_problem(client.post("/api/v1/relay/sessions/", data=DEEP, content_type="application/json"), 400)


def test_json_nesting_just_within_the_bound_parses_and_one_more_level_does_not() -> None:
    limit = parsers.json_max_depth()
    ok = "[" * limit + "]" * limit
    assert parsers.loads_bounded(ok.encode()) is not None
    with pytest.raises(parsers.exceptions.ParseError):
        parsers.loads_bounded(("[" * (limit + 1) + "]" * (limit + 1)).encode())
    with pytest.raises(parsers.exceptions.ParseError):
        parsers.loads_bounded(('{"a":' * (limit + 1) + "1" + "}" * (limit + 1)).encode())


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe{}", b'{"a": NaN}', b"[1e999]", b"1" * 5000, b"   ", b'{"a": 1', b"\x00"],
    ids=["not-utf8", "nan", "overflowing-float", "huge-integer", "blank", "truncated", "nul"],
)
def test_malformed_json_is_a_400(world: World, body: bytes) -> None:
    response = api_as(world, "agency_admin").post("/api/v1/organizations/", data=body, content_type="application/json")
    assert_problem(response, 400)


def test_json_body_over_the_size_limit_is_a_413(world: World) -> None:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps({"name": "x" * limit}).encode()
    response = api_as(world, "agency_admin").post("/api/v1/organizations/", data=body, content_type="application/json")
    assert_problem(response, 413)


def test_form_body_over_the_size_limit_is_a_413(world: World) -> None:
    body = "name=" + "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    response = api_as(world, "agency_admin").post(
        "/api/v1/organizations/", data=body, content_type="application/x-www-form-urlencoded"
    )
    assert_problem(response, 413)


def test_form_with_too_many_fields_is_a_400(world: World) -> None:
    body = "&".join(f"f{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    response = api_as(world, "agency_admin").post(
        "/api/v1/organizations/", data=body, content_type="application/x-www-form-urlencoded"
    )
    assert_problem(response, 400)


def test_multipart_upload_over_the_limit_is_a_413_before_it_is_read(world: World) -> None:
    import io

    upload = io.BytesIO(b"\0" * (settings.ECARD_MAX_UPLOAD_BYTES + 1))
    upload.name = "huge.cap"
    response = api_as(world, "alpha_op").post("/api/v1/releases/", {"cap_file": upload}, format="multipart")
    assert_problem(response, 413)


def test_form_over_djangos_limit_read_by_the_session_csrf_check_is_a_413(world: World, settings) -> None:
    """Session authentication's CSRF check reads request.POST, where Django raises RequestDataTooBig."""
    settings.ECARD_MAX_UPLOAD_BYTES = 4 * settings.DATA_UPLOAD_MAX_MEMORY_SIZE  # past the middleware's bound
    client = APIClient(enforce_csrf_checks=True, raise_request_exception=False)
    client.force_login(world.users["agency_admin"])
    client.cookies["csrftoken"] = "a" * 32
    body = "name=" + "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    response = client.post("/api/v1/organizations/", data=body, content_type="application/x-www-form-urlencoded")
    assert_problem(response, 413)


def test_request_data_too_big_outside_drf_is_a_413_problem_under_the_api() -> None:
    from django.core.exceptions import RequestDataTooBig
    from django.test import RequestFactory

    from ecard.problems import problem_exception_handler
    from ecard.views import handler400

    request = RequestFactory().post("/api/v1/organizations/")
    response = handler400(request, RequestDataTooBig("too big"))
    assert response.status_code == 413 and response["Content-Type"] == "application/problem+json"
    response = problem_exception_handler(RequestDataTooBig("too big"), {})
    assert response is not None and response.status_code == 413


def test_largest_legitimate_relay_exchange_fits_the_limits(world: World) -> None:
    """A batch answered in full: MAX_BATCH_RESPONSES short R-APDUs of 256 data bytes plus SW."""
    longest = "AB" * 256 + "9000"
    body = json.dumps({"exchange": 1, "responses": [longest] * update_services.MAX_BATCH_RESPONSES}).encode()
    assert len(body) < parsers.body_limit() * 0.6  # ample room
    assert parsers.body_limit() < settings.ECARD_MAX_UPLOAD_BYTES
    assert len(parsers.loads_bounded(body)["responses"]) == update_services.MAX_BATCH_RESPONSES
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Agent {agent_token(world)}")
    opened = client.post("/api/v1/relay/sessions/", {}, format="json")
    assert opened.status_code == 201
    response = client.post(
        f"/api/v1/relay/sessions/{opened.json()['session']}/exchanges/", data=body, content_type="application/json"
    )
    # Parsed and judged by the relay (more responses than commands: the session is rejected).
    assert response.status_code == 409, response.content[:300]


def test_largest_legitimate_rollout_body_fits_the_limits() -> None:
    from updates.rollouts import MAX_LISTED_CARDS

    body = json.dumps(
        {
            "release": 2**31,
            "name": "é" * 200,
            "from_version": "1.0",
            "groups": ["1%"] * 20 + ["100%"],
            "cins": ["A" * 32] * MAX_LISTED_CARDS,
            "start_at": "2030-01-01T00:00:00Z",
        }
    ).encode()
    assert len(body) < parsers.body_limit() * 0.6


def test_json_body_over_the_json_bound_but_under_djangos_is_a_413(world: World) -> None:
    assert parsers.body_limit() < settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps({"name": "x" * parsers.body_limit()}).encode()
    response = api_as(world, "agency_admin").post("/api/v1/organizations/", data=body, content_type="application/json")
    assert_problem(response, 413)


# ------------------------------------------------------------------------------------ pagination

LIST_PATHS = (
    "/api/v1/cards/",
    "/api/v1/organizations/",
    "/api/v1/members/",
    "/api/v1/key-sets/",
    "/api/v1/security-domains/",
    "/api/v1/enrollments/",
    "/api/v1/jobs/",
    "/api/v1/applets/",
    "/api/v1/packages/",
    "/api/v1/releases/",
    "/api/v1/rollouts/",
    "/api/v1/agent-credentials/",
    "/api/v1/terminal-credentials/",
    "/api/v1/audit/entries/",
    "/api/v1/audit/checkpoints/",
    "/api/v1/invitations/",
    "/api/v1/sharing-approvals/",
    "/api/v1/security/events/",
    "/api/v1/notices/",
    "/api/v1/manufacturer-batches/",
)


def test_list_paths_cover_every_paginated_list_of_the_schema(client: Client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    paginated = {
        "/api/v1" + path.removeprefix("/api/v1") if path.startswith("/api/v1") else path
        for path, item in schema["paths"].items()
        if any(p["name"] == "limit" for p in item.get("get", {}).get("parameters", [])) and "{" not in path
    }
    assert paginated == set(LIST_PATHS)


@pytest.mark.parametrize("path", LIST_PATHS)
def test_huge_limit_is_a_400_on_every_list(world: World, path: str) -> None:
    body = assert_problem(api_as(world, "agency_admin").get(path, {"limit": str(10**20)}), 400)
    assert "limit" in body["errors"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "abc"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": " 5"}, "limit"),
        ({"limit": "+5"}, "limit"),
        ({"limit": "1_0"}, "limit"),
        ({"limit": "５"}, "limit"),
        ({"limit": "9" * 5000}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "abc"}, "offset"),
        ({"offset": str(10**20)}, "offset"),
        ({"offset": str(MAX_OFFSET + 1)}, "offset"),
    ],
)
def test_malformed_limits_and_offsets_are_400s(world: World, params: dict[str, str], field: str) -> None:
    body = assert_problem(api_as(world, "agency_admin").get("/api/v1/cards/", params), 400)
    assert field in body["errors"]


def test_limits_within_the_bounds_page_as_before(world: World) -> None:
    client = api_as(world, "agency_admin")
    page = client.get("/api/v1/cards/", {"limit": "500", "offset": str(MAX_OFFSET)})
    assert page.status_code == 200 and page.json()["results"] == []
    page = client.get("/api/v1/cards/", {"limit": "2", "offset": "1"}).json()
    assert page["count"] == 3 and len(page["results"]) == 2
    assert client.get("/api/v1/cards/", {"limit": "", "offset": ""}).json()["count"] == 3


# ------------------------------------------------------------------------------------ audit proofs


def test_consistency_between_empty_trees_is_the_empty_proof(world: World) -> None:
    """The reported 500: ?first=0&second=0."""
    response = api_as(world, "regulator").get("/api/v1/audit/consistency", {"first": "0", "second": "0"})
    assert response.status_code == 200, response.content[:300]
    assert response.json() == {
        "first": 0,
        "second": 0,
        "first_root": EMPTY_ROOT_B64,
        "second_root": EMPTY_ROOT_B64,
        "proof": [],
    }


def _log_size(client: APIClient) -> int:
    return client.get("/api/v1/audit/log").json()["size"]


@pytest.mark.parametrize(
    ("first", "second", "field"),
    [
        ("-1", "0", "first"),
        ("0", "-1", "second"),
        ("abc", "1", "first"),
        ("1", "1.5", "second"),
        ("", "1", "first"),
        ("1", "", "second"),
        (" 1", "2", "first"),
        ("٣", "4", "first"),
        (str(10**20), "1", "first"),
        ("1", str(10**20), "second"),
        ("1", "9" * 5000, "second"),
        ("2", "1", "first"),  # first > second
        ("0", "SIZE+1", "second"),  # beyond the log
        ("SIZE+1", "SIZE+1", "second"),
        ("1", str(2**63 - 1), "second"),
    ],
)
def test_consistency_parameter_edges_are_400s(world: World, first: str, second: str, field: str) -> None:
    client = api_as(world, "regulator")
    size = _log_size(client)
    first, second = (v.replace("SIZE+1", str(size + 1)) for v in (first, second))
    body = assert_problem(client.get("/api/v1/audit/consistency", {"first": first, "second": second}), 400)
    assert field in body["errors"]


def test_consistency_within_the_log_still_proves(world: World) -> None:
    client = api_as(world, "regulator")
    size = _log_size(client)
    assert size > 2
    for first, second in ((0, size), (size, size), (1, size), (0, 1), (1, 1)):
        response = client.get("/api/v1/audit/consistency", {"first": first, "second": second})
        assert response.status_code == 200, (first, second, response.content[:300])


@pytest.mark.parametrize("tree_size", ["0", "-1", "abc", str(10**20), "9" * 5000, "SIZE+1", "1.0"])
def test_inclusion_proof_tree_size_edges_are_400s(world: World, tree_size: str) -> None:
    client = api_as(world, "regulator")
    tree_size = tree_size.replace("SIZE+1", str(_log_size(client) + 1))
    body = assert_problem(client.get("/api/v1/audit/entries/0/proof", {"tree_size": tree_size}), 400)
    assert "tree_size" in body["errors"]


@pytest.mark.parametrize("index", [str(10**20), str(2**63), "9" * 400])
def test_huge_entry_and_checkpoint_indices_are_404s(world: World, index: str) -> None:
    client = api_as(world, "regulator")
    assert_problem(client.get(f"/api/v1/audit/entries/{index}/"), 404)
    assert_problem(client.get(f"/api/v1/audit/entries/{index}/proof"), 404)
    assert_problem(client.get(f"/api/v1/audit/checkpoints/{index}/"), 404)


@pytest.mark.parametrize("size", ["-1", "abc", str(10**20)])
def test_export_size_edges_are_400s(world: World, size: str) -> None:
    assert_problem(api_as(world, "regulator").get("/api/v1/audit/export", {"size": size}), 400)


# ------------------------------------------------------------------------------------ datetimes


@pytest.mark.parametrize("offset", ["+23:20", "-23:59", "+15:59", "Z"])
def test_audit_time_filters_take_any_utc_offset(world: World, offset: str) -> None:
    """PostgreSQL refuses UTC offsets beyond ±15:59 (a 500 there, found by tests/ecard/test_api_fuzz.py)."""
    from audit.selectors import EntryFilter

    value = "9915-02-10T23:24:55.290743" + offset
    form = EntryFilter({"since": value, "until": value}).form
    assert form.is_valid(), form.errors
    assert form.cleaned_data["since"].utcoffset().total_seconds() == 0
    response = api_as(world, "regulator").get("/api/v1/audit/entries/", {"since": value, "until": value})
    assert response.status_code == 200


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+23:00", "9999-12-31T23:59:59-23:00", "not a date"])
def test_audit_time_filters_out_of_range_are_400s(world: World, value: str) -> None:
    body = assert_problem(api_as(world, "regulator").get("/api/v1/audit/entries/", {"since": value}), 400)
    assert "since" in body["errors"]


# ------------------------------------------------------------------------------------ NUL characters


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/enrollments/consent/?card=%00&bank=alpha",
        "/api/v1/enrollments/consent/?card=AB&bank=%00",
        "/api/v1/cards/?ordering=%00",
        "/api/v1/cards/%00/",
        "/api/v1/audit/entries/?action=a%00b",
        "/api/v1/whoami/?x%00=1",
    ],
)
def test_nul_in_the_address_or_query_is_a_400(world: World, path: str) -> None:
    """PostgreSQL refuses NUL in text: these were 500s there (SQLite let them through)."""
    assert_problem(api_as(world, "citizen1").get(path), 400)


@pytest.mark.parametrize("header", ["Token ab\x00c", "Agent eca_ab\x00c_x"])
def test_nul_in_a_header_is_a_400(world: World, header: str) -> None:
    client = APIClient(raise_request_exception=False)
    assert_problem(client.get("/api/v1/whoami/", HTTP_AUTHORIZATION=header), 400)
    assert_problem(client.post("/api/v1/relay/sessions/", {}, format="json", HTTP_AUTHORIZATION=header), 400)


# ------------------------------------------------------------------------------------ rollout groups


@pytest.mark.parametrize("group", ["²", "٣", "１００%", "¹⁰⁰%", "9999999999", "1" * 16])
def test_rollout_groups_with_non_ascii_digits_or_huge_counts_are_400s(world: World, group: str) -> None:
    """'²'.isdigit() is true and int('²') raises ValueError: the rollout API answered 500."""
    from updates.demo_cap import build_cap
    from updates.releases import create_release

    package = world.applets["alpha@card1"].package_aid
    release = create_release(
        bank=world.alpha,
        cap_bytes=build_cap(package, [package + "01"], (2, 0), code_size=300),
        filename="wallet-2.0.cap",
        actor=world.users["alpha_op"],
    )
    response = api_as(world, "alpha_op").post(
        "/api/v1/rollouts/", {"release": release.pk, "groups": [group, "100%"]}, format="json"
    )
    body = assert_problem(response, 400)
    assert "groups" in body["errors"]
