"""Login (rate-limited, with the optional second factor), second-factor enrolment, password reset."""

from __future__ import annotations

import logging
import time
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm, PasswordResetForm
from django.core.mail import EmailMultiAlternatives, get_connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template import loader
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from audit import security
from ecard.requests import AuthenticatedHttpRequest
from portal import ratelimit, totp
from portal.forms import posted

PENDING_USER = "portal_2fa_user"
PENDING_BACKEND = "portal_2fa_backend"
PENDING_NEXT = "portal_2fa_next"
PENDING_SINCE = "portal_2fa_since"
PENDING_TTL = 300
TOO_MANY = "Too many failed attempts. Wait 15 minutes and try again."
SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
CONSOLE_BACKEND = "django.core.mail.backends.console.EmailBackend"
logger = logging.getLogger(__name__)


class CodeForm(forms.Form):
    code = forms.CharField(
        label="Six-digit code from your authenticator app",
        min_length=6,
        max_length=7,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "aria-describedby": "code-help"}
        ),
    )


def _safe_next(request: HttpRequest, target: str) -> str:
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return target
    return settings.LOGIN_REDIRECT_URL


def _clear_pending(request: HttpRequest) -> None:
    for key in (PENDING_USER, PENDING_BACKEND, PENDING_NEXT, PENDING_SINCE):
        request.session.pop(key, None)


class PortalLoginView(auth_views.LoginView):
    """Django's login, refused for a while after repeated failures, and followed by the second
    factor when the user has one."""

    redirect_authenticated_user = True
    form_class = AuthenticationForm

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = request.POST.get("username", "")
        if ratelimit.blocked("login", username, request):
            security.record(
                security.Kind.LOGIN_THROTTLED,
                request=request,
                username=username,
                status=429,
                reason="too many failed attempts",
            )
            # Refused before any password check: an unbound form, so nothing is authenticated.
            form = self.form_class(request, initial={"username": username[:150]})
            return self.render_to_response(self.get_context_data(form=form, throttled=TOO_MANY), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        username = self.request.POST.get("username", "")
        if ratelimit.record_failure("login", username, self.request):
            form.add_error(None, TOO_MANY)
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().form_invalid(form)

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        user = form.get_user()
        ratelimit.reset("login", user.get_username(), self.request)
        if totp.required(user):
            _clear_pending(self.request)
            self.request.session.cycle_key()
            self.request.session[PENDING_USER] = user.pk
            self.request.session[PENDING_BACKEND] = user.backend  # type: ignore[attr-defined]  # set by authenticate()
            self.request.session[PENDING_NEXT] = self.get_success_url()
            self.request.session[PENDING_SINCE] = int(time.time())
            return redirect("portal:login-verify")
        return super().form_valid(form)


@sensitive_post_parameters("code")
@never_cache
@require_http_methods(["GET", "POST"])
def login_verify(request: HttpRequest) -> HttpResponse:
    """Second step of login: the TOTP code of a user who passed the password step."""
    user_id = request.session.get(PENDING_USER)
    since = request.session.get(PENDING_SINCE, 0)
    if user_id is None or time.time() - since > PENDING_TTL:
        _clear_pending(request)
        messages.info(request, "Please log in again.")
        return redirect("login")
    # The account may have been deleted or deactivated since the password step: start again.
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    device = totp.device_for(user) if user is not None else None
    if user is None or device is None or device.confirmed_at is None:
        _clear_pending(request)
        return redirect("login")
    form = CodeForm(posted(request))
    status = 200
    if request.method == "POST":
        if ratelimit.blocked("totp", user.get_username(), request):
            security.record(
                security.Kind.LOGIN_THROTTLED,
                request=request,
                user=user,
                status=429,
                reason="second factor: too many failed attempts",
            )
            form = CodeForm()
            form.add_error(None, TOO_MANY)
            status = 429
        elif form.is_valid() and totp.check_code(device, form.cleaned_data["code"]):
            ratelimit.reset("totp", user.get_username(), request)
            backend = request.session.get(PENDING_BACKEND)
            target = _safe_next(request, request.session.get(PENDING_NEXT, ""))
            _clear_pending(request)
            login(request, user, backend=backend)
            totp.mark_session_passed(request)
            return redirect(target)
        else:
            ratelimit.record_failure("totp", user.get_username(), request)
            security.record(
                security.Kind.SECOND_FACTOR_FAILED,
                request=request,
                user=user,
                status=400,
                reason="second factor code refused",
            )
            if form.is_valid():
                form.add_error("code", "That code is not valid. Check your device's clock and try the next code.")
            status = 400
    return render(request, "registration/login_verify.html", {"form": form}, status=status)


@login_required
@sensitive_post_parameters("code")
@never_cache
@require_http_methods(["GET", "POST"])
def second_factor(request: AuthenticatedHttpRequest) -> HttpResponse:
    """Enrol (show the otpauth URI once, confirm with a code) or switch off the second factor."""
    if not totp.eligible(request.user):
        return render(request, "portal/second_factor.html", {"eligible": False}, status=403)
    device = totp.device_for(request.user)
    form = CodeForm(posted(request))
    action = request.POST.get("action", "")
    status = 200
    if request.method == "POST" and action == "start":
        if device is None or device.confirmed_at is None:
            device = totp.start_enrolment(request.user)
        return redirect("portal:second-factor")
    if request.method == "POST" and action in ("confirm", "disable") and device is not None:
        if form.is_valid() and totp.check_code(device, form.cleaned_data["code"]):
            if action == "disable":
                totp.disable(request.user)
                messages.success(request, "The second factor is off.")
            else:
                totp.mark_session_passed(request)
                messages.success(request, "The second factor is on: you will be asked for a code at each login.")
            return redirect("portal:second-factor")
        if form.is_valid():
            form.add_error("code", "That code is not valid. Check your device's clock and try the next code.")
        status = 400
    context: dict[str, Any] = {"eligible": True, "device": device, "form": form}
    if device is not None and device.confirmed_at is None:
        try:
            context["uri"] = totp.provisioning_uri(device)
            context["secret"] = totp.secret_base32(device)
        except totp.SecretUnavailable:  # an enrolment left over from before a SECRET_KEY change
            totp.disable(request.user)
            context["device"] = None
    response = render(request, "portal/second_factor.html", context, status=status)
    response["Cache-Control"] = "no-store"
    return response


class PortalPasswordResetForm(PasswordResetForm):
    """Sends through the configured backend; outside production (DEBUG not 0) with no mail set up
    (Django's default SMTP backend, no account), the mail is printed on the console instead."""

    def send_mail(
        self,
        subject_template_name: str,
        email_template_name: str,
        context: dict[str, Any],
        from_email: str | None,
        to_email: str,
        html_email_template_name: str | None = None,
    ) -> None:
        dev_console = (
            not settings.PRODUCTION and settings.EMAIL_BACKEND == SMTP_BACKEND and not settings.EMAIL_HOST_USER
        )
        connection = get_connection(CONSOLE_BACKEND if dev_console else None)
        subject = "".join(loader.render_to_string(subject_template_name, context).splitlines())
        body = loader.render_to_string(email_template_name, context)
        message = EmailMultiAlternatives(subject, body, from_email, [to_email], connection=connection)
        try:
            message.send()
        except Exception:
            # Same as Django: never reveal to the visitor whether the address exists or mail failed.
            logger.exception("Failed to send password reset email to user %s", context["user"].pk)


class PortalPasswordResetView(auth_views.PasswordResetView):
    """Django's reset, throttled like the login (per address and e-mail, and per address): each
    request sends mail, so unthrottled it is a way to flood someone's inbox from the platform."""

    form_class = PortalPasswordResetForm

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        email = request.POST.get("email", "")[:254]
        if ratelimit.blocked("reset", email, request):
            security.record(
                security.Kind.LOGIN_THROTTLED, request=request, status=429, reason="password reset: too many requests"
            )
            form = self.form_class({"email": email})
            form.is_valid()
            form.add_error(None, "Too many requests. Wait 15 minutes and try again.")
            return self.render_to_response(self.get_context_data(form=form), status=429)
        ratelimit.record_failure("reset", email, request)  # every request counts: each may send mail
        return super().post(request, *args, **kwargs)
