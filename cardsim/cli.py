"""Command line: ``python -m cardsim init|serve|show STATE.json`` (DESIGN §8 contract)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cardsim import scp11, store
from cardsim.card import Card
from cardsim.constants import DEFAULT_AUTH_LIMIT, DEFAULT_KEY, DEFAULT_MEMORY
from cardsim.listing import render
from cardsim.state import new_state
from cardsim.vpcd import serve
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
    i.add_argument("--force", action="store_true", help="overwrite an existing state file")

    s = sub.add_parser("serve", help="attach the card to a vpcd virtual reader")
    s.add_argument("state", type=Path)
    s.add_argument("--vpcd", required=True, metavar="HOST:PORT", help="vpcd address, e.g. 127.0.0.1:35963")
    s.add_argument("-v", "--verbose", action="store_true", help="log command headers and status words")

    sh = sub.add_parser("show", help="print the registry like a card manager listing")
    sh.add_argument("state", type=Path)
    return p


def _init(args: argparse.Namespace) -> int:
    if args.state.exists() and not args.force:
        print(f"{args.state} exists (use --force to replace the card)", file=sys.stderr)
        return 2
    token_key = None
    if args.token_key is not None:
        loaded = serialization.load_pem_public_key(args.token_key.read_bytes())
        if not isinstance(loaded, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            print("token key must be an EC P-256 or RSA public key", file=sys.stderr)
            return 2
        token_key = loaded
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
    state = new_state(
        scp=0x03 if args.scp == "11" else int(args.scp, 16),
        key=args.key,
        kvn=args.kvn,
        i=args.i_param,
        iin=args.iin,
        cin=args.cin,
        kdd=args.kdd,
        diversify_scheme=args.diversify,
        memory=args.memory,
        auth_limit=args.auth_limit,
        token_key=token_key,
        token_scheme=args.token_scheme,
        receipt_key=args.receipt_key,
        ssd_initial_key=args.ssd_key,
        lifecycle=_LIFECYCLES[args.lifecycle],
        behaviours=behaviours,
        elf_upgrade=args.elf_upgrade,
        mandated_dap=args.mandated_dap,
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
        sys.stdout.write(render(store.load(args.state)))
        return 0
    except (OSError, ValueError, GPError) as exc:
        print(f"cardsim: {exc}", file=sys.stderr)
        return 1
