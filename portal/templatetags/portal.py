"""Layout helpers: the navigation a user's roles allow."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

from issuers import selectors as issuer_selectors
from issuers.models import Organization
from issuers.roles import principal
from portal import totp

register = template.Library()


@register.simple_tag(takes_context=True)
def portal_nav(context: dict[str, Any]) -> list[dict[str, Any]]:
    """Links of the primary navigation, each with ``current`` when it is the page shown."""
    request = context.get("request")
    if request is None or not request.user.is_authenticated:
        return []
    who = principal(request.user)
    links: list[tuple[str, str]] = []
    if who.is_citizen:
        links += [("My card", reverse("portal:my-card")), ("Connect your card", reverse("portal:connect"))]
    for bank in Organization.objects.filter(pk__in=who.bank_ids).order_by("name"):
        links += [
            (f"{bank.name}" if len(who.bank_ids) > 1 else "Dashboard", reverse("portal:bank", args=[bank.slug])),
            ("Keys", reverse("portal:bank-keys", args=[bank.slug])),
            ("Releases", reverse("portal:bank-releases", args=[bank.slug])),
            ("Rollouts", reverse("portal:bank-rollouts", args=[bank.slug])),
        ]
    if who.is_agency:
        links += [
            ("Agency", reverse("portal:agency")),
            ("Cards", reverse("portal:agency-cards")),
            ("Banks", reverse("portal:agency-banks")),
            ("Token policy", reverse("portal:agency-policy")),
        ]
    if who.is_regulator:
        links += [("Oversight", reverse("portal:regulator"))]
    if who.is_member:
        links += [("Audit log", reverse("audit:log"))]
    if issuer_selectors.pending_invitations_of(request.user).exists():
        links += [("Invitations", reverse("portal:invitations"))]
    path = request.path
    best = max((url for _label, url in links if path.startswith(url)), key=len, default=None)
    return [{"label": label, "url": url, "current": url == best} for label, url in links]


@register.simple_tag(takes_context=True)
def second_factor_available(context: dict[str, Any]) -> bool:
    request = context.get("request")
    return bool(request is not None and request.user.is_authenticated and totp.eligible(request.user))


@register.filter
def hexbyte(value: int | None) -> str:
    return "—" if value is None else f"{int(value):02X}"


@register.simple_tag
def widget(field: Any) -> str:
    """A field's widget, described by its help text and its errors (ids ``<id>_helptext``, ``<id>_error``)."""
    described = []
    if field.help_text:
        described.append(f"{field.auto_id}_helptext")
    if field.errors:
        described.append(f"{field.auto_id}_error")
    attrs: dict[str, str] = {}
    if described:
        attrs["aria-describedby"] = " ".join(described)
    if field.errors:
        attrs["aria-invalid"] = "true"
    return field.as_widget(attrs=attrs)


@register.filter
def is_checkbox(field: Any) -> bool:
    return getattr(field.field.widget, "input_type", "") == "checkbox"


@register.filter
def is_radio(field: Any) -> bool:
    return getattr(field.field.widget, "input_type", "") == "radio"
