"""Command line: ``python -m cardsim init|serve|show STATE.json`` (DESIGN §8 contract), and
``make-manufacturer-file`` (a card manufacturer's personalisation file of random cards,
docs/manufacturer-file.md; ``init --manufacturer-file`` makes the card of one of its lines)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cardsim import scp11, store
from cardsim.card import Card
from cardsim.constants import DEFAULT_AUTH_LIMIT, DEFAULT_KEY, DEFAULT_MEMORY
from cardsim.listing import render
from cardsim.state import new_state
from cardsim.vpcd import serve
from gp import manufacturer_file
from gp.commands import CardLifeCycle
from gp.errors import GPError
from gp.scp11 import CertificateAuthority, KeyPair

_LIFECYCLES = {
    "op_ready": CardLifeCycle.OP_READY,
    "initialized": CardLifeCycle.INITIALIZED,
    "secured": CardLifeCycle.SECURED,
}


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text.replace(" ", "").replace(":", ""))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not hex: {text!r}") from exc


def _int(text: str) -> int:
    return int(text, 16)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cardsim", description="Emulated GlobalPlatform 2.3.1 card")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("init", help="make a fresh card in SECURED state")
    i.add_argument("state", type=Path)
    i.add_argument(
        "--scp",
        choices=["02", "03", "11"],
        default="03",
        help="ISD secure channel protocol (default 03); 11: SCP03 keys plus an SCP11b key pair (KID 13, KVN 01) "
        "certified through the card's attestation key",
    )
    i.add_argument(
        "--ca-key",
        type=Path,
        default=None,
        help="with --scp 11: PEM private key (P-256/P-384) of the card issuer CA that certifies the card "
        "(default: a fresh CA whose private key is not kept)",
    )
    i.add_argument(
        "--key",
        type=_hex,
        default=DEFAULT_KEY,
        help="ISD key, ENC=MAC=DEK (default 404142...4F); the master key with --diversify",
    )
    i.add_argument("--kvn", type=_int, default=None, help="ISD key version, hex (default 30 for SCP03, 20 for SCP02)")
    i.add_argument("--i", dest="i_param", type=_int, default=None, help="SCP i parameter, hex (default 70 / 55)")
    i.add_argument("--cin", type=_hex, default=None, help="card image number (tag 45), hex; default random 8 bytes")
    i.add_argument("--iin", type=_hex, default=b"ECARD", help="issuer identification number (tag 42), hex")
    i.add_argument("--kdd", type=_hex, default=None, help="key diversification data, 10 bytes hex (default from CIN)")
    i.add_argument(
        "--diversify",
        choices=["emv", "visa2", "kdf3"],
        default=None,
        help="diversify the ISD keys from --key (master) with the KDD (gp.keys.diversify)",
    )
    i.add_argument(
        "--token-key",
        type=Path,
        default=None,
        help="PEM public key (P-256 or RSA): the ISD's DM token verification key (KVN 70)",
    )
    i.add_argument(
        "--token-scheme",
        default=None,
        help="gp.dm token scheme (default ecdsa-p256-sha256 for EC, rsa-pkcs1v15-sha256 for RSA)",
    )
    i.add_argument("--receipt-key", type=_hex, default=None, help="DM receipt key (KVN 71), hex")
    i.add_argument("--ssd-key", type=_hex, default=DEFAULT_KEY, help="initial SSD key set (default 404142...4F)")
    i.add_argument("--memory", type=int, default=DEFAULT_MEMORY, help="NVM bytes for load files and instances")
    i.add_argument(
        "--auth-limit",
        type=int,
        default=DEFAULT_AUTH_LIMIT,
        help=f"failed EXTERNAL AUTHENTICATEs before a key set blocks (default {DEFAULT_AUTH_LIMIT})",
    )
    i.add_argument("--lifecycle", choices=sorted(_LIFECYCLES), default="secured")
    i.add_argument(
        "--behaviour",
        action="append",
        default=None,
        metavar="AIDPREFIX=NAME",
        help="register an applet behaviour (e.g. A0000001234=bank-version); repeatable",
    )
    i.add_argument(
        "--no-elf-upgrade",
        dest="elf_upgrade",
        action="store_false",
        help="a card without GP Amendment H: MANAGE ELF UPGRADE answers 6D00, GET DATA 0067 has no upgrade flag",
    )
    i.add_argument(
        "--mandated-dap",
        action="store_true",
        help="the ISD holds Mandated DAP Verification: every load needs the issuer's DAP (its key put at KVN 73)",
    )
    i.add_argument(
        "--manufacturer-file",
        type=Path,
        default=None,
        help="make the card of one line of a manufacturer's personalisation file (docs/manufacturer-file.md): "
        "its CIN, IIN, CPLC, KDD, SCP, ISD keys, receipt key and initial SSD key replace --scp, --key, --kvn, "
        "--i, --cin, --iin, --kdd, --receipt-key and --ssd-key; needs --line, --transport-key-file and --token-key",
    )
    i.add_argument("--line", type=int, default=None, help="with --manufacturer-file: the card's line (2 = first card)")
    i.add_argument(
        "--transport-key-file",
        type=Path,
        default=None,
        help="with --manufacturer-file: a file holding the transport key in hex (never on the command line)",
    )
    i.add_argument("--force", action="store_true", help="overwrite an existing state file")

    s = sub.add_parser("serve", help="attach the card to a vpcd virtual reader")
    s.add_argument("state", type=Path)
    s.add_argument("--vpcd", required=True, metavar="HOST:PORT", help="vpcd address, e.g. 127.0.0.1:35963")
    s.add_argument("-v", "--verbose", action="store_true", help="log command headers and status words")

    sh = sub.add_parser("show", help="print the registry like a card manager listing")
    sh.add_argument("state", type=Path)

    m = sub.add_parser("make-manufacturer-file", help="write a manufacturer's personalisation file of random cards")
    m.add_argument("output", type=Path)
    m.add_argument("--cards", type=int, default=1, help="how many cards (default 1)")
    m.add_argument("--transport-key-file", type=Path, required=True, help="a file holding the AES transport key in hex")
    m.add_argument("--token-key", type=Path, required=True, help="PEM public key the cards verify tokens with (KVN 70)")
    m.add_argument("--manufacturer", default="Emulated Card Works")
    m.add_argument("--iin", default="4543415244", help="issuer identification number, hex")
    m.add_argument("--scp", choices=["02", "03"], default="03")
    m.add_argument("--serial-prefix", default="MF", help="card numbers are this prefix and the CIN")
    return p


def _transport_key(path: Path) -> bytes:
    key = _hex(path.read_text().strip())
    if len(key) not in (16, 24, 32):
        raise ValueError("the transport key must be an AES key of 16, 24 or 32 bytes")
    return key


def _token_public_key(path: Path) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    loaded = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(loaded, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError("token key must be an EC P-256 or RSA public key")
    return loaded


def _spki_sha256(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return manufacturer_file.token_key_sha256(der)


def _make_manufacturer_file(args: argparse.Namespace) -> int:
    if not 1 <= args.cards <= manufacturer_file.MAX_CARDS:
        print(f"--cards must be 1 to {manufacturer_file.MAX_CARDS}", file=sys.stderr)
        return 2
    cards = manufacturer_file.random_cards(args.cards, scp=int(args.scp, 16), serial_prefix=args.serial_prefix)
    data = manufacturer_file.write(
        cards,
        transport_key=_transport_key(args.transport_key_file),
        manufacturer=args.manufacturer,
        iin=args.iin.upper(),
        token_key_sha256=_spki_sha256(_token_public_key(args.token_key)),
    )
    args.output.write_bytes(data)
    print(f"{args.output}: {len(cards)} card(s), lines 2 to {len(cards) + 1}")
    return 0


def _manufacturer_card(args: argparse.Namespace) -> tuple[manufacturer_file.Header, manufacturer_file.CardKeys]:
    """The card on ``--line`` of the checked file (the whole file is checked, as the platform does)."""
    if args.line is None or args.transport_key_file is None or args.token_key is None:
        raise ValueError("--manufacturer-file needs --line, --transport-key-file and --token-key")
    if args.scp == "11" or args.diversify:
        raise ValueError("--manufacturer-file gives the card's keys: no --scp 11 or --diversify")
    parsed = manufacturer_file.read(args.manufacturer_file.read_bytes(), _transport_key(args.transport_key_file))
    if parsed.header.token_key_sha256 != _spki_sha256(_token_public_key(args.token_key)):
        raise ValueError("--token-key is not the token verification key the file's cards hold (token_key_sha256)")
    for card in parsed.cards:
        if card.line == args.line:
            return parsed.header, card
    raise ValueError(
        f"line {args.line} of {args.manufacturer_file} is not a card (cards are on lines 2 to {len(parsed.cards) + 1})"
    )


def _init(args: argparse.Namespace) -> int:
    if args.state.exists() and not args.force:
        print(f"{args.state} exists (use --force to replace the card)", file=sys.stderr)
        return 2
    token_key = None
    if args.token_key is not None:
        try:
            token_key = _token_public_key(args.token_key)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.manufacturer_file is not None:
        try:
            header, line = _manufacturer_card(args)
        except (ValueError, manufacturer_file.FileRefused) as exc:
            print(f"cardsim: {exc}", file=sys.stderr)
            return 2
    behaviours = None
    if args.behaviour:
        behaviours = {}
        for item in args.behaviour:
            prefix, _, name = item.partition("=")
            behaviours[prefix.upper()] = name
    ca = None
    if args.ca_key is not None:
        if args.scp != "11":
            print("--ca-key goes with --scp 11", file=sys.stderr)
            return 2
        loaded_ca = serialization.load_pem_private_key(args.ca_key.read_bytes(), password=None)
        if not isinstance(loaded_ca, ec.EllipticCurvePrivateKey):
            print("the CA key must be an EC private key", file=sys.stderr)
            return 2
        ca = CertificateAuthority(KeyPair(loaded_ca), b"ECARD-CA", "E-Card card issuer CA")
    common: dict[str, Any] = {
        "memory": args.memory,
        "auth_limit": args.auth_limit,
        "token_key": token_key,
        "token_scheme": args.token_scheme,
        "lifecycle": _LIFECYCLES[args.lifecycle],
        "behaviours": behaviours,
        "elf_upgrade": args.elf_upgrade,
        "mandated_dap": args.mandated_dap,
    }
    if args.manufacturer_file is not None:
        # the card exactly as the manufacturer's line describes it (keys not diversified)
        state = new_state(
            scp=line.scp,
            isd_keys=line.isd_keys,
            i=line.i,
            iin=bytes.fromhex(header.iin),
            cin=bytes.fromhex(line.cin),
            kdd=bytes.fromhex(line.kdd),
            cplc=line.cplc.to_bytes(),
            receipt_key=line.receipt_key,
            ssd_initial_key=line.ssd_initial_key,
            **common,
        )
    else:
        state = new_state(
            scp=0x03 if args.scp == "11" else int(args.scp, 16),
            key=args.key,
            kvn=args.kvn,
            i=args.i_param,
            iin=args.iin,
            cin=args.cin,
            kdd=args.kdd,
            diversify_scheme=args.diversify,
            receipt_key=args.receipt_key,
            ssd_initial_key=args.ssd_key,
            **common,
        )
    if args.scp == "11":
        today = dt.datetime.now(dt.UTC).date()
        ca = scp11.provision_card(state, today=today, ca=ca, random=os.urandom)
    store.save(args.state, state)
    print(f"card initialised in {args.state}: CIN {state['cin']} KDD {state['kdd']}")
    if ca is not None:
        anchor = f"{ca.identifier.hex().upper()}: {ca.keys.public_point.hex().upper()}"
        print(f"SCP11b key KID 13 KVN 01; card issuer CA {anchor}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    host, _, port = args.vpcd.rpartition(":")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="cardsim: %(message)s")
    path = args.state
    card = Card(store.load(path), on_change=lambda state: store.save(path, state))
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    serve(card, host or "127.0.0.1", int(port), stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "make-manufacturer-file":
            return _make_manufacturer_file(args)
        sys.stdout.write(render(store.load(args.state)))
        return 0
    except (OSError, ValueError, GPError) as exc:
        print(f"cardsim: {exc}", file=sys.stderr)
        return 1
