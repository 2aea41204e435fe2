"""Real cards from a manufacturer's personalisation file (cards.manufacturer, gp.manufacturer_file):
a file round-trips from the writer into the registry with its keys in custody only; every refusal
names the line and imports nothing; only the agency imports."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import replace
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from audit.models import AuditEntry
from cards import manufacturer
from cards.models import ISD_AID, Card, ManufacturerBatch, SecurityDomain
from ecard.errors import ServiceError
from gp import manufacturer_file as mf
from issuers import custody
from issuers.custody_models import KeySet
from tests.factories import World, build_world
from tests.manufacturer_kit import Maker

pytestmark = pytest.mark.django_db


@pytest.fixture
def world() -> World:
    return build_world()


@pytest.fixture
def maker(world: World) -> Maker:
    return Maker(world.agency)


def refused(agency: Any, data: bytes) -> str:
    before = (
        Card.objects.count(),
        KeySet.objects.count(),
        ManufacturerBatch.objects.count(),
        AuditEntry.objects.count(),
    )
    with pytest.raises(ServiceError) as caught:
        manufacturer.import_manufacturer_file(agency=agency, data=data)
    after = (
        Card.objects.count(),
        KeySet.objects.count(),
        ManufacturerBatch.objects.count(),
        AuditEntry.objects.count(),
    )
    assert after == before, "a refused file imported something"
    return caught.value.message


def change(lines: list[bytes], line: int, **changes: Any) -> list[bytes]:
    value = json.loads(lines[line - 1])
    value.update(changes)
    lines[line - 1] = json.dumps(value, separators=(",", ":")).encode() + b"\n"
    return lines


def edited(data: bytes, line: int, **changes: Any) -> list[bytes]:
    """The file's lines (trailer dropped) with fields of one line changed; re-seal them."""
    return change([raw + b"\n" for raw in data.split(b"\n")[:-2]], line, **changes)


# ------------------------------------------------------------------------------------ round trip


def test_a_file_round_trips_into_real_cards_with_their_keys_in_custody(world: World, maker: Maker) -> None:
    cards = mf.random_cards(3) + mf.random_cards(1, scp=0x02)
    batch = manufacturer.import_manufacturer_file(agency=world.agency, data=maker.file(cards), file_name="acme.jsonl")

    assert batch.card_count == 4 and batch.manufacturer == "Acme Card Works"
    assert batch.transport_kcv == mf.kcv("aes", maker.transport_key)
    for line in cards:
        card = Card.objects.get(cin=line.cin)
        assert card.manufacturer_batch == batch and card.serial == line.serial and card.kdd == line.kdd
        assert (card.key_scheme, card.emulated, card.holder, card.state_file) == ("stored", False, None, "")
        assert (card.scp, card.scp_i, card.isd_kvn) == (line.scp, line.i, line.isd_keys.version)
        assert card.lifecycle == Card.Lifecycle.SECURED and card.iin == "4543415244"
        assert card.cplc["ic_serial_number"] == line.cplc.ic_serial_number.hex().upper()
        assert card.valid_from is not None and card.valid_until.year == card.valid_from.year + 5
        isd = SecurityDomain.objects.get(card=card, is_isd=True)
        assert (isd.aid, isd.key_kvn, isd.state) == (ISD_AID, line.isd_keys.version, SecurityDomain.State.ACTIVE)
        # the keys are the manufacturer's, now under the agency's KEK
        stored = KeySet.objects.get(card_cin=card.cin, sd_aid=ISD_AID, purpose=KeySet.Purpose.SCP_STATIC)
        assert stored.kvn == line.isd_keys.version and custody.load_static_keys(stored) == line.isd_keys
        assert stored.kcvs == line.isd_keys.kcvs("aes" if line.scp == 0x03 else "des")
        receipt = KeySet.objects.get(card_cin=card.cin, purpose=KeySet.Purpose.RECEIPT)
        assert receipt.kvn == 0x71 and custody.load_secret_key(receipt) == line.receipt_key
        initial = KeySet.objects.get(card_cin=card.cin, sd_aid="", purpose=KeySet.Purpose.SCP_STATIC)
        assert custody.load_static_keys(initial).enc == line.ssd_initial_key
        assert initial.kvn == mf.SSD_INITIAL_KVN[line.scp]
        assert receipt.algorithm == ("aes" if line.scp == 0x03 else "3des")


def test_the_import_is_in_the_transparency_log(world: World, maker: Maker) -> None:
    cards = mf.random_cards(2)
    data = maker.file(cards)
    batch = manufacturer.import_manufacturer_file(agency=world.agency, data=data)
    entry = AuditEntry.objects.get(action="manufacturer_batch.imported")
    assert entry.subject_id == str(batch.pk)
    assert entry.details["file_sha256"] == hashlib.sha256(data).hexdigest() and entry.details["card_count"] == 2
    issued = AuditEntry.objects.filter(action="card.issued", details__manufacturer_batch=batch.pk)
    assert sorted(issued.values_list("card_cin", flat=True)) == sorted(c.cin for c in cards)
    stored = AuditEntry.objects.get(action="custody.keys_stored")
    assert stored.details["count"] == 6 and stored.details["manufacturer_batch"] == batch.pk


def test_the_imported_keys_are_stored_in_clear_nowhere(world: World, maker: Maker) -> None:
    cards = mf.random_cards(2)
    manufacturer.import_manufacturer_file(agency=world.agency, data=maker.file(cards))
    secrets_ = [
        k for c in cards for k in (c.isd_keys.enc, c.isd_keys.mac, c.isd_keys.dek, c.receipt_key, c.ssd_initial_key)
    ]
    rows = [
        *KeySet.objects.values_list("wrapped", "kcv_enc", "kcv_mac", "kcv_dek", "public_key"),
        *Card.objects.values_list("cin", "serial", "kdd", "cplc"),
        *ManufacturerBatch.objects.values_list("file_name", "file_sha256", "transport_kcv"),
        *AuditEntry.objects.values_list("details", "subject_id"),
    ]
    haystack = repr(rows).encode() + repr(rows).upper().encode()
    for key in [*secrets_, maker.transport_key]:
        assert key not in haystack and key.hex().encode() not in haystack.lower()
        assert all(key not in bytes(wrapped) for wrapped, *_ in KeySet.objects.values_list("wrapped"))


def test_holders_are_assigned_to_imported_cards_as_to_any_card(world: World, maker: Maker) -> None:
    from cards.services import assign_holder
    from tests.factories import make_user

    (line,) = mf.random_cards(1)
    manufacturer.import_manufacturer_file(agency=world.agency, data=maker.file([line]))
    citizen = make_user("citizen9")
    card = assign_holder(card=Card.objects.get(cin=line.cin), holder=citizen, actor=world.users["agency_op"])
    assert card.holder == citizen


# ------------------------------------------------------------------------------------ refusals


def test_a_wrong_transport_key_is_refused_on_the_first_card_line(world: World, maker: Maker) -> None:
    cards = mf.random_cards(3)
    data = mf.seal(maker.lines(cards, transport_key=secrets.token_bytes(16)), maker.transport_key)
    message = refused(world.agency, data)
    assert message.startswith("line 2: isd_enc does not unwrap under the transport key")


def test_an_unregistered_transport_key_is_refused_on_the_header(world: World, maker: Maker) -> None:
    other = Maker(world.agency, register=False)
    message = refused(world.agency, other.file(mf.random_cards(1)))
    assert message == f"line 1: no transport key with check value {mf.kcv('aes', other.transport_key)} is registered"


def test_a_single_bad_check_value_imports_nothing_and_names_its_line(world: World, maker: Maker) -> None:
    cards = mf.random_cards(5)
    lines = edited(maker.file(cards), 4, isd_mac_kcv="000000")
    message = refused(world.agency, mf.seal(lines, maker.transport_key))
    assert message == "line 4: isd_mac_kcv 000000 does not match the key's check value"


def test_an_altered_file_fails_its_mac_on_the_trailer_line(world: World, maker: Maker) -> None:
    data = maker.file(mf.random_cards(2))
    tampered = data.replace(b'"serial":"MF', b'"serial":"XF', 1)
    assert refused(world.agency, tampered).startswith("line 4: the file MAC does not verify")


def test_a_duplicate_card_number_within_the_file_is_refused(world: World, maker: Maker) -> None:
    first, second = mf.random_cards(2)
    second = replace(second, serial=first.serial)
    message = refused(world.agency, maker.file([first, second]))
    assert message == f"line 3: card number {first.serial} is already on line 2"


def test_a_card_already_in_the_registry_is_refused(world: World, maker: Maker) -> None:
    existing = world.cards["card1"]
    (line,) = mf.random_cards(1)
    message = refused(world.agency, maker.file([*mf.random_cards(1), replace(line, cin=existing.cin)]))
    assert message == f"line 3: CIN {existing.cin} is already in the registry"
    message = refused(world.agency, maker.file([replace(line, serial=existing.serial)]))
    assert message == f"line 2: card number {existing.serial} is already in the registry"


def test_the_same_file_twice_is_a_conflict(world: World, maker: Maker) -> None:
    data = maker.file(mf.random_cards(1))
    manufacturer.import_manufacturer_file(agency=world.agency, data=data)
    with pytest.raises(ServiceError) as caught:
        manufacturer.import_manufacturer_file(agency=world.agency, data=data)
    assert caught.value.code == "duplicate" and "imported already" in caught.value.message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"cin": "01020G"}, "line 3: cin is not upper-case hexadecimal"),
        ({"kdd": "0102"}, "line 3: kdd is 2 bytes (10 expected)"),
        ({"cplc": "00" * 20}, "line 3: cplc is 20 bytes (42 to 128 expected)"),
        ({"scp": "11"}, "line 3: scp 11 is not supported (02 or 03)"),
        ({"i": "60"}, "line 3: SCP03 i=60 is not supported (i=70: the platform needs R-MAC)"),
        ({"isd_kvn": "71"}, "line 3: isd_kvn 71 is outside 01..6F"),
        ({"receipt": "00" * 24}, "line 3: receipt does not unwrap under the transport key"),
        ({"ssd_initial": "00" * 8}, "line 3: ssd_initial is 8 bytes (24 or 32 or 40 expected)"),
        ({"extra": 1}, "line 3: a card has unknown field(s) extra"),
    ],
)
def test_malformed_lines_are_refused_with_their_line(world: World, maker: Maker, changes: dict, expected: str) -> None:
    lines = edited(maker.file(mf.random_cards(3)), 3, **changes)
    assert refused(world.agency, mf.seal(lines, maker.transport_key)).startswith(expected)


def test_a_line_that_is_not_json_and_a_truncated_file_are_refused(world: World, maker: Maker) -> None:
    lines = maker.lines(mf.random_cards(2))
    lines[2] = b"serial;cin;keys\n"
    assert refused(world.agency, mf.seal(lines, maker.transport_key)).startswith("line 3: not a JSON object")
    lines[2] = b"[" * 100_000 + b"]" * 100_000 + b"\n"  # deeper than the parser recurses
    assert refused(world.agency, mf.seal(lines, maker.transport_key)).startswith("line 3: not a JSON object")
    data = maker.file(mf.random_cards(3))
    truncated = b"\n".join(data.split(b"\n")[:3]) + b"\n"  # header and two cards, no trailer
    assert "line 3" in refused(world.agency, truncated)


def test_cards_holding_another_token_key_are_refused(world: World, maker: Maker) -> None:
    maker.token_sha256 = "0" * 64
    message = refused(world.agency, maker.file(mf.random_cards(1)))
    assert message.startswith("line 1: token_key_sha256 is not the agency's token signing key")


def test_errors_of_several_lines_are_listed_together(world: World, maker: Maker) -> None:
    lines = change(edited(maker.file(mf.random_cards(4)), 2, kdd="00"), 4, isd_dek_kcv="ABCDEF")
    message = refused(world.agency, mf.seal(lines, maker.transport_key))
    assert message.startswith("line 2: kdd is 1 bytes") and "; line 4: isd_dek_kcv ABCDEF" in message


# ------------------------------------------------------------------------------------ transport key


def test_the_transport_key_must_match_its_check_value(world: World) -> None:
    key = secrets.token_bytes(16)
    with pytest.raises(ServiceError, match="check value"):
        manufacturer.register_transport_key(agency=world.agency, key=key, kcv="000000")
    with pytest.raises(ServiceError, match="only the agency"):
        manufacturer.register_transport_key(agency=world.alpha, key=key, kcv=mf.kcv("aes", key))


def test_the_command_takes_the_transport_key_from_components_on_standard_input(world: World, monkeypatch) -> None:
    import io

    key = secrets.token_bytes(16)
    first = secrets.token_bytes(16)
    second = bytes(a ^ b for a, b in zip(key, first, strict=True))
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{first.hex()}\n{second.hex()}\n"))
    out = io.StringIO()
    call_command("import_transport_key", "agency", "--kcv", mf.kcv("aes", key), "--components", "2", stdout=out)
    assert key.hex() not in out.getvalue().lower() and mf.kcv("aes", key) in out.getvalue()
    assert custody.load_secret_key(manufacturer.transport_key_for(world.agency, mf.kcv("aes", key))) == key
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{first.hex()}\n"))
    with pytest.raises(CommandError, match="check value"):
        call_command("import_transport_key", "agency", "--kcv", mf.kcv("aes", key))


def test_the_command_imports_a_file_and_names_the_lines_of_a_refused_one(world: World, maker: Maker, tmp_path) -> None:
    path = tmp_path / "acme.jsonl"
    path.write_bytes(mf.seal(edited(maker.file(mf.random_cards(2)), 3, receipt_kcv="123456"), maker.transport_key))
    with pytest.raises(CommandError, match=r"^line 3: receipt_kcv 123456"):
        call_command("import_manufacturer_file", "agency", str(path))
    path.write_bytes(maker.file(mf.random_cards(2)))
    call_command("import_manufacturer_file", "agency", str(path))
    assert ManufacturerBatch.objects.get().file_name == "acme.jsonl"


# ------------------------------------------------------------------------------------ API


def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def upload(client: APIClient, data: bytes) -> Any:
    return client.post(
        "/api/v1/manufacturer-batches/", {"file": SimpleUploadedFile("acme.jsonl", data)}, format="multipart"
    )


def test_the_agency_imports_through_the_api(world: World, maker: Maker) -> None:
    response = upload(api(world.users["agency_op"]), maker.file(mf.random_cards(2)))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["card_count"] == 2 and body["imported_by"] == "agency_op" and body["file_name"] == "acme.jsonl"
    listed = api(world.users["regulator"]).get("/api/v1/manufacturer-batches/").json()
    assert [b["id"] for b in listed["results"]] == [body["id"]]


def test_a_refused_file_is_a_problem_naming_the_line(world: World, maker: Maker) -> None:
    lines = edited(maker.file(mf.random_cards(3)), 3, isd_enc_kcv="000000")
    response = upload(api(world.users["agency_op"]), mf.seal(lines, maker.transport_key))
    assert response.status_code == 400
    assert response.json()["detail"] == "line 3: isd_enc_kcv 000000 does not match the key's check value"
    assert Card.objects.filter(manufacturer_batch__isnull=False).count() == 0


@pytest.mark.parametrize("username", ["agency_admin", "agency_op"])
def test_agency_operators_may_import(world: World, maker: Maker, username: str) -> None:
    assert upload(api(world.users[username]), maker.file(mf.random_cards(1))).status_code == 201


@pytest.mark.parametrize("username", ["regulator", "alpha_admin", "alpha_op", "citizen1", "outsider"])
def test_nobody_else_imports_or_sees_batches(world: World, maker: Maker, username: str) -> None:
    client = api(world.users[username])
    assert upload(client, maker.file(mf.random_cards(1))).status_code == 403
    assert not Card.objects.filter(manufacturer_batch__isnull=False).exists()
    manufacturer.import_manufacturer_file(agency=world.agency, data=maker.file(mf.random_cards(1)))
    listed = client.get("/api/v1/manufacturer-batches/").json()
    assert listed["count"] == (1 if username == "regulator" else 0)


def test_anonymous_callers_are_refused(world: World, maker: Maker) -> None:
    assert upload(APIClient(), maker.file(mf.random_cards(1))).status_code in (401, 403)


# ------------------------------------------------------------------------------------ portal


def portal(user: Any) -> Any:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


PAGE = "/agency/cards/manufacturer-files/"


def test_the_agency_imports_through_the_portal_and_sees_the_lines_of_a_refused_file(world: World, maker: Maker) -> None:
    client = portal(world.users["agency_op"])
    lines = change(edited(maker.file(mf.random_cards(3)), 2, kdd="00"), 4, ssd_initial_kcv="000000")
    page = client.post(
        PAGE, {"manufacturer_file": SimpleUploadedFile("bad.jsonl", mf.seal(lines, maker.transport_key))}
    )
    assert page.status_code == 400
    text = page.content.decode()
    assert "<td>2</td><td>kdd is 1 bytes (10 expected)</td>" in text
    assert "<td>4</td><td>ssd_initial_kcv 000000 does not match the key&#x27;s check value</td>" in text
    assert not ManufacturerBatch.objects.exists()

    good = SimpleUploadedFile("acme.jsonl", maker.file(mf.random_cards(2)))
    response = client.post(PAGE, {"manufacturer_file": good}, follow=True)
    assert response.status_code == 200 and "2 cards from Acme Card Works imported" in response.content.decode()
    assert "acme.jsonl" in response.content.decode() and ManufacturerBatch.objects.get().card_count == 2


@pytest.mark.parametrize("username", ["alpha_admin", "citizen1", "regulator"])
def test_only_the_agency_has_the_portal_page(world: World, maker: Maker, username: str) -> None:
    client = portal(world.users[username])
    assert client.get(PAGE).status_code in (302, 403, 404)
    upload = SimpleUploadedFile("acme.jsonl", maker.file(mf.random_cards(1)))
    assert client.post(PAGE, {"manufacturer_file": upload}).status_code in (302, 403, 404)
    assert not ManufacturerBatch.objects.exists()
