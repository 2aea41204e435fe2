"""Rollout planning at scale: one ``create_rollout`` over N cards on the configured database.

Card data is generated in bulk first and not timed: N cards, Alpha Bank's SSD on each with its
wallet applet at v1.0 (plus N/50 cards with it at v1.1, not targeted), and Beta Bank's SSD and applet on a
quarter of the cards — all with ``INSERT ... SELECT`` over ``generate_series`` (PostgreSQL) or a
recursive CTE (SQLite), then ``ANALYZE``. The timed part is planning a rollout of Alpha's v2.0 to
every card at v1.0 in groups 1 % → 10 % → 50 % → 100 %: the service call as the API makes it
(validation, one ``INSERT ... SELECT`` of the targets with their groups, counters, audit entry).
Starting the rollout (the first group's card jobs, in bulk) is timed separately, for information.

Usage: ``DATABASE_URL=postgres://postgres@127.0.0.1:5432/ecard_bench python bench/bench_rollout.py
--cards 1000000``. Without ``DATABASE_URL`` it uses a throwaway SQLite file. The database is
flushed first, so its name must contain ``bench`` (or pass ``--force``). It replaces its own
section of ``docs/benchmarks.md`` (``--no-write`` to leave it) and prints as its last line
``planned N cards in S s, peak RSS M MB``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchdoc import machine_note, memory_gib, write_section  # noqa: E402 - after the sys.path entry

SECTION = "## Rollout planning"
ALPHA_RID, BETA_RID = "F0414C5048", "F042455441"


def setup_django(workdir: Path, force: bool) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "ecard.settings"
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"
    elif "bench" not in url.rsplit("/", 1)[-1] and not force:
        raise SystemExit(f"refusing to flush {url!r}: use a database whose name contains 'bench' (or --force)")
    os.environ["ECARD_CARDS_DIR"] = str(workdir / "cards")
    os.environ.setdefault("ECARD_MASTER_KEY", secrets.token_hex(32))  # a throwaway key for a throwaway DB
    os.environ.pop("CELERY_BROKER_URL", None)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)


def insert_select(model: Any, exprs: dict[str, str], source: str, params: list[Any]) -> int:
    """``INSERT INTO <model> (every column) SELECT <expr or the field's default> <source>``."""
    from django.db import connection
    from django.utils import timezone

    columns, values, value_params = [], [], []
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    for f in model._meta.concrete_fields:
        if f.primary_key and f.column not in exprs:
            continue
        columns.append(connection.ops.quote_name(f.column))
        if f.column in exprs:
            values.append(exprs[f.column])
        elif getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False):
            values.append("%s")
            value_params.append(now)
        else:
            default = f.get_default()  # "" for text fields without a default
            if default is None and not f.null:
                raise SystemExit(f"no value for {model.__name__}.{f.name}")
            values.append("%s")
            value_params.append(f.get_db_prep_save(default, connection))
    sql = (
        f"INSERT INTO {connection.ops.quote_name(model._meta.db_table)} ({', '.join(columns)}) "
        f"SELECT {', '.join(values)} {source}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, value_params + params)
        return cursor.rowcount


def build(cards: int) -> tuple[Any, Any, Any, dict[str, float]]:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from cards.models import AppletInstance, Card, SecurityDomain
    from cards.services import ssd_aid_for
    from issuers import services as issuer_services
    from issuers.models import Membership
    from updates.demo_cap import build_cap
    from updates.releases import create_release

    agency = issuer_services.create_organization(name="National Card Agency", slug="agency", kind="agency")
    alpha = issuer_services.admit_bank(name="Alpha Bank", slug="alpha", rid=ALPHA_RID)
    beta = issuer_services.admit_bank(name="Beta Bank", slug="beta", rid=BETA_RID)
    operator = get_user_model().objects.create_user("alpha_op")
    issuer_services.add_member(organization=alpha, user=operator, role=Membership.Role.OPERATOR)
    package = ALPHA_RID + "01"
    for version in ((1, 0), (1, 1), (2, 0)):
        cap = build_cap(package, [package + "01"], version, name="alpha.wallet", code_size=2048)
        release = create_release(bank=alpha, cap_bytes=cap, filename=f"wallet-{version}.cap", actor=operator)
    pg = connection.vendor == "postgresql"
    if pg:
        series = "FROM generate_series(1, %s) AS s(i)"
        cin, kdd = "upper(lpad(to_hex({i}), 16, '0'))", "upper(lpad(to_hex({i}), 20, '0'))"
    else:
        series = "FROM (WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < %s) SELECT i FROM s) s"
        cin, kdd = "printf('%%016X', {i})", "printf('%%020X', {i})"
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with transaction.atomic():
        # N cards to target, and N/50 more whose wallet is at another version (not targeted).
        for prefix, offset, count in (("B", 0, cards), ("X", cards, cards // 50)):
            insert_select(
                Card,
                {
                    "cin": cin.format(i=f"i + {offset}"),
                    "serial": f"'{prefix}' || i",
                    "kdd": kdd.format(i=f"i + {offset}"),
                    "issued_by_id": str(int(agency.pk)),
                },
                series,
                [count],
            )
        for bank, share in ((alpha, "1 = 1"), (beta, "c.id %% 4 = 0")):
            insert_select(
                SecurityDomain,
                {
                    "card_id": "c.id",
                    "organization_id": str(int(bank.pk)),
                    "aid": f"'{hex_aid(ssd_aid_for(bank))}'",
                    "state": "'active'",
                    "lifecycle": "'PERSONALIZED'",
                    "key_kvn": "49",
                },
                f"FROM cards_card c WHERE {share}",
                [],
            )
            rid = ALPHA_RID if bank == alpha else BETA_RID
            version = "CASE WHEN c.serial LIKE 'X%%' THEN '1.1' ELSE '1.0' END" if bank == alpha else "'1.0'"
            insert_select(
                AppletInstance,
                {
                    "security_domain_id": "sd.id",
                    "package_aid": f"'{rid}01'",
                    "package_version": version,
                    "module_aid": f"'{rid}0101'",
                    "instance_aid": f"'{rid}010101'",
                    "lifecycle": "'SELECTABLE'",
                },
                "FROM cards_securitydomain sd JOIN cards_card c ON c.id = sd.card_id WHERE sd.organization_id = %s",
                [bank.pk],
            )
    timings["generate"] = time.perf_counter() - started
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    timings["analyze"] = time.perf_counter() - started
    return alpha, release, operator, timings


def hex_aid(aid: str) -> str:
    if not re.fullmatch(r"[0-9A-F]{10,32}", aid):
        raise SystemExit(f"unexpected AID {aid!r}")
    return aid


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def _machine() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
            database = f"PostgreSQL {cursor.fetchone()[0].split()[0]} (same host, TCP)"
        else:
            cursor.execute("SELECT sqlite_version()")
            database = f"SQLite {cursor.fetchone()[0]} (file)"
    memory = memory_gib()
    return machine_note(*([f"{memory} GiB RAM"] if memory else []), database)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cards", type=int, default=10_000)
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--force", action="store_true", help="flush a database whose name lacks 'bench'")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ecard-bench-rollout-") as tmp:
        setup_django(Path(tmp), args.force)
        from django.db import connection

        from updates import rollouts
        from updates.models import RolloutGroup

        alpha, release, operator, timings = build(args.cards)
        rss_before = peak_rss_mb()
        print(
            f"generated {args.cards:,} cards (+SSDs, applets) in {timings['generate']:.1f} s, "
            f"ANALYZE {timings['analyze']:.1f} s; peak RSS so far {rss_before:.0f} MB",
            flush=True,
        )
        started = time.perf_counter()
        rollout = rollouts.create_rollout(
            bank=alpha, release=release, actor=operator, from_version="1.0", groups=["1%", "10%", "50%", "100%"]
        )
        planned = time.perf_counter() - started
        rss = peak_rss_mb()
        groups = list(RolloutGroup.objects.filter(rollout=rollout).order_by("index").values_list("bound", "total"))
        started = time.perf_counter()
        rollouts.start_rollout(rollout=rollout, actor=operator)
        activated = time.perf_counter() - started
        first = groups[0][1]
        vendor = connection.vendor
        print(
            f"groups: {', '.join(f'{b} → {t:,}' for b, t in groups)}; started (group 1: {first:,} card jobs) in "
            f"{activated:.2f} s",
            flush=True,
        )
        line = f"planned {rollout.total} cards in {planned:.2f} s, peak RSS {rss:.0f} MB"
        if not args.no_write:
            text = report(args.cards, rollout.total, planned, rss, rss_before, groups, activated, timings, vendor)
            write_section(SECTION, text)
        print(line)


def report(
    cards: int,
    total: int,
    planned: float,
    rss: float,
    rss_before: float,
    groups: list[tuple[str, int]],
    activated: float,
    timings: dict[str, float],
    vendor: str,
) -> str:
    db = "PostgreSQL" if vendor == "postgresql" else "SQLite"
    verdict = "met" if planned < 60 and rss < 500 else "missed"
    return "\n".join(
        [
            f"`DATABASE_URL=… python bench/bench_rollout.py --cards {cards}` — {_machine()}.",
            "",
            f"Planning a rollout of Alpha's wallet v2.0 to every card with v1.0 in Alpha's security domain "
            f"({cards + cards // 50:,} cards generated in bulk, {total:,} of them at v1.0 and the others at v1.1; "
            f"Beta's SSD and applet on a quarter of them), groups 1 % → 10 % → 50 % → 100 %, on {db}. *planned* is "
            f"the `create_rollout` service call (validation, one `INSERT … SELECT` writing every target with its "
            f"group — `ROW_NUMBER()` over a hash "
            f"of the card id, cumulative bounds as integer arithmetic on the rank — group counters by one "
            f"`GROUP BY`, audit entry). Peak RSS is the whole process's (`ru_maxrss`).",
            "",
            "| cards targeted | planned s | peak RSS MB | RSS before planning MB | generation s (not timed) |",
            "|---:|---:|---:|---:|---:|",
            f"| {total:,} | {planned:.2f} | {rss:.0f} | {rss_before:.0f} | {timings['generate']:.1f} |",
            "",
            f"Groups: {', '.join(f'{b} → {t:,} cards' for b, t in groups)}. Starting the rollout — the first "
            f"group's {groups[0][1]:,} card jobs (`INSERT … SELECT … RETURNING` feeding the targets' update in one "
            f"statement) — took {activated:.2f} s.",
            "",
            f"Target (under 60 s and under 500 MB): {planned:.1f} s, {rss:.0f} MB — {verdict}.",
            *busy_note(),
        ]
    )


def busy_note() -> list[str]:
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load <= cores:
        return []
    return [
        "",
        f"The machine was busy with other work during the run (load average {load:.1f} on {cores} cores): "
        "the times are upper bounds.",
    ]


if __name__ == "__main__":
    main()
