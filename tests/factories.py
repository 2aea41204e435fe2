"""A small platform world built through the real services, for API, isolation and portal tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction

from cards import services as card_services
from cards.models import AppletInstance, Card, CardJob, CardPackage, Enrollment, SecurityDomain
from issuers import services as issuer_services
from issuers.models import Membership, Organization

PASSWORD = "correct horse battery staple"


def make_user(username: str) -> Any:
    return get_user_model().objects.create_user(username, password=PASSWORD)


@dataclass
class World:
    agency: Organization
    regulator_org: Organization
    alpha: Organization
    beta: Organization
    users: dict[str, Any] = field(default_factory=dict)
    cards: dict[str, Card] = field(default_factory=dict)
    sds: dict[str, SecurityDomain] = field(default_factory=dict)
    enrollments: dict[str, Enrollment] = field(default_factory=dict)
    applets: dict[str, AppletInstance] = field(default_factory=dict)

    ALPHA_RID = "A000000999"
    BETA_RID = "A000000888"


def activate(enrollment: Enrollment) -> None:
    """Mark an enrollment as carried out on the card (what the OTA engine does after the job)."""
    sd = enrollment.security_domain
    sd.state = SecurityDomain.State.ACTIVE
    sd.lifecycle = SecurityDomain.Lifecycle.PERSONALIZED
    sd.key_kvn = 0x30
    sd.save()
    enrollment.status = Enrollment.Status.ACTIVE
    enrollment.save()
    enrollment.jobs.update(state=CardJob.State.DONE)


@transaction.atomic
def build_world(*, emulated: bool = False) -> World:
    """Agency, regulator, Alpha and Beta banks, three citizens: card1 with Alpha, card2 with Beta,
    card3 with both; each bank has one applet on each of its SDs."""
    agency = issuer_services.create_organization(name="National Card Agency", slug="agency", kind="agency")
    regulator_org = issuer_services.create_organization(name="Banking Regulator", slug="regulator", kind="regulator")
    alpha = issuer_services.admit_bank(name="Alpha Bank", slug="alpha", rid=World.ALPHA_RID, pix_prefix="01")
    beta = issuer_services.admit_bank(name="Beta Bank", slug="beta", rid=World.BETA_RID, pix_prefix="02")
    world = World(agency=agency, regulator_org=regulator_org, alpha=alpha, beta=beta)
    for username, org, role in (
        ("agency_admin", agency, Membership.Role.ADMIN),
        ("agency_op", agency, Membership.Role.OPERATOR),
        ("regulator", regulator_org, Membership.Role.AUDITOR),
        ("alpha_admin", alpha, Membership.Role.ADMIN),
        ("alpha_op", alpha, Membership.Role.OPERATOR),
        ("alpha_auditor", alpha, Membership.Role.AUDITOR),
        ("beta_admin", beta, Membership.Role.ADMIN),
        ("beta_op", beta, Membership.Role.OPERATOR),
    ):
        user = make_user(username)
        issuer_services.add_member(organization=org, user=user, role=role)
        world.users[username] = user
    for number, banks in ((1, (alpha,)), (2, (beta,)), (3, (alpha, beta))):
        citizen = make_user(f"citizen{number}")
        world.users[f"citizen{number}"] = citizen
        card = card_services.issue_card(agency=agency, holder=citizen, emulated=emulated)
        world.cards[f"card{number}"] = card
        for bank in banks:
            enrollment = card_services.request_enrollment(
                card=card,
                bank=bank,
                citizen=citizen,
                consent_text=card_services.consent_text_for(card, bank),
                accepted=True,
            )
            activate(enrollment)
            key = f"{bank.slug}@card{number}"
            world.enrollments[key] = enrollment
            world.sds[key] = enrollment.security_domain
            CardPackage.objects.create(
                security_domain=enrollment.security_domain,
                package_aid=enrollment.security_domain.aid[:-4] + "5041",
                package_version="1.0",
            )
            world.applets[key] = AppletInstance.objects.create(
                security_domain=enrollment.security_domain,
                package_aid=enrollment.security_domain.aid[:-4] + "5041",
                package_version="1.0",
                module_aid=enrollment.security_domain.aid[:-4] + "504101",
                instance_aid=enrollment.security_domain.aid[:-4] + "50410101",
            )
    world.users["outsider"] = make_user("outsider")
    return world
