"""The relay's prepared reads (``ecard.prepared_sql``) return what the ORM returns: the same rows,
every field converted as the ORM converts it (JSON, UUIDs, times, booleans), the joined rows cached
on their foreign keys (``None`` under an empty nullable key), and the base row locked where the
database can."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext

from agent.core import run_session
from cards.models import Card, CardJob, SecurityDomain
from ecard.prepared_sql import FieldsUpdate, JoinedRead, RowInsert, statement_cursor
from tests.otakit import ApiServer, build_ota_world, enroll
from updates.models import CardSession

pytestmark = pytest.mark.django_db

SESSION_READ: JoinedRead[CardSession] = JoinedRead(
    CardSession, ("card", "card__issued_by", "sealed_by"), ("id", "credential"), lock=True
)
JOBS_READ: JoinedRead[CardJob] = JoinedRead(
    CardJob, ("security_domain", "security_domain__organization", "organization"), ("card", "state__in")
)


def field_values(obj: Any) -> dict[str, Any]:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}


@pytest.fixture
def presented() -> Any:
    """A card with its bank enrolled through the relay: sessions, jobs and SDs to read."""
    world = build_ota_world()
    enroll(world)
    result = run_session(world.card_transport(), ApiServer(world.token))
    assert result.ok
    return world


def test_a_session_reads_as_the_orm_reads_it(presented: Any) -> None:
    session = CardSession.objects.exclude(card=None).order_by("created_at").first()
    assert session is not None
    orm = CardSession.objects.select_related("card", "card__issued_by", "sealed_by").get(pk=session.pk)
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        prepared = SESSION_READ.first(session.pk, session.credential_id)
        assert prepared is not None
        assert field_values(prepared) == field_values(orm)
        assert isinstance(prepared.engine_state, dict) and prepared.engine_state == orm.engine_state
        assert prepared.card is not None and field_values(prepared.card) == field_values(orm.card)
        assert field_values(prepared.card.issued_by) == field_values(orm.card.issued_by)
        assert prepared.sealed_by_id is None or field_values(prepared.sealed_by) == field_values(orm.sealed_by)
        assert not prepared._state.adding and prepared._state.db == "default"
    assert len(captured.captured_queries) == 1  # the joined rows came with it: no lazy load
    if connection.features.has_select_for_update_of:
        assert "FOR UPDATE OF" in captured.captured_queries[0]["sql"]


def test_an_empty_nullable_key_reads_as_none_and_a_wrong_key_finds_nothing(presented: Any) -> None:
    session = CardSession.objects.order_by("created_at").first()
    assert session is not None
    CardSession.objects.filter(pk=session.pk).update(card=None, sealed_by=None)
    with transaction.atomic():
        prepared = SESSION_READ.first(session.pk, session.credential_id)
        assert prepared is not None
        with CaptureQueriesContext(connection) as captured:
            assert prepared.card is None and prepared.sealed_by is None
        assert captured.captured_queries == []  # cached as None, not loaded
        assert SESSION_READ.first(session.pk, session.credential_id + 1000) is None


def test_jobs_with_an_in_list_read_as_the_orm_reads_them(presented: Any) -> None:
    card = Card.objects.get(pk=presented.card.pk)
    sd = SecurityDomain.objects.filter(card=card, is_isd=False).first()
    assert sd is not None
    for kind in (CardJob.Kind.LOCK_SD, CardJob.Kind.UNLOCK_SD):
        CardJob.objects.create(card=card, kind=kind, organization=presented.bank, security_domain=sd, params={"k": 1})
    states = [CardJob.State.PENDING, CardJob.State.DONE]
    orm = {
        job.pk: job
        for job in CardJob.objects.filter(card=card, state__in=states).select_related(
            "security_domain", "security_domain__organization", "organization"
        )
    }
    prepared = {job.pk: job for job in JOBS_READ.rows(card, states)}
    assert set(prepared) == set(orm) and len(orm) >= 3
    for pk, job in prepared.items():
        assert field_values(job) == field_values(orm[pk])
        assert field_values(job.security_domain) == field_values(orm[pk].security_domain)
        assert field_values(job.security_domain.organization) == field_values(orm[pk].security_domain.organization)
        assert job.organization.slug == orm[pk].organization.slug
    assert JOBS_READ.rows(card, []) == []
    assert {j.pk for j in JOBS_READ.rows(card.pk, [CardJob.State.DONE])} == {
        pk for pk, j in orm.items() if j.state == CardJob.State.DONE
    }


def test_misuse_is_refused() -> None:
    with pytest.raises(TypeError):
        SESSION_READ.first("only one parameter")
    with pytest.raises(ValueError, match="before"):
        JoinedRead(CardJob, ("security_domain__organization",), ("id",)).rows(1)


def test_a_fields_update_writes_as_save_with_update_fields(presented: Any) -> None:
    session = CardSession.objects.order_by("created_at").first()
    assert session is not None
    before = session.updated_at
    update = FieldsUpdate(CardSession, ("state", "engine_state", "sealed_channel", "exchange", "updated_at"))
    session.state = CardSession.State.EXPIRED
    session.engine_state = {"phase": "done", "jobs": [1, 2], "nested": {"a": None}}
    session.sealed_channel = b"\x00\x01sealed"
    session.exchange = 41
    session.closed_reason = "not in the update: stays as stored"
    with CaptureQueriesContext(connection) as captured:
        update.save(session)
    assert len(captured.captured_queries) == 1
    stored = CardSession.objects.get(pk=session.pk)
    assert stored.state == CardSession.State.EXPIRED and stored.exchange == 41
    assert stored.engine_state == {"phase": "done", "jobs": [1, 2], "nested": {"a": None}}
    assert bytes(stored.sealed_channel) == b"\x00\x01sealed"
    assert stored.updated_at > before  # auto_now, as save() sets it
    assert stored.closed_reason != "not in the update: stays as stored"
    CardSession.objects.filter(pk=session.pk).delete()
    with pytest.raises(DatabaseError):
        update.save(session)


def test_a_row_insert_writes_as_save_with_force_insert(presented: Any) -> None:
    model_session = CardSession.objects.order_by("created_at").first()
    assert model_session is not None
    new = CardSession(
        credential_id=model_session.credential_id,
        card_id=model_session.card_id,
        engine_state={"phase": "identify", "jobs": []},
        expires_at=model_session.expires_at,
    )
    with CaptureQueriesContext(connection) as captured:
        RowInsert(CardSession).insert(new)
    assert len(captured.captured_queries) == 1 and not new._state.adding
    stored = CardSession.objects.get(pk=new.pk)
    assert field_values(stored) == field_values(new)
    assert stored.created_at is not None and stored.created_at == new.created_at  # auto_now_add, as save() sets it
    with pytest.raises(TypeError):
        RowInsert(CardJob)  # the database makes its ids: save() reads them back


def test_a_prepared_count_counts_as_the_orm(presented: Any) -> None:
    card = Card.objects.get(pk=presented.card.pk)
    for states in ([CardJob.State.DONE], [CardJob.State.PENDING, CardJob.State.RUNNING], []):
        assert JOBS_READ.count(card, states) == CardJob.objects.filter(card=card, state__in=states).count()


def test_only_defers_the_other_fields_of_a_joined_row(presented: Any) -> None:
    read: JoinedRead[CardSession] = JoinedRead(
        CardSession, ("card", "card__holder"), ("id",), only={"card__holder": ("email",)}
    )
    session = CardSession.objects.exclude(card=None).order_by("created_at").first()
    assert session is not None
    with CaptureQueriesContext(connection) as captured:
        found = read.first(session.pk)
        assert found is not None and found.card is not None and found.card.holder is not None
        assert found.card.holder.email == presented.citizen.email
    assert len(captured.captured_queries) == 1
    assert "password" not in captured.captured_queries[0]["sql"]
    assert found.card.holder.get_deferred_fields() >= {"password", "username"}


def test_the_statements_share_one_database_cursor_per_connection(presented: Any) -> None:
    first, second = statement_cursor(connection), statement_cursor(connection)
    assert first.cursor is second.cursor  # one driver cursor, each time in Django's wrapper
    card = Card.objects.get(pk=presented.card.pk)
    states = [CardJob.State.DONE]
    jobs = JOBS_READ.rows(card, states)  # reads, counts and writes in turn on the shared cursor
    assert JOBS_READ.count(card, states) == len(jobs) == CardJob.objects.filter(card=card, state__in=states).count()
    session = CardSession.objects.order_by("created_at").first()
    assert session is not None
    FieldsUpdate(CardSession, ("exchange",)).save(session)
    assert {j.pk for j in JOBS_READ.rows(card, states)} == {j.pk for j in jobs}
    if hasattr(first.cursor, "closed"):  # psycopg: a cursor closed by someone else is replaced
        first.cursor.close()
        assert statement_cursor(connection).cursor is not first.cursor
        assert JOBS_READ.count(card, states) == len(jobs)


def test_a_condition_on_a_joined_row(presented: Any) -> None:
    read: JoinedRead[SecurityDomain] = JoinedRead(SecurityDomain, ("card",), ("is_isd", "card__holder"))
    found = read.rows(True, presented.citizen.pk)
    assert [sd.pk for sd in found] == list(
        SecurityDomain.objects.filter(is_isd=True, card__holder=presented.citizen).values_list("pk", flat=True)
    )
    assert len(found) == 1 and found[0].card.holder_id == presented.citizen.pk
    assert read.rows(True, presented.citizen.pk + 1000) == []
    with pytest.raises(TypeError):
        read.count(True, presented.citizen.pk)  # a count reads no joined row
    with pytest.raises(ValueError, match="join"):
        JoinedRead(SecurityDomain, (), ("card__holder",)).rows(presented.citizen.pk)


def test_instances_are_made_without_model_init_and_behave_as_the_orms(
    presented: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While no ``pre_init``/``post_init`` receiver listens, rows become instances without
    ``Model.__init__``: the same loaded and deferred fields, state, caches and saves as the ORM's."""
    from django.db.models import Model

    made: list[Model] = []
    original_init = Model.__init__

    def counting_init(self: Model, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original_init(self, *args, **kwargs)

    session = CardSession.objects.exclude(card=None).first()
    assert session is not None
    read: JoinedRead[CardSession] = JoinedRead(
        CardSession, ("card", "card__holder"), ("id",), only={"card__holder": ("email",)}
    )
    monkeypatch.setattr(Model, "__init__", counting_init)
    prepared = read.first(session.pk)
    monkeypatch.setattr(Model, "__init__", original_init)
    assert prepared is not None and not made  # not one Model.__init__
    orm = (
        CardSession.objects.select_related("card", "card__holder")
        .only(
            *[f.name for f in CardSession._meta.concrete_fields],
            "card__holder__email",
            *[f"card__{f.name}" for f in Card._meta.concrete_fields],
        )
        .get(pk=session.pk)
    )
    assert field_values(prepared) == field_values(orm) and field_values(prepared.card) == field_values(orm.card)
    assert not prepared._state.adding and prepared._state.db == "default" and prepared._state.fields_cache
    holder = prepared.card.holder
    assert holder is not None and holder.email == orm.card.holder.email
    assert (
        holder.get_deferred_fields() == orm.card.holder.get_deferred_fields()
        and "username" in holder.get_deferred_fields()
    )
    assert holder.username == orm.card.holder.username  # a deferred field loads on access, as the ORM's
    prepared.closed_reason = "written through a plain instance"
    prepared.save(update_fields=["closed_reason"])
    assert CardSession.objects.get(pk=session.pk).closed_reason == "written through a plain instance"
    assert prepared == orm and hash(prepared) == hash(orm)


def test_a_post_init_receiver_gets_every_instance(presented: Any) -> None:
    """A receiver of ``post_init`` (connected by some app, now or later) sees every prepared
    instance: the ORM's construction is used while one listens."""
    from django.db.models.signals import post_init

    seen: list[Any] = []

    def receiver(sender: Any, instance: Any, **kwargs: Any) -> None:
        seen.append(instance)

    session = CardSession.objects.exclude(card=None).first()
    assert session is not None
    post_init.connect(receiver)
    try:
        prepared = SESSION_READ.first(session.pk, session.credential_id)
    finally:
        post_init.disconnect(receiver)
    assert prepared is not None and prepared in seen and prepared.card in seen


def test_a_model_that_wraps_values_or_builds_itself_keeps_the_orms_construction() -> None:
    from django.db import models
    from django.test.utils import isolate_apps

    from ecard.prepared_sql import _plain_model

    with isolate_apps("cards"):

        class WithFile(models.Model):
            upload = models.FileField()

            class Meta:
                app_label = "cards"

            def __str__(self) -> str:
                return "with a file"

        class WithInit(models.Model):
            name = models.CharField(max_length=5)

            class Meta:
                app_label = "cards"

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)

            def __str__(self) -> str:
                return self.name

        class Plain(models.Model):
            name = models.CharField(max_length=5)
            owner = models.ForeignKey(Card, on_delete=models.CASCADE)

            class Meta:
                app_label = "cards"

            def __str__(self) -> str:
                return self.name

    assert not _plain_model(WithFile) and not _plain_model(WithInit) and _plain_model(Plain)
