"""Fuzz every operation of the OpenAPI schema, as every role, and require: never a 5xx, and every
error under /api/ a problem document.

Schemathesis generates each operation's parameters and bodies from the schema drf-spectacular
serves at /api/schema/: data that fits it (positive), data that does not (negative), data that
fits with the ids of existing objects in the path, and integer query parameters at and past their
edges (0, -1, 2**63, 10**20, ...). Each generated request is sent in-process through the Django
WSGI application (``ecard.wsgi``) once per role: anonymous, a citizen, a bank administrator, an
agency administrator, a regulator, and a citizen's agent credential (the relay). Users
authenticate with DRF tokens, so no CSRF dance.

The world (tests/factories.py, plus a release, a rollout, a checkpoint and a relay session) lives
in the test's transaction (pytest-django ``db``): whatever the fuzzer writes is rolled back after
each operation's test. Django's WSGI handler closes "old" database connections at each request's
start and end; inside a test transaction that would close the test's connection, so, as Django's
own test client does, those two signal receivers are disconnected while the fuzz requests run.

Budget: ``FUZZ_EXAMPLES`` generated requests per operation (default 16, ``ECARD_FUZZ_EXAMPLES``
to change), each sent as six roles; derandomized, so every run sends the same requests. The whole
module takes about a minute on two cores (SQLite or PostgreSQL).
``test_the_fuzzer_fails_on_a_server_error`` shows that a 5xx anywhere fails the run. Run it against
PostgreSQL too (DATABASE_URL): some inputs only failed there (UTC offsets beyond ±15:59, NUL).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from django.core.cache import cache
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode

from ecard.problems import PROBLEM_CONTENT_TYPE
from tests.factories import World, build_world
from updates import services as update_services

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

FUZZ_EXAMPLES = int(os.environ.get("ECARD_FUZZ_EXAMPLES", "16"))
ROLES = ("citizen1", "alpha_admin", "agency_admin", "regulator")


def openapi_document(urlconf: str | None = None) -> dict[str, Any]:
    """The schema exactly as /api/schema/ serves it (JSON), generated in-process."""
    import json

    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    generated = SchemaGenerator(urlconf=urlconf).get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(generated))


def load_schema(urlconf: str | None = None) -> Any:
    from ecard.wsgi import application

    schema = schemathesis.openapi.from_dict(openapi_document(urlconf))
    schema.app = application  # what schemathesis.openapi.from_wsgi does after fetching the document
    return schema


SCHEMA = load_schema()
OPERATIONS = sorted((result.ok().method.upper(), result.ok().path) for result in SCHEMA.get_all_operations())


@contextmanager
def wsgi_in_test_transaction() -> Iterator[None]:
    """Let WSGI requests run inside the test's transaction (see the module docstring)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@dataclass
class FuzzWorld:
    headers: dict[str, dict[str, str]]  # Authorization header per role (anonymous: none)
    known: dict[str, st.SearchStrategy[Any]]  # path parameters that name existing objects


def seed_release_rollout_checkpoint(world: World) -> None:
    from audit.services import ensure_checkpoint
    from updates.demo_cap import build_cap
    from updates.releases import create_release
    from updates.rollouts import create_rollout

    package = world.applets["alpha@card1"].package_aid
    release = create_release(
        bank=world.alpha,
        cap_bytes=build_cap(package, [package + "01"], (2, 0), code_size=300),
        filename="wallet-2.0.cap",
        actor=world.users["alpha_op"],
    )
    create_rollout(bank=world.alpha, release=release, actor=world.users["alpha_op"], groups=["100%"])
    ensure_checkpoint()


@pytest.fixture
def fuzz_world(db: None) -> FuzzWorld:
    """Tokens of every role over a world (with a release, a rollout, a checkpoint and an open relay
    session) in this test's transaction."""
    world = build_world()
    seed_release_rollout_checkpoint(world)
    headers: dict[str, dict[str, str]] = {"anonymous": {}}
    for username in ROLES:
        token, _created = Token.objects.get_or_create(user=world.users[username])
        headers[username] = {"Authorization": f"Token {token.key}"}
    credential, agent = update_services.issue_agent_credential(user=world.users["citizen2"], name="fuzz")
    headers["agent"] = {"Authorization": f"Agent {agent}"}
    session = update_services.open_session(credential=credential).session
    known = {
        "id": st.integers(min_value=1, max_value=12),
        "index": st.integers(min_value=0, max_value=12),
        "size": st.integers(min_value=0, max_value=40),
        "session_id": st.just(str(session.pk)),
    }
    return FuzzWorld(headers, known)


def leak_scan(where: str, content: bytes) -> None:
    """Hand the response to the suite's key-leak scanner (it hooks Django's test client, not WSGI)."""
    from tests.issuers import keyleak

    if keyleak._scanner is not None:
        keyleak._scanner.collect(where, content)


def problems_of(role: str, case: Any, response: Any) -> list[str]:
    """What is wrong with one response: a server error, or an API error that is no problem document."""
    found = []
    try:
        case.validate_response(response, checks=[not_a_server_error])
    except FailureGroup as group:
        found += [f"{role}: {type(failure).__name__}: {failure.title}" for failure in group.exceptions]
    if response.status_code >= 500:  # belt and braces: never rely on one checker alone
        found.append(f"{role}: HTTP {response.status_code}")
    content_type = response.headers.get("content-type", [""])[0].split(";")[0]
    if response.status_code >= 400 and content_type != PROBLEM_CONTENT_TYPE:
        found.append(f"{role}: HTTP {response.status_code} is {content_type!r}, not a problem document")
    return found


EDGE_INTEGERS = (0, 1, -1, 2, 500, 501, 2**31, 2**63 - 1, 2**63, 10**20, -(2**63) - 1)


def integer_query_parameters(schema: Any, method: str, path: str) -> list[str]:
    parameters = schema.raw_schema["paths"][path][method.lower()].get("parameters", [])
    return [p["name"] for p in parameters if p.get("in") == "query" and p.get("schema", {}).get("type") == "integer"]


def fuzz_operation(schema: Any, method: str, path: str, world: FuzzWorld, examples: int) -> None:
    """Send ``examples`` generated cases of one operation as every role: data that fits the schema,
    data that does not, data that fits with ids of existing objects in the path, and integer query
    parameters at their edges. AssertionError with the reproducing request on the first case any
    role gets a 5xx for (or an API error that is not a problem document)."""
    operation = schema[path][method]
    strategies = [
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    ]
    names = re.findall(r"{(\w+)}", path)
    if names and all(name in world.known for name in names):
        strategies.insert(
            0,
            st.fixed_dictionaries({name: world.known[name] for name in names}).flatmap(
                lambda ids: operation.as_strategy(generation_mode=GenerationMode.POSITIVE, path_parameters=ids)
            ),
        )
    edges = integer_query_parameters(schema, method, path)
    if edges:
        # Integer parameters at and past their edges (0 first: Hypothesis tries the simplest first).
        strategies.insert(
            0,
            st.fixed_dictionaries({name: st.sampled_from(EDGE_INTEGERS) for name in edges}).flatmap(
                lambda query: operation.as_strategy(generation_mode=GenerationMode.POSITIVE, query=query)
            ),
        )
    strategy = st.one_of(strategies)  # Hypothesis starts with the simplest case of the first
    headers = world.headers

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        cache.clear()  # rate limits are not under test here
        failures: list[str] = []
        for role, role_header in headers.items():
            response = case.call(headers=role_header)
            failures += problems_of(role, case, response)
            leak_scan(f"response {method} {path} as {role}", response.content)
        assert not failures, f"{method} {path}: " + "; ".join(failures) + "\n" + case.as_curl_command()[:2000]

    with wsgi_in_test_transaction():
        run()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_operation_never_answers_a_server_error(method: str, path: str, fuzz_world: FuzzWorld) -> None:
    fuzz_operation(SCHEMA, method, path, fuzz_world, FUZZ_EXAMPLES)


def test_every_operation_of_the_served_schema_is_fuzzed(client) -> None:
    served = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert {(m.upper(), p) for p, item in served["paths"].items() for m in item} == set(OPERATIONS)
    assert len(OPERATIONS) > 50


# ------------------------------------------------------------------------------------ self-check


class _BrokenView:
    """A test-only API view that fails like a bug would (an unhandled exception: a 500)."""

    @staticmethod
    def as_view() -> Callable[..., Any]:
        from drf_spectacular.utils import OpenApiParameter, extend_schema
        from rest_framework.permissions import AllowAny
        from rest_framework.response import Response
        from rest_framework.views import APIView

        class Broken(APIView):
            permission_classes = (AllowAny,)
            authentication_classes = ()

            @extend_schema(parameters=[OpenApiParameter("n", int, required=True)], responses={200: None})
            def get(self, request: Any) -> Response:
                if int(request.query_params["n"]) > 10:  # a bug only some inputs reach
                    raise ZeroDivisionError("deliberate")
                return Response({})

        return Broken.as_view()


urlpatterns: list[Any] = []  # this module is the test-only URL conf of the self-check


def _broken_urlpatterns() -> list[Any]:
    from django.urls import path

    return [path("api/v1/broken", _BrokenView.as_view())]


def test_the_fuzzer_fails_on_a_server_error(settings, fuzz_world: FuzzWorld) -> None:
    urlpatterns[:] = _broken_urlpatterns()
    settings.ROOT_URLCONF = __name__
    broken = load_schema(urlconf=__name__)
    with pytest.raises(AssertionError, match=r"HTTP 500"):
        fuzz_operation(broken, "GET", "/api/v1/broken", fuzz_world, 20)


def test_the_checks_flag_a_synthetic_server_error() -> None:
    from schemathesis.core.transport import Response

    operation = SCHEMA["/api/v1/whoami/"]["GET"]
    case = operation.Case()
    for status, content_type in ((500, "application/problem+json"), (503, "text/html")):
        response = Response(
            status_code=status,
            headers={"content-type": [content_type]},
            content=b"{}",
            request=_prepared_request(),
            elapsed=0.0,
            verify=False,
        )
        assert problems_of("anonymous", case, response)
    ok = Response(
        status_code=200,
        headers={"content-type": ["application/json"]},
        content=b"{}",
        request=_prepared_request(),
        elapsed=0.0,
        verify=False,
    )
    assert problems_of("anonymous", case, ok) == []


def _prepared_request() -> Any:
    import requests

    return requests.Request("GET", "http://localhost/api/v1/whoami/").prepare()
