"""CSV batch issuance: every row is checked first; one bad row refuses the whole file, nothing is
issued. Otherwise all cards are issued in one transaction (a late refusal rolls every one back)."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction

from cards import services as card_services
from cards.models import Card
from ecard.errors import ServiceError
from issuers.models import Organization

MAX_ROWS = 1000
MAX_BYTES = 512 * 1024
COLUMNS = ("holder", "scp", "cin", "serial")
# Longest value of each column (a username is at most 150 characters; CIN and serial 32).
MAX_LENGTHS = {"holder": 150, "scp": 2, "cin": 32, "serial": 32}
# The csv module's own bound on a field (its default, 128 KiB) stays: a longer field ends the parse
# with csv.Error, reported as a refusal; the lengths above are checked first and say which column.
HEX = re.compile(r"^[0-9A-Fa-f]*$")


@dataclass(frozen=True)
class RowError:
    row: int  # line number in the file (the header is line 1)
    message: str


@dataclass(frozen=True)
class Row:
    line: int
    holder: User | None
    scp: int
    cin: str
    serial: str


class BatchRefused(Exception):
    def __init__(self, errors: list[RowError]) -> None:
        super().__init__(f"{len(errors)} row(s) refused")
        self.errors = errors


def parse(data: bytes) -> list[Row]:
    """Rows of a batch file, or :class:`BatchRefused` with every problem found (row number, reason)."""
    if len(data) > MAX_BYTES:
        raise BatchRefused([RowError(0, f"the file is larger than {MAX_BYTES // 1024} KiB")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BatchRefused([RowError(0, "the file is not UTF-8 text")]) from None
    if "\x00" in text:  # PostgreSQL refuses NUL in text; a CSV file never has one
        raise BatchRefused([RowError(0, "the file contains NUL characters: it is not a text CSV file")])
    try:
        return _parse_rows(text)
    except csv.Error as exc:  # e.g. a field beyond the csv module's limit (128 KiB)
        raise BatchRefused([RowError(0, f"the file is not valid CSV: {exc}")]) from None


def _parse_rows(text: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    if "holder" not in header:
        raise BatchRefused([RowError(1, "the header row must name the columns: holder,scp,cin,serial")])
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        shown = ", ".join(h[:40] for h in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise BatchRefused([RowError(1, f"unknown column(s): {shown}")])
    if len(set(header)) != len(header):
        raise BatchRefused([RowError(1, "a column is named twice in the header row")])
    users = get_user_model().objects
    errors: list[RowError] = []
    rows: list[Row] = []
    seen: dict[str, dict[str, int]] = {"holder": {}, "cin": {}, "serial": {}}
    for raw in reader:
        line = reader.line_num
        if len(rows) + len(errors) >= MAX_ROWS:
            errors.append(RowError(line, f"more than {MAX_ROWS} rows"))
            break
        values = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
        if None in raw:
            errors.append(RowError(line, "more fields than columns"))
            continue
        if not any(values.values()):
            continue
        too_long = [key for key, value in values.items() if len(value) > MAX_LENGTHS[key]]
        if too_long:
            errors.append(
                RowError(line, "; ".join(f"{key} is longer than {MAX_LENGTHS[key]} characters" for key in too_long))
            )
            continue
        problems: list[str] = []
        holder = None
        username = values.get("holder", "")
        if username:
            holder = users.filter(username=username).first()
            if holder is None:
                problems.append(f"no user named {username!r}")
            elif holder.memberships.exists():
                problems.append(f"{username} is an organisation member and cannot hold a citizen card")
            elif card_services.live_card_of(holder) is not None:
                problems.append(f"{username} already holds a card")
        else:
            problems.append("holder is empty")
        scp_text = values.get("scp", "") or "03"
        scp = {"3": 3, "03": 3, "2": 2, "02": 2}.get(scp_text)
        if scp is None:
            problems.append(f"scp must be 03 or 02, not {scp_text!r}")
        cin = values.get("cin", "").upper()
        if cin and (not HEX.match(cin) or len(cin) % 2 or not 8 <= len(cin) <= 32):
            problems.append("cin must be 4 to 16 bytes in hexadecimal")
        elif cin and Card.objects.filter(cin=cin).exists():
            problems.append(f"a card with CIN {cin} exists")
        serial = values.get("serial", "")
        if serial and Card.objects.filter(serial=serial).exists():
            problems.append(f"a card with serial {serial} exists")
        for key, value in (("holder", username), ("cin", cin), ("serial", serial)):
            if value:
                if value in seen[key]:
                    problems.append(f"{key} {value} repeats row {seen[key][value]}")
                else:
                    seen[key][value] = line
        if problems:
            errors.append(RowError(line, "; ".join(problems)))
        else:
            rows.append(Row(line=line, holder=holder, scp=scp or 3, cin=cin, serial=serial))
    if not rows and not errors:
        errors.append(RowError(0, "the file has no rows"))
    if errors:
        raise BatchRefused(errors)
    return rows


def issue_batch(*, agency: Organization, data: bytes, emulated: bool, actor: User) -> list[Card]:
    rows = parse(data)
    issued: list[Card] = []
    try:
        with transaction.atomic():
            for row in rows:
                try:
                    issued.append(
                        card_services.issue_card(
                            agency=agency,
                            holder=row.holder,
                            scp=row.scp,
                            cin=row.cin,
                            serial=row.serial,
                            emulated=emulated,
                            actor=actor,
                        )
                    )
                except ServiceError as exc:
                    raise BatchRefused([RowError(row.line, exc.message)]) from exc
    except BatchRefused:
        for card in issued:  # the records rolled back; drop the emulated cards' state files too
            if card.state_file:
                Path(card.state_file).unlink(missing_ok=True)
        raise
    return issued
