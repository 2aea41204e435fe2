"""Portal forms. Business rules stay in the services; these check shape and map service errors
to the field they name, so the message appears next to it."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, QueryDict
from django.utils.datastructures import MultiValueDict

from ecard.errors import ServiceError
from issuers.models import Organization, ReleasePolicy, SsdTemplate
from updates.models import Release

HEX_HELP = "hexadecimal"


def add_service_error(form: forms.Form, error: ServiceError, *, aliases: dict[str, str] | None = None) -> None:
    """Show a service's refusal next to the field it names (or above the form)."""
    name = (aliases or {}).get(error.field or "", error.field or "")
    visible = name in form.fields and not form.fields[name].widget.is_hidden
    form.add_error(name if visible else None, error.message)


class BankChoiceForm(forms.Form):
    bank = forms.ModelChoiceField(
        queryset=Organization.objects.none(),
        label="Bank",
        empty_label=None,
        widget=forms.RadioSelect,
        error_messages={"required": "Choose a bank.", "invalid_choice": "Choose one of the banks listed."},
    )

    def __init__(self, *args: Any, banks: QuerySet[Organization], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["bank"]).queryset = banks


class ConsentForm(forms.Form):
    consent_text = forms.CharField(widget=forms.HiddenInput, max_length=2000)
    accepted = forms.BooleanField(
        label="I have read the statement above and I agree to it",
        required=True,
        error_messages={"required": "Tick the box to give your consent, or cancel."},
    )


class ConfirmForm(forms.Form):
    confirm = forms.BooleanField(
        label="Yes, I am sure", required=True, error_messages={"required": "Tick the box to confirm."}
    )


class TerminalForm(forms.Form):
    name = forms.CharField(
        label="Name of the terminal",
        max_length=100,
        help_text="Where it stands, so you can recognise and revoke it later, e.g. “ATM 12, Main Street”.",
    )


class CredentialForm(forms.Form):
    name = forms.CharField(
        label="Name of the device",
        max_length=100,
        initial="my computer",
        help_text="So you can recognise and revoke it later, e.g. “kitchen laptop”.",
    )


class ReleaseForm(forms.Form):
    cap_file = forms.FileField(
        label="CAP file",
        help_text="A Java Card CAP file (.cap or .ijc), at most 1 MiB. "
        "Its package and applets must be in your AID range.",
        widget=forms.ClearableFileInput(attrs={"accept": ".cap,.ijc,application/octet-stream"}),
    )
    changelog = forms.CharField(
        label="Changes in this release", required=False, max_length=4000, widget=forms.Textarea(attrs={"rows": 3})
    )


class IssueCardForm(forms.Form):
    holder = forms.CharField(
        label="Holder (username)",
        max_length=150,
        required=False,
        help_text="Optional: the citizen's account; leave empty to assign later.",
    )
    scp = forms.TypedChoiceField(
        label="Secure Channel Protocol", choices=[("3", "SCP03 (AES)"), ("2", "SCP02 (3DES)")], coerce=int, initial="3"
    )
    cin = forms.CharField(
        label="Card image number (CIN)",
        max_length=32,
        required=False,
        help_text="Optional, 4 to 16 bytes in hexadecimal; generated when empty.",
    )
    serial = forms.CharField(
        label="Serial number", max_length=32, required=False, help_text="Optional; derived from the CIN when empty."
    )
    emulated = forms.BooleanField(
        label="Emulated card (personalise a cardsim state file)", required=False, initial=True
    )


class CardBatchForm(forms.Form):
    csv_file = forms.FileField(
        label="CSV file",
        help_text="Header row: holder,scp,cin,serial (only holder is required; scp 03 or 02). At most 1,000 rows. "
        "If any row is wrong, nothing is imported.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}),
    )
    emulated = forms.BooleanField(
        label="Emulated cards (personalise cardsim state files)", required=False, initial=True
    )


class AdmitBankForm(forms.Form):
    name = forms.CharField(label="Name", max_length=200)
    slug = forms.SlugField(
        label="Short name (slug)",
        max_length=64,
        required=False,
        help_text="Letters, digits and hyphens; derived from the name when empty.",
    )
    rid = forms.RegexField(
        label="Registered application provider identifier (RID)",
        regex=r"^[0-9A-Fa-f]{10}$",
        help_text="5 bytes, hexadecimal (10 digits).",
        error_messages={"invalid": "The RID is 10 hexadecimal digits."},
    )
    pix_prefix = forms.RegexField(
        label="PIX prefix",
        regex=r"^([0-9A-Fa-f]{2}){0,11}$",
        required=False,
        help_text="Optional, whole bytes in hexadecimal.",
        error_messages={"invalid": "Whole bytes in hexadecimal, at most 11."},
    )
    management = forms.ChoiceField(
        label="Management", choices=SsdTemplate.Management.choices, initial=SsdTemplate.Management.DELEGATED
    )
    scp = forms.TypedChoiceField(
        label="Secure Channel Protocol", choices=[("3", "SCP03"), ("2", "SCP02")], coerce=int, initial="3"
    )
    key_length = forms.TypedChoiceField(
        label="Key length",
        choices=[("16", "128 bits"), ("24", "192 bits"), ("32", "256 bits")],
        coerce=int,
        initial="16",
    )


class KeyServiceForm(forms.Form):
    endpoint = forms.CharField(
        label="Address of the key service",
        max_length=300,
        help_text="https://host:port, as the bank's service printed it when it started.",
        widget=forms.TextInput(attrs={"placeholder": "https://keys.bank.example:8551", "spellcheck": "false"}),
    )
    service_certificate = forms.CharField(
        label="The service's TLS certificate (PEM)",
        max_length=16_384,
        help_text="The bank sends it (tls/ in its service directory); the platform pins it. "
        "Compare its SHA-256 with the one the bank read to you.",
        widget=forms.Textarea(attrs={"rows": 8, "class": "mono", "spellcheck": "false"}),
    )


class LookupForm(forms.Form):
    q = forms.CharField(label="CIN, serial or holder username", max_length=150, required=False)


class RecordIdForm(forms.Form):
    """The id of a record named in a POST (``id=...``): a positive integer a database column holds."""

    id = forms.IntegerField(min_value=1, max_value=2**63 - 1)


def posted_id(request: HttpRequest, name: str = "id") -> int:
    """The record id posted as ``name``; anything else (``abc``, ``-1``, ``1e9``, missing) is a 404,
    like an id of a record the user cannot see."""
    form = RecordIdForm({"id": request.POST.get(name, "")})
    if not form.is_valid():
        raise Http404("no such record")
    return form.cleaned_data["id"]


def posted(request: HttpRequest) -> QueryDict | None:
    """Form data of a POST (even an empty one, so the form is bound and says what is missing)."""
    return request.POST if request.method == "POST" else None


def files(request: HttpRequest) -> MultiValueDict | None:
    return request.FILES if request.method == "POST" else None


class ReleaseChoiceField(forms.ModelChoiceField[Release]):
    def label_from_instance(self, obj: Release) -> str:
        return f"{obj.package_aid} v{obj.package_version} ({obj.filename})"


WAVE_FIELDS = ("groups", "success_threshold", "error_threshold", "retry_count")


class WavesForm(forms.Form):
    """The waves and thresholds every campaign shares (a rollout, an install or key rotation campaign)."""

    groups = forms.CharField(
        label="Groups (cumulative)",
        initial="10%, 50%, 100%",
        max_length=200,
        help_text="Comma-separated waves, cumulative, ending at 100%: e.g. 1%, 10%, 100% or 5, 50, 100%.",
    )
    success_threshold = forms.IntegerField(
        label="Success threshold (%)",
        min_value=1,
        max_value=100,
        initial=100,
        help_text="Share of a group's cards that must succeed before the next group starts.",
    )
    error_threshold = forms.IntegerField(
        label="Error threshold (%)",
        min_value=1,
        max_value=100,
        initial=20,
        help_text="Share of a group's cards failed at which the rollout pauses itself.",
    )
    retry_count = forms.IntegerField(label="Retries per card", min_value=0, max_value=10, initial=2)

    def clean_groups(self) -> list[str]:
        parts = [p.strip() for p in self.cleaned_data["groups"].split(",") if p.strip()]
        if not parts:
            raise forms.ValidationError("Give at least one group, e.g. 100%.")
        return parts


class RolloutForm(WavesForm):
    release = ReleaseChoiceField(queryset=Release.objects.none(), label="Release to roll out", empty_label=None)
    name = forms.CharField(label="Name", max_length=200, required=False, help_text="Optional, for your records.")
    from_version = forms.RegexField(
        label="Only cards at version",
        regex=r"^\d{1,3}\.\d{1,3}$",
        required=False,
        help_text="Optional, e.g. 1.0; empty: every card with the package at another version.",
        error_messages={"invalid": "A version is major.minor, e.g. 1.0."},
    )
    require_approval = forms.BooleanField(
        label="Require approval by a second user of the bank (four eyes)", required=False
    )
    field_order = ("release", "name", "from_version", *WAVE_FIELDS, "require_approval")

    def __init__(self, *args: Any, releases: QuerySet[Release], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(ReleaseChoiceField, self.fields["release"]).queryset = releases


class RolloutActionForm(forms.Form):
    action = forms.ChoiceField(
        choices=[(a, a) for a in ("approve", "start", "pause", "resume", "cancel")], widget=forms.HiddenInput
    )
    reason = forms.CharField(label="Reason", max_length=500, required=False)
    confirm = forms.BooleanField(label="Yes, cancel this rollout", required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("action") == "cancel" and not data.get("confirm"):
            self.add_error("confirm", "Tick the box to confirm the cancellation.")
        return data


# -- issue 18: the bank's console ---------------------------------------------------------------


class TemplateForm(forms.Form):
    scp = forms.TypedChoiceField(
        label="Secure channel of new security domains",
        choices=[("3", "SCP03 (AES)"), ("2", "SCP02 (3DES)"), ("17", "SCP11 (keys in your key service)")],
        coerce=int,
        widget=forms.RadioSelect,
        help_text="Cards already enrolled keep the protocol they were enrolled with.",
    )


class DefaultAppletForm(forms.Form):
    release = ReleaseChoiceField(
        queryset=Release.objects.none(), label="Release", required=False, empty_label="(none: leave this row empty)"
    )
    instance_aid = forms.CharField(
        label="Instance AID", max_length=40, required=False, help_text="In your AID range, 5 to 16 bytes, hexadecimal."
    )
    privileges = forms.CharField(
        label="Privileges", max_length=8, required=False, initial="00", help_text="1 or 3 bytes, hexadecimal."
    )
    install_params = forms.CharField(
        label="Install parameters (C9)", max_length=140, required=False, help_text="Hexadecimal, at most 64 bytes."
    )
    name = forms.CharField(label="Name shown to citizens", max_length=60, required=False)

    def __init__(self, *args: Any, releases: QuerySet[Release], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(ReleaseChoiceField, self.fields["release"]).queryset = releases


DefaultAppletFormSet = forms.formset_factory(DefaultAppletForm, extra=0, max_num=8, absolute_max=8)


INSTALL_SCOPES = [
    ("all", "All my enrolled cards without the package"),
    ("list", "The cards listed below"),
    ("csv", "The cards in a CSV file"),
]


class InstallCampaignForm(WavesForm):
    release = ReleaseChoiceField(queryset=Release.objects.none(), label="Release to install", empty_label=None)
    instances = forms.CharField(
        label="Instance AIDs",
        max_length=400,
        help_text="Comma-separated, in your AID range; each becomes an instance of the release's first applet.",
    )
    privileges = forms.CharField(
        label="Privileges", max_length=8, required=False, initial="00", help_text="1 or 3 bytes, hexadecimal."
    )
    install_params = forms.CharField(
        label="Install parameters (C9)", max_length=140, required=False, help_text="Hexadecimal, at most 64 bytes."
    )
    scope = forms.ChoiceField(label="Cards", choices=INSTALL_SCOPES, initial="all", widget=forms.RadioSelect)
    cins = forms.CharField(
        label="Card numbers (CIN)",
        required=False,
        max_length=200_000,
        widget=forms.Textarea(attrs={"rows": 4, "class": "mono", "spellcheck": "false"}),
        help_text="With “the cards listed below”: one per line or comma-separated.",
    )
    csv_file = forms.FileField(
        label="CSV file",
        required=False,
        help_text="With “the cards in a CSV file”: a header row with a card_number column. If any line is wrong, "
        "nothing is created.",
        widget=forms.ClearableFileInput(attrs={"accept": ".csv,text/csv"}),
    )
    name = forms.CharField(label="Name", max_length=200, required=False)
    field_order = ("release", "instances", "privileges", "install_params", "scope", "cins", "csv_file", "name")

    def __init__(self, *args: Any, releases: QuerySet[Release], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(ReleaseChoiceField, self.fields["release"]).queryset = releases

    def clean_instances(self) -> list[str]:
        parts = [p.strip() for p in self.cleaned_data["instances"].replace("\n", ",").split(",") if p.strip()]
        if not parts:
            raise forms.ValidationError("Give at least one instance AID.")
        return parts

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("scope") == "list" and not (data.get("cins") or "").strip():
            self.add_error("cins", "List the card numbers, or choose another scope.")
        if data.get("scope") == "csv" and not data.get("csv_file"):
            self.add_error("csv_file", "Choose the CSV file, or choose another scope.")
        return data


class RotateCampaignForm(WavesForm):
    name = forms.CharField(label="Name", max_length=200, required=False)
    field_order = ("name", *WAVE_FIELDS, "confirm")
    confirm = forms.BooleanField(
        label="Yes, rotate the keys of all my cards",
        required=True,
        error_messages={"required": "Tick the box to confirm."},
    )


class ReasonConfirmForm(forms.Form):
    reason = forms.CharField(label="Reason", max_length=500, required=False)
    confirm = forms.BooleanField(
        label="Yes, I am sure", required=True, error_messages={"required": "Tick the box to confirm."}
    )


class CloseAccountForm(forms.Form):
    reason = forms.CharField(
        label="Message to the card holder",
        max_length=500,
        initial="Your account was closed at your request.",
        help_text="Shown on the holder's card page and sent by e-mail if they gave an address.",
    )
    confirm = forms.BooleanField(
        label="Yes, remove our security domain and everything in it from this card",
        required=True,
        error_messages={"required": "Tick the box to confirm."},
    )


class RejectReleaseForm(forms.Form):
    reason = forms.CharField(
        label="Why it is rejected",
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="The bank reads this reason.",
    )


class DapKeyForm(forms.Form):
    point = forms.CharField(
        label="DAP public key",
        max_length=400,
        widget=forms.Textarea(attrs={"rows": 3, "class": "mono"}),
        help_text="The bank's DAP verification key: an uncompressed P-256 point (04 || X || Y), 130 hex digits.",
    )


class DapSignatureForm(forms.Form):
    signature = forms.CharField(
        label="DAP signature",
        max_length=256,
        widget=forms.Textarea(attrs={"rows": 2, "class": "mono"}),
        help_text="ECDSA P-256 over the SHA-256 of the load file: r || s, 128 hex digits.",
    )


class MandatedDapForm(forms.Form):
    mandated_dap = forms.BooleanField(
        label="Mandated DAP: the agency signs every approved release, and cards verify its signature",
        required=False,
    )


class ReleasePolicyForm(forms.Form):
    bank = forms.ModelChoiceField(queryset=Organization.objects.none(), label="Bank", empty_label=None)
    approval = forms.ChoiceField(label="Approval of its releases", choices=ReleasePolicy.Approval.choices)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["bank"]
        if isinstance(field, forms.ModelChoiceField):
            field.queryset = Organization.objects.filter(kind=Organization.Kind.BANK).order_by("name")


# -- issue 19: validity and renewal -------------------------------------------------------------


class ValidityPolicyForm(forms.Form):
    years = forms.IntegerField(label="Cards are valid for (years)", min_value=1, max_value=20)
    renew_within_days = forms.IntegerField(
        label="Renewal offered (days before expiry)",
        min_value=1,
        max_value=365,
        help_text="Holders are warned by e-mail and may renew from this many days before their card expires.",
    )


class RenewalCampaignForm(WavesForm):
    name = forms.CharField(label="Name", max_length=200, required=False)
    field_order = ("name", *WAVE_FIELDS, "confirm")
    confirm = forms.BooleanField(
        label="Yes, renew every card nearing its expiry",
        required=True,
        error_messages={"required": "Tick the box to confirm."},
    )
