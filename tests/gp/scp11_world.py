"""A small SCP11 world for the tests: an agency card CA that certifies SD keys, a bank OCE CA that
certifies the bank's off-card key, and an emulated SD (:class:`gp.scp11.CardSCP11`) trusting it.

Keys come from a seeded generator so every run is the same; dates are fixed (``TODAY``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from gp.scp11 import (
    CardSCP11,
    Certificate,
    CertificateAuthority,
    Curve,
    KeyPair,
    KeyUsage,
    SCP11a,
    SCP11b,
    SCP11c,
    SCP11Variant,
    SDKey,
    TrustAnchor,
)

TODAY = dt.date(2026, 12, 4)
EXPIRES = dt.date(2030, 1, 1)
OCE_KVN, OCE_KID = 0x10, 0x01  # where the card keeps PK.CA-KLOC.ECDSA (P1/P2 of PSO)
SD_KVN = 0x01


def seeded(label: str) -> Callable[[int], bytes]:
    """A deterministic byte source (SHA-256 in counter mode over ``label``)."""
    counter = 0

    def draw(n: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < n:
            counter += 1
            out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        return out[:n]

    return draw


@dataclass
class World:
    curve: Curve
    x509: bool = False
    card_ca: CertificateAuthority = field(init=False)
    oce_ca: CertificateAuthority = field(init=False)
    oce_keys: KeyPair = field(init=False)
    oce_chain: list[Certificate] = field(init=False)
    sd_keys: dict[SCP11Variant, KeyPair] = field(init=False)
    sd_certificates: dict[SCP11Variant, Certificate] = field(init=False)

    def __post_init__(self) -> None:
        c = self.curve
        self.card_ca = CertificateAuthority.generate(b"\xa6\x01", c, "agency card CA", seeded(f"card-ca/{c}"))
        self.oce_ca = CertificateAuthority.generate(b"\xb4\x01", c, "bank OCE CA", seeded(f"oce-ca/{c}"))
        self.oce_keys = KeyPair.generate(c, seeded(f"oce/{c}"))
        self.oce_chain = [self.issue_oce(self.oce_ca, self.oce_keys)]
        self.sd_keys = {v: KeyPair.generate(c, seeded(f"sd/{c}/{v}")) for v in SCP11Variant}
        self.sd_certificates = {
            v: self.card_ca.issue(
                serial_number=bytes((v,)),
                subject_identifier=b"\x5d" + bytes((v,)),
                public_key=k.public_key,
                key_usage=KeyUsage.KEY_AGREEMENT,
                expiration_date=EXPIRES,
            )
            for v, k in self.sd_keys.items()
        }

    def issue_oce(
        self,
        ca: CertificateAuthority,
        keys: KeyPair,
        *,
        usage: KeyUsage = KeyUsage.KEY_AGREEMENT,
        expires: dt.date = EXPIRES,
        effective: dt.date | None = None,
    ) -> Certificate:
        if self.x509:
            return ca.issue_x509(
                serial_number=0x0CE,
                subject_name="bank OCE",
                subject_identifier=b"\x0c\xe1",
                public_key=keys.public_key,
                key_usage=usage,
                not_before=effective or dt.date(2025, 1, 1),
                not_after=expires,
            )
        return ca.issue(
            serial_number=b"\x0c\xe1",
            subject_identifier=b"\x0c\xe1",
            public_key=keys.public_key,
            key_usage=usage,
            expiration_date=expires,
            effective_date=effective,
        )

    def anchor(self) -> TrustAnchor:
        return self.oce_ca.trust_anchor(OCE_KVN, OCE_KID)

    def card(
        self,
        *,
        anchors: list[TrustAnchor] | None = None,
        today: dt.date = TODAY,
        random: Callable[[int], bytes] | None = None,
    ) -> CardSCP11:
        keys = [
            SDKey(k.private_key, SD_KVN, v.value, (self.sd_certificates[v].encode(),)) for v, k in self.sd_keys.items()
        ]
        return CardSCP11(
            keys,
            [self.anchor()] if anchors is None else anchors,
            today=lambda: today,
            random=random or seeded(f"card-eph/{self.curve}"),
        )

    def host(self, variant: SCP11Variant, **extra: object) -> SCP11a | SCP11b | SCP11c:
        point = self.sd_keys[variant].public_point
        if variant is SCP11Variant.B:
            return SCP11b(point, SD_KVN, random=seeded("host-eph"), **extra)  # type: ignore[arg-type]
        cls = SCP11a if variant is SCP11Variant.A else SCP11c
        options: dict[str, object] = {
            "oce_private_key": self.oce_keys.private_key,
            "certificates": self.oce_chain,
            "oce_kvn": OCE_KVN,
            "oce_kid": OCE_KID,
            "random": seeded("host-eph"),
        }
        options.update(extra)
        return cls(point, SD_KVN, **options)  # type: ignore[arg-type]


def handshake(host: SCP11a | SCP11b | SCP11c, card: CardSCP11) -> bytes:
    """Run the handshake; returns the card's last answer (already given to ``host.complete``)."""
    if isinstance(host, SCP11b):
        answer = card.process(host.internal_authenticate())
    else:
        for pso in host.perform_security_operation():
            sw = card.process(pso)
            assert sw == b"\x90\x00", sw.hex()
        answer = card.process(host.mutual_authenticate())
    host.complete(answer)
    return answer


def exchange(host: SCP11a | SCP11b | SCP11c, card: CardSCP11, plain: bytes, reply: bytes) -> tuple[bytes, bytes]:
    """Host wraps ``plain``; the card unwraps it and answers ``reply`` (data || SW) secured; the host
    unwraps. Returns (what the card saw, what the host got)."""
    seen = card.unwrap_command(host.wrap(plain))
    return seen, host.unwrap(card.wrap_response(reply))
