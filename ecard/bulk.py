"""Inserting many rows at once: ``COPY … FROM STDIN`` on PostgreSQL, ``bulk_create`` elsewhere.

A multi-row ``INSERT`` of thousands of rows costs PostgreSQL's client library most of its time
parsing the statement's placeholders (psycopg caches no statement of more than 50 parameters);
``COPY`` sends the rows without a statement to parse. For imports of thousands of rows at once
(a manufacturer's file: docs/manufacturer-file.md). No signals are sent, as with ``bulk_create``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection
from django.db.models import Model

BULK_CREATE_BATCH = 1000


def insert_rows(model: type[Model], objs: Sequence[Model]) -> None:
    """Insert ``objs`` (unsaved instances of ``model``) in the caller's transaction. Their ``pk``
    is not set on PostgreSQL: read the rows back when their ids are needed."""
    if not objs:
        return
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(objs, batch_size=BULK_CREATE_BATCH)
        return
    meta = model._meta
    fields = [f for f in meta.concrete_fields if not f.primary_key]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    sql = f"COPY {connection.ops.quote_name(meta.db_table)} ({columns}) FROM STDIN"
    with connection.cursor() as cursor:
        raw: Any = cursor.cursor  # psycopg's own cursor: Django's wrapper has no copy()
        with raw.copy(sql) as copy:
            for obj in objs:
                copy.write_row([f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields])
