"""The demo banks' own key services (docs/keyservice.md), set up as each bank would on its premises:
``python -m keyservice init`` (its own SoftHSM2 token, TLS identity and policy, pinning the
platform's client certificate), the bank's sign-off of its releases (``approve-release``), and the
agency's registration of the service's endpoint and certificate. ``scripts/demo.sh`` and
``scripts/prod_local.sh`` then run ``python -m keyservice serve`` for each directory here."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from issuers.custody.authorities import ca_public_pem
from issuers.custody_models import KeySet
from issuers.key_services import platform_identity, register_key_service
from issuers.models import BankKeyService, Organization
from updates.models import Release


def _keyservice(*args: str) -> None:
    result = subprocess.run(  # noqa: S603 - our own module, arguments we built
        [sys.executable, "-m", "keyservice", *args], capture_output=True, text=True, check=False, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"keyservice {args[0]} failed: {result.stderr.strip()[-500:]}")


def service_directory(bank: Organization) -> Path:
    return Path(settings.ECARD_KEYSERVICE_DIR) / bank.slug


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def serving(directory: Path, log: Path) -> Iterator[int]:
    """The service of ``directory`` answering on its port while the block runs: one already
    listening there (prod-local started it) is used as it is; otherwise ``python -m keyservice
    serve`` is started as a subprocess for the block and stopped after it. Yields the port."""
    port = int(json.loads((directory / "config.json").read_text())["port"])
    if _listening(port):
        yield port
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own module, arguments we built
            [sys.executable, "-m", "keyservice", "serve", str(directory)],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the key service of {directory} did not start (see {log})")
            time.sleep(0.1)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def provision(bank: Organization, agency: Organization, *, port: int, approver: str) -> BankKeyService:
    """Create (once) the bank's service directory, sign off its releases, register it."""
    directory = service_directory(bank)
    if not (directory / "config.json").exists():
        card_ca = directory.parent / "agency-card-ca.pem"
        card_ca.parent.mkdir(parents=True, exist_ok=True)
        card_ca.write_text(ca_public_pem(agency, KeySet.Purpose.CARD_CA))
        args = ["init", str(directory), "--bank", bank.slug, "--card-ca", str(card_ca)]
        args += ["--platform-cert", str(platform_identity().cert_path), "--port", str(port)]
        for prefix in bank.aid_ranges.values_list("prefix", flat=True):
            args += ["--aid-prefix", prefix]
        _keyservice(*args)
    for release in Release.objects.filter(bank=bank):
        _keyservice(
            "approve-release",
            str(directory),
            "--package-aid",
            release.package_aid,
            "--hash",
            release.lfdb_sha256,
            "--by",
            approver,
        )
    certificate = (directory / "tls" / "cert.pem").read_text()
    endpoint = f"https://127.0.0.1:{port}"
    service = BankKeyService.objects.filter(organization=bank).first()
    if service is None or service.endpoint != endpoint or service.service_certificate != certificate:
        # the agency admits the service (audited); its first health check finds it not yet started
        service = register_key_service(
            organization=bank, endpoint=endpoint, service_certificate_pem=certificate, actor=None
        )
    return service
