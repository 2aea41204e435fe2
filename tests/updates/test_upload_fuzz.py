"""1,000 randomly mutated CAP files through the upload API: every one refused with a clear reason
(a problem document with a non-empty detail), nothing stored, never a 500.

Sources: the real CAP files in ``../shared/testdata/cap`` and demo CAPs (``updates.demo_cap``);
each is first uploaded intact by the bank whose AID range holds it, so a mutation is refused for
what it broke (or as a duplicate of the stored release, when it broke nothing the platform reads)
rather than for the AID range. Mutations (seeded): bit flips, truncations, inserted and deleted
bytes anywhere in the zip; and component-level ones re-zipped with valid CRCs — flipped, cut,
extended or dropped components, wrong size fields, bad magic, an unsupported CAP format, applet
flag without an Applet component, a package AID outside the bank's range, unknown or too-new
imports. Header mutations that would make a different but valid release (new version, another
AID inside the range) are not generated: such a file is a legitimate upload, not a bad one.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections import Counter

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEntry
from issuers import services as issuer_services
from issuers.models import Membership
from tests.factories import make_user
from tests.shared_data import cap_file
from updates.demo_cap import build_cap
from updates.models import Release

pytestmark = pytest.mark.django_db

SHARED_CAPS = {
    "AlgTest_v1.6_supportOnly_jc212.cap": "6D79706163",
    "Empty_0102030405_8d5ac9e2_2.2.1.cap": "0102030405",
    "openjavacard-lib-ber.cap": "A00000FFFF",
    "openjavacard-lib-debug.cap": "A00000FFFF",
    "openjavacard-svc-debug.cap": "A00000FFFF",  # imports the two libraries: uploaded after them
}
DEMO_RID = "F0414C5048"
MUTANTS = 1000
SEED = 20261127


def _components(cap: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(cap)) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def _rezip(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return out.getvalue()


def _is_component(name: str, component: str) -> bool:
    return name.replace("\\", "/").rsplit("/", 1)[-1] == f"{component}.cap"


def _with_header(header: bytes, offset: int, new: bytes) -> bytes:
    return header[:offset] + new + header[offset + len(new) :]


def raw_mutation(rng: random.Random, cap: bytes) -> tuple[str, bytes]:
    data = bytearray(cap)
    kind = rng.choice(["flip", "flip", "truncate", "insert", "delete"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data))
            data[pos] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del data[rng.randrange(1, len(data)) :]
    elif kind == "insert":
        pos = rng.randrange(len(data))
        data[pos:pos] = rng.randbytes(rng.randint(1, 64))
    else:
        pos = rng.randrange(len(data) - 1)
        del data[pos : pos + rng.randint(1, 64)]
    return f"raw:{kind}", bytes(data)


def component_mutation(rng: random.Random, cap: bytes) -> tuple[str, bytes]:
    entries = [(info.filename, data) for info, data in _components(cap)]
    names = [n for n, _ in entries if n.endswith(".cap")]
    kind = rng.choice(
        [
            "flip_body",
            "cut",
            "extend",
            "drop",
            "size_field",
            "magic",
            "format",
            "aid_length",
            "aid_range",
            "applet_flag",
            "import_unknown",
            "import_too_new",
            "empty",
            "swap",
        ]
    )
    header_name = next(n for n in names if _is_component(n, "Header"))
    out = [[name, data] for name, data in entries]

    def edit(component: str, fn) -> None:
        for item in out:
            if _is_component(item[0], component):
                item[1] = fn(item[1])

    if kind in ("flip_body", "cut", "extend", "size_field", "empty"):
        # Never the Header: a changed version or AID there can make a different, valid release.
        candidates = [n for n in names if n != header_name]
        target = rng.choice(candidates)
        for item in out:
            if item[0] != target:
                continue
            body = bytearray(item[1])
            if kind == "flip_body" and len(body) > 3:
                for _ in range(rng.randint(1, 6)):
                    pos = rng.randrange(len(body))
                    body[pos] ^= 1 << rng.randrange(8)
                # Keep tag/size consistent sometimes and broken at other times.
                if rng.random() < 0.5:
                    body[0] = item[1][0]
                    body[1:3] = item[1][1:3]
            elif kind == "cut":
                del body[rng.randrange(0, max(1, len(body) - 1)) :]
            elif kind == "extend":
                body += rng.randbytes(rng.randint(1, 32))
            elif kind == "size_field" and len(body) >= 3:
                size = int.from_bytes(body[1:3], "big")
                delta = rng.choice([-3, -1, 1, 2, 100])
                body[1:3] = max(0, min(0xFFFF, size + delta)).to_bytes(2, "big")
            elif kind == "empty":
                body = bytearray()
            item[1] = bytes(body)
    if kind == "drop":
        required = [
            n
            for n in names
            if any(
                _is_component(n, c)
                for c in (
                    "Header",
                    "Directory",
                    "Import",
                    "ConstantPool",
                    "Class",
                    "Method",
                    "StaticField",
                    "RefLocation",
                )
            )
        ]
        victim = rng.choice(required)
        out = [item for item in out if item[0] != victim]
    elif kind == "magic":
        edit("Header", lambda h: _with_header(h, 3, rng.randbytes(4)))
    elif kind == "format":
        edit("Header", lambda h: _with_header(h, 8, bytes((rng.choice([0, 3, 7, 255]),))))  # major
    elif kind == "aid_length":
        edit("Header", lambda h: _with_header(h, 12, bytes((rng.choice([0, 3, 17, 200]),))))
    elif kind == "aid_range":

        def other_rid(h: bytes) -> bytes:
            # package AID (after magic, minor, major, flags, package minor, major, AID length): new RID
            return _with_header(h, 13, bytes.fromhex("D276000085"))

        edit("Header", other_rid)
    elif kind == "applet_flag":
        # Header flags (offset 9) toggled for ACC_APPLET: the Applet component's presence disagrees.
        edit("Header", lambda h: _with_header(h, 9, bytes((h[9] ^ 0x04,))))
    elif kind == "import_unknown":
        # Import component: count, then {minor, major, len, AID}: the first imported AID is replaced.
        def unknown(b: bytes) -> bytes:
            last = 7 + b[6] - 1  # the last byte of the first imported AID
            return b[:last] + bytes((b[last] ^ 0x5A,)) + b[last + 1 :]

        edit("Import", unknown)
    elif kind == "import_too_new":
        edit("Import", lambda b: b[:4] + bytes((b[4] + 9, b[5])) + b[6:])  # minor version beyond the card's
    elif kind == "swap" and len(names) >= 2:
        a, b = rng.sample(range(len(out)), 2)
        out[a][1], out[b][1] = out[b][1], out[a][1]
    return f"component:{kind}", _rezip([(n, d) for n, d in out])


@pytest.fixture
def uploaders():
    """A bank per source RID with an operator, and the intact sources already stored."""
    issuer_services.create_organization(name="National Card Agency", slug="agency", kind="agency")
    clients: dict[str, APIClient] = {}
    for number, rid in enumerate(sorted({*SHARED_CAPS.values(), DEMO_RID})):
        bank = issuer_services.admit_bank(name=f"Bank {number}", slug=f"bank{number}", rid=rid)
        user = make_user(f"op{number}")
        issuer_services.add_member(organization=bank, user=user, role=Membership.Role.OPERATOR)
        client = APIClient()
        client.force_authenticate(user)
        clients[rid] = client
    sources: list[tuple[str, str, bytes]] = []
    for name, rid in SHARED_CAPS.items():
        sources.append((name, rid, cap_file(name).read_bytes()))
    for version in ((1, 0), (1, 1)):
        sources.append(
            (
                f"demo-{version}",
                DEMO_RID,
                build_cap(DEMO_RID + "01", [DEMO_RID + "0101"], version, name="demo.wallet", code_size=300),
            )
        )
    sources.append(("demo-lib", DEMO_RID, build_cap(DEMO_RID + "02", [], (1, 0), name="demo.lib")))
    for name, rid, data in sources:
        response = post(clients[rid], data, name)
        assert response.status_code == 201, (name, response.content)
    return clients, sources


def post(client: APIClient, data: bytes, name: str):
    handle = io.BytesIO(data)
    handle.name = name if name.endswith(".cap") else name + ".cap"
    return client.post("/api/v1/releases/", {"cap_file": handle}, format="multipart")


def test_mutated_cap_files_are_all_refused_with_a_reason(uploaders) -> None:
    clients, sources = uploaders
    stored = Release.objects.count()
    created = AuditEntry.objects.filter(action="release.created").count()
    rng = random.Random(SEED)
    kinds: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for number in range(MUTANTS):
        name, rid, original = rng.choice(sources)
        mutate = raw_mutation if rng.random() < 0.5 else component_mutation
        kind, mutant = mutate(rng, original)
        if mutant == original:
            mutant = mutant[:-1]
        kinds[kind] += 1
        response = post(clients[rid], mutant, f"mutant-{number}")
        assert response.status_code in (400, 409), (number, kind, name, response.status_code, response.content[:300])
        assert response["Content-Type"].startswith("application/problem+json")
        problem = response.json()
        assert problem["status"] == response.status_code and problem["detail"].strip(), (kind, problem)
        assert problem["errors"]["cap_file"], problem
        reasons[problem["detail"].split(":")[0][:60]] += 1
    assert Release.objects.count() == stored
    assert AuditEntry.objects.filter(action="release.created").count() == created
    # The generator exercised every family of mutation and the refusals say different things.
    assert len(kinds) >= 15, kinds
    assert len(reasons) >= 10, reasons
