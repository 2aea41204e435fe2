"""``python -m keyservice init|approve-release|sign-release|serve|journal verify`` (docs/keyservice.md)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from keyservice.directory import Config, certificate_sha256, init_directory, load_service
from keyservice.journal import Journal, JournalCorrupt, verify_file
from keyservice.policy import Policy
from keyservice.server import KeyServiceHTTPServer, tls_context
from keyservice.signing import approve as approve_signature


def make_server(directory: Path, host: str | None = None, port: int | None = None) -> KeyServiceHTTPServer:
    """The HTTPS server of the service in ``directory`` (not yet serving)."""
    config = Config.load(directory)
    context = tls_context(directory / "tls" / "cert.pem", directory / "tls" / "key.pem", directory / "platform.pem")
    address = (config.host if host is None else host, config.port if port is None else port)
    return KeyServiceHTTPServer(address, load_service(directory), context, directory)


def _hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not hex") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m keyservice", description="The bank key service.")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create the service directory, token, TLS identity and policy")
    init.add_argument("directory", type=Path)
    init.add_argument("--bank", required=True)
    init.add_argument("--aid-prefix", dest="aid_prefixes", action="append", type=_hex, required=True)
    init.add_argument("--card-ca", type=Path, required=True, help="the agency's card CA (PEM key or certificate)")
    init.add_argument("--platform-cert", type=Path, required=True, help="the platform's TLS client certificate")
    init.add_argument("--host", default="127.0.0.1")
    init.add_argument("--port", type=int, default=8551)
    approve = commands.add_parser("approve-release", help="approve a release: package AID and LFDB SHA-256")
    approve.add_argument("directory", type=Path)
    approve.add_argument("--package-aid", type=_hex, required=True)
    approve.add_argument("--hash", type=_hex, required=True)
    approve.add_argument("--by", required=True)
    sign = commands.add_parser(
        "sign-release", help="approve signing (DAP) of a Load File Data Block hash; the service signs only those"
    )
    sign.add_argument("lfdb_sha256", type=_hex, help="SHA-256 of the Load File Data Block, 32 bytes hex")
    sign.add_argument("--directory", type=Path, required=True)
    sign.add_argument("--by", default=None, help="who approves (default: the login name)")
    serve = commands.add_parser("serve", help="serve HTTPS (TLS 1.3, the platform's pinned client certificate)")
    serve.add_argument("directory", type=Path)
    journal = commands.add_parser("journal", help="the journal")
    journal.add_argument("action", choices=["verify"])
    journal.add_argument("directory", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    directory: Path = args.directory
    if args.command == "init":
        config = init_directory(
            directory,
            bank=args.bank,
            aid_prefixes=args.aid_prefixes,
            card_ca_pem=args.card_ca.read_bytes(),
            platform_cert_pem=args.platform_cert.read_bytes(),
            host=args.host,
            port=args.port,
        )
        cert = (directory / "tls" / "cert.pem").read_bytes()
        print(f"initialised {config.bank}'s key service in {directory}; token {config.token_label}")
        print(f"service certificate SHA-256 {certificate_sha256(cert)}")
        return 0
    if args.command == "approve-release":
        policy = Policy.load(directory / "policy.json")
        try:
            policy.approve(args.package_aid, args.hash, args.by)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        policy.save(directory / "policy.json")
        print(f"approved {args.package_aid.hex().upper()} {args.hash.hex()} by {args.by}")
        return 0
    if args.command == "sign-release":
        if not (directory / "config.json").exists():
            print(f"error: {directory} is not a key service directory", file=sys.stderr)
            return 2
        try:
            entry = approve_signature(
                Journal(directory / "journal.jsonl"), args.lfdb_sha256, args.by or getpass.getuser()
            )
        except JournalCorrupt as exc:
            print(f"error: the journal does NOT verify, nothing recorded: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"approved signing {args.lfdb_sha256.hex()} by {entry['by']} (journal entry {entry['seq']})")
        return 0
    if args.command == "journal":
        try:
            head = verify_file(directory / "journal.jsonl")
        except JournalCorrupt as exc:
            print(f"journal does NOT verify: {exc}", file=sys.stderr)
            return 1
        print(f"journal verifies: {head.size} entries, head {head.hash}")
        return 0
    server = make_server(directory)
    cert = (directory / "tls" / "cert.pem").read_bytes()
    print(f"serving {server.url} certificate SHA-256 {certificate_sha256(cert)}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
