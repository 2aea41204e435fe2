"""Prepared statements for the relay's hot path (issue 15), built once per process from the
models' metadata: reads (and counts) of one model's rows with some of its foreign keys' rows
joined, as model instances (:class:`JoinedRead`), the UPDATE of a fixed set of a row's fields
(:class:`FieldsUpdate`), and the INSERT of a row whose key the application makes
(:class:`RowInsert`), all on one database cursor per connection (:func:`statement_cursor`).

The ORM compiles a query afresh on every call: for a ``select_related`` read of a few joined
tables, that compilation (and matching the result columns back to the models) costs more web CPU
than the database spends answering. A :class:`JoinedRead` builds its statement and its column
converters once, from the models' metadata (so no column list is kept by hand), and turns each row
into instances as the ORM would: every concrete field loaded, the joined rows cached on their
foreign keys (``select_related``'s cache), ``None`` for an empty nullable key.

Only plain equality and ``IN`` conditions on the base row's or a joined row's fields, joined by
AND, are offered; anything else stays with the ORM. Reads go to the ``default`` database (the relay reads its own
writes inside its transaction).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.models import Field, ForeignKey, Model
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute
from django.db.models.signals import post_init, pre_init

_M = TypeVar("_M", bound=Model)
Converter = Callable[[Any, Any, Any], Any]


@dataclass(frozen=True)
class _Table:
    """One model's columns in the statement: its alias, where its values start, how to convert
    them, and where the instance hangs (parent table index and foreign key; the base has none)."""

    model: type[Model]
    alias: str
    start: int
    converters: tuple[tuple[int, tuple[Converter, ...], Any], ...]
    parent: int | None
    via: ForeignKey | None
    pk_at: int  # the primary key's place among the model's values (a None there: no row joined)
    attnames: tuple[str, ...]  # the fields read, in the statement's order (the others are deferred)
    plain: bool  # instances may be made without Model.__init__ (see _plain_model)


class JoinedRead(Generic[_M]):
    """``model`` rows with the ``related`` foreign key paths joined (``"card"``,
    ``"card__issued_by"``), where every field of ``where`` equals its parameter (a name ending in
    ``__in`` takes a sequence). ``lock`` takes ``SELECT … FOR UPDATE OF`` the base row where the
    database has it (PostgreSQL). ``only`` names, for a joined path, the fields to read: the
    others are deferred, as with ``QuerySet.only`` (loaded if something reads them)."""

    def __init__(
        self,
        model: type[_M],
        related: Sequence[str],
        where: Sequence[str],
        *,
        lock: bool = False,
        only: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.model = model
        self.related = tuple(related)
        self.only = {path: tuple(names) for path, names in (only or {}).items()}
        self.where = tuple(where)
        self.lock = lock
        self._built: dict[tuple[str, tuple[int, ...]], tuple[str, list[_Table]]] = {}
        self._counts: dict[tuple[str, tuple[int, ...]], str] = {}

    # -- building (once per database vendor and IN-list lengths)
    def _build(self, connection: Any, in_lengths: tuple[int, ...]) -> tuple[str, list[_Table]]:
        quote = connection.ops.quote_name
        tables: list[_Table] = []
        columns: list[str] = []
        joins: list[str] = []
        nullable_path: dict[str, bool] = {"": False}
        index_of: dict[str, int] = {"": 0}

        def add(model: type[Model], alias: str, parent: int | None, via: ForeignKey | None, path: str) -> None:
            start = len(columns)
            converters = []
            fields = list(model._meta.concrete_fields)
            if path in self.only:
                wanted = {model._meta.get_field(name).attname for name in self.only[path]}  # type: ignore[union-attr]
                fields = [f for f in fields if f.attname in wanted or f is model._meta.pk]
            for offset, field in enumerate(fields):
                columns.append(f"{alias}.{quote(field.column)}")
                expression = field.get_col(alias)
                found = tuple(connection.ops.get_db_converters(expression)) + tuple(
                    field.get_db_converters(connection)  # type: ignore[attr-defined]  # on every Field, not in the stubs
                )
                if found:
                    converters.append((start + offset, found, expression))
            pk_at = fields.index(model._meta.pk)
            attnames = tuple(f.attname for f in fields)
            plain = _plain_model(model)
            tables.append(_Table(model, alias, start, tuple(converters), parent, via, pk_at, attnames, plain))

        base_alias = quote(self.model._meta.db_table)
        add(self.model, base_alias, None, None, "")
        for number, path in enumerate(self.related, start=1):
            parent_path, _, name = path.rpartition("__")
            if parent_path not in index_of:
                raise ValueError(f"join {parent_path!r} before {path!r}")
            parent = tables[index_of[parent_path]]
            field = parent.model._meta.get_field(name)
            if not isinstance(field, ForeignKey):
                raise ValueError(f"{path!r} is not a foreign key")
            target = field.related_model
            assert isinstance(target, type) and issubclass(target, Model)  # noqa: S101 - a resolved model
            alias = f"J{number}"
            nullable = nullable_path[parent_path] or field.null
            nullable_path[path] = nullable
            join = "LEFT OUTER JOIN" if nullable else "INNER JOIN"
            joins.append(
                f"{join} {quote(target._meta.db_table)} {alias} ON {alias}.{quote(field.target_field.column)}"
                f" = {parent.alias}.{quote(field.column)}"
            )
            index_of[path] = len(tables)
            add(target, alias, index_of[parent_path], field, path)

        sql = f"SELECT {', '.join(columns)} FROM {base_alias} {' '.join(joins)}"  # noqa: S608 - names from metadata
        sql += self._where_sql(connection, in_lengths)
        if self.lock and connection.features.has_select_for_update:
            sql += f" FOR UPDATE OF {base_alias}" if connection.features.has_select_for_update_of else " FOR UPDATE"
        return sql, tables

    def _where_sql(self, connection: Any, in_lengths: tuple[int, ...], *, joined: bool = True) -> str:
        quote = connection.ops.quote_name
        conditions = []
        lengths = iter(in_lengths)
        for name in self.where:
            path, field, is_in = self._condition(name)
            if path and not joined:
                raise TypeError(f"{name!r}: a condition on a joined row needs the join")
            alias = f"J{self.related.index(path) + 1}" if path else quote(self.model._meta.db_table)
            column = f"{alias}.{quote(field.column)}"
            if is_in:
                conditions.append(f"{column} IN ({', '.join(['%s'] * next(lengths))})")
            else:
                conditions.append(f"{column} = %s")
        return " WHERE " + " AND ".join(conditions) if conditions else ""

    def _condition(self, name: str) -> tuple[str, Field[Any, Any], bool]:
        """A ``where`` name as (joined path or "" for the base row, field, whether ``IN``):
        ``"card"``, ``"state__in"``, or on a joined row, ``"card__holder"``."""
        is_in = name.endswith("__in")
        parts = (name[:-4] if is_in else name).split("__")
        path, model = "", cast("type[Model]", self.model)
        for part in parts[:-1]:
            path = f"{path}__{part}" if path else part
            if path not in self.related:
                raise ValueError(f"{name!r}: join {path!r} first")
            relation = model._meta.get_field(part)
            assert isinstance(relation, ForeignKey) and isinstance(relation.related_model, type)  # noqa: S101
            model = relation.related_model
        field = model._meta.get_field(parts[-1])
        if not isinstance(field, Field):
            raise TypeError(f"{name!r} is not a field of {model.__name__}")
        return path, field, is_in

    # -- reading
    def rows(self, *params: Any) -> list[_M]:
        """Every row matching; the parameters in the order of ``where``."""
        connection = connections[DEFAULT_DB_ALIAS]
        prepared = self._parameters(connection, params)
        if prepared is None:
            return []
        values, in_lengths = prepared
        key = (connection.vendor, in_lengths)
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = self._build(connection, in_lengths)
        sql, tables = built
        cursor = statement_cursor(connection)
        cursor.execute(sql, values)
        found = cursor.fetchall()
        return [self._instances(list(row), tables, connection) for row in found]

    def count(self, *params: Any) -> int:
        """How many rows match (the joins play no part)."""
        connection = connections[DEFAULT_DB_ALIAS]
        prepared = self._parameters(connection, params)
        if prepared is None:
            return 0
        values, in_lengths = prepared
        key = ("count:" + connection.vendor, in_lengths)
        sql = self._counts.get(key)
        if sql is None:
            table = connection.ops.quote_name(self.model._meta.db_table)
            sql = self._counts[key] = f"SELECT COUNT(*) FROM {table}" + self._where_sql(  # noqa: S608
                connection, in_lengths, joined=False
            )
        cursor = statement_cursor(connection)
        cursor.execute(sql, values)
        return int(cursor.fetchone()[0])

    def _parameters(self, connection: Any, params: tuple[Any, ...]) -> tuple[list[Any], tuple[int, ...]] | None:
        """The statement's parameter values and IN-list lengths; None when an IN list is empty
        (nothing can match)."""
        if len(params) != len(self.where):
            raise TypeError(f"{len(self.where)} parameters expected, got {len(params)}")
        values: list[Any] = []
        in_lengths: list[int] = []
        for (target, is_in), param in zip(self._parameter_fields, params, strict=True):
            if is_in:
                items = [_pk_of(item) for item in param]
                if not items:
                    return None
                in_lengths.append(len(items))
                values += [target.get_db_prep_value(item, connection) for item in items]
            else:
                values.append(target.get_db_prep_value(_pk_of(param), connection))
        return values, tuple(in_lengths)

    @functools.cached_property
    def _parameter_fields(self) -> tuple[tuple[Field[Any, Any], bool], ...]:
        """For each ``where`` name, the field its parameter is prepared for (a foreign key's
        target) and whether it takes a sequence: resolved once, not on every read."""
        resolved = []
        for name in self.where:
            _path, field, is_in = self._condition(name)
            resolved.append((field.target_field if isinstance(field, ForeignKey) else field, is_in))
        return tuple(resolved)

    def first(self, *params: Any) -> _M | None:
        """The row (``where`` names a unique key: at most one matches), or None."""
        found = self.rows(*params)
        return found[0] if found else None

    @staticmethod
    def _instances(row: list[Any], tables: list[_Table], connection: Any) -> Any:
        objects: list[Model | None] = []
        for table in tables:
            for at, converters, expression in table.converters:
                for convert in converters:
                    row[at] = convert(row[at], expression, connection)
            values = row[table.start : table.start + len(table.attnames)]
            parent = objects[table.parent] if table.parent is not None else None
            if table.parent is not None and parent is None:
                objects.append(None)  # under an empty nullable key
                continue
            if values[table.pk_at] is None:
                instance = None
            elif table.plain and not (pre_init.receivers or post_init.receivers):
                instance = _plain_instance(table.model, table.attnames, values)
            else:
                instance = table.model.from_db(DEFAULT_DB_ALIAS, table.attnames, values)
            objects.append(instance)
            if parent is not None and table.via is not None:
                table.via.set_cached_value(parent, instance)
        return objects[0]


def _plain_model(model: type[Model]) -> bool:
    """Whether ``Model.__init__`` would only store each loaded value under its field's attname:
    the model overrides neither ``__init__`` nor ``from_db``, and every concrete field's attribute
    is Django's deferred-loading descriptor, which reads the instance dict (a ``FileField``'s or
    any other descriptor that wraps values on assignment keeps the ORM's path)."""
    if model.__init__ is not Model.__init__ or model.from_db.__func__ is not Model.from_db.__func__:  # type: ignore[attr-defined]
        return False
    allowed = (DeferredAttribute, ForeignKeyDeferredAttribute)
    return all(
        type(inspect.getattr_static(model, field.attname, None)) in allowed for field in model._meta.concrete_fields
    )


def _plain_instance(model: type[Model], attnames: tuple[str, ...], values: list[Any]) -> Model:
    """What ``model.from_db`` makes (the loaded values under their attnames, the others deferred,
    the instance loaded from the default database), without ``Model.__init__``'s per-field work and
    its ``pre_init``/``post_init`` sends (called only while neither signal has a receiver)."""
    instance = model.__new__(model)
    state = ModelState()
    state.adding = False
    state.db = DEFAULT_DB_ALIAS
    instance.__dict__["_state"] = state
    instance.__dict__.update(zip(attnames, values, strict=True))
    return instance


class FieldsUpdate(Generic[_M]):
    """``UPDATE`` of ``fields`` of one ``model`` row by primary key, as ``save(update_fields=…)``
    writes it (each field's ``pre_save``, so ``auto_now`` times are set, and its database
    preparation) without compiling the statement each time. The model must have no ``pre_save``
    or ``post_save`` receivers and no ``save()`` of its own: neither runs here."""

    def __init__(self, model: type[_M], fields: Sequence[str]) -> None:
        self.model = model
        self.fields: list[Field[Any, Any]] = []
        for name in fields:
            field = model._meta.get_field(name)
            if not isinstance(field, Field):
                raise TypeError(f"{name!r} is not a field of {model.__name__}")
            self.fields.append(field)
        self._sql: dict[str, str] = {}

    def save(self, obj: _M) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        sql = self._sql.get(connection.vendor)
        if sql is None:
            quote = connection.ops.quote_name
            assignments = ", ".join(f"{quote(f.column)} = %s" for f in self.fields)
            table = quote(self.model._meta.db_table)
            sql = self._sql[connection.vendor] = (
                f"UPDATE {table} SET {assignments} WHERE {quote(str(self.model._meta.pk.column))} = %s"  # noqa: S608
            )
        values = [f.get_db_prep_save(f.pre_save(obj, False), connection) for f in self.fields]
        values.append(self.model._meta.pk.get_db_prep_value(obj.pk, connection))
        cursor = statement_cursor(connection)
        cursor.execute(sql, values)
        if cursor.rowcount != 1:
            raise DatabaseError(f"{self.model.__name__} {obj.pk}: the update did not affect one row")


class RowInsert(Generic[_M]):
    """``INSERT`` of a new ``model`` row with every concrete field, as ``save(force_insert=True)``
    writes it (``pre_save`` of each field, so ``auto_now_add`` times are set) for a model whose
    primary key the application makes (a UUID): no statement compiled per call, no id read back.
    The model must have no ``pre_save``/``post_save`` receivers and no ``save()`` of its own."""

    def __init__(self, model: type[_M]) -> None:
        pk = model._meta.pk
        if pk is None or getattr(pk, "db_returning", False):
            raise TypeError(f"{model.__name__}: its database makes the primary key; use save()")
        self.model = model
        self.fields: list[Field[Any, Any]] = list(model._meta.concrete_fields)
        self._sql: dict[str, str] = {}

    def insert(self, obj: _M) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        sql = self._sql.get(connection.vendor)
        if sql is None:
            quote = connection.ops.quote_name
            columns = ", ".join(quote(f.column) for f in self.fields)
            placeholders = ", ".join(["%s"] * len(self.fields))
            table = quote(self.model._meta.db_table)
            sql = self._sql[connection.vendor] = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"  # noqa: S608
        values = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in self.fields]
        statement_cursor(connection).execute(sql, values)
        obj._state.adding = False
        obj._state.db = DEFAULT_DB_ALIAS


def statement_cursor(connection: Any) -> Any:
    """A cursor for these statements: one database cursor per connection, kept while the
    connection lives, in Django's wrapper (so query capture and error translation still apply).
    Django opens a cursor per statement; reusing one spares the driver making its result loaders
    afresh each time (psycopg keeps them per cursor)."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    raw = getattr(connection, "_prepared_sql_cursor", None)
    if raw is None or getattr(raw, "connection", None) is not connection.connection or getattr(raw, "closed", False):
        with connection.wrap_database_errors:
            raw = connection.create_cursor()
        connection._prepared_sql_cursor = raw
    with connection.wrap_database_errors:
        return connection._prepare_cursor(raw)


def _pk_of(value: Any) -> Any:
    return value.pk if isinstance(value, Model) else value
