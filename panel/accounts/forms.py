"""Forms of the accounts pages: login with lockout, two-factor codes, API tokens, organizations, members and
invitations."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from panel.accounts.choices import Role, TokenScope
from panel.accounts.models import Organization
from panel.accounts.services import client_ip, login_is_locked, record_failed_login
from panel.validators import validate_name, validate_slug

LOCKED_MESSAGE = "Too many failed attempts; try again later."


class LockoutAuthenticationForm(AuthenticationForm):
    """Django's login form, refusing without checking the password once a name or address is locked out.

    Every refusal (wrong password, inactive account, locked out) is recorded as a security event; the
    lockout counts those events, so the form itself holds no state.
    """

    error_messages = {
        **AuthenticationForm.error_messages,
        "locked": LOCKED_MESSAGE,
    }

    def clean(self) -> dict[str, Any]:
        username = (self.cleaned_data.get("username") or "").strip()
        if username and self.request is not None:
            if login_is_locked(username=username, ip=client_ip(self.request)):
                record_failed_login(username=username, request=self.request, locked=True)
                raise ValidationError(self.error_messages["locked"], code="locked")
        try:
            return super().clean()
        except ValidationError:
            if username and self.request is not None:
                record_failed_login(username=username, request=self.request)
            raise


class TwoFactorCodeForm(forms.Form):
    """A code from the authenticator app, or a recovery code."""

    code = forms.CharField(
        max_length=40,
        label="Code",
        help_text="The 6 digits your authenticator app shows, or one of your recovery codes.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autofocus": True, "spellcheck": "false"}),
    )


class TwoFactorEnrollForm(forms.Form):
    """The first code from a newly added authenticator, proving it was set up right."""

    code = forms.CharField(
        max_length=12,
        label="Code from the app",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}),
    )


class TwoFactorDisableForm(forms.Form):
    """Turning two-factor login off takes the password and a code (or a recovery code)."""

    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}), strip=False)
    code = forms.CharField(
        max_length=40,
        help_text="From your authenticator app, or a recovery code.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code"}),
    )


class ApiTokenForm(forms.Form):
    """A new API token: a name, a scope and a lifetime in days."""

    name = forms.CharField(max_length=63, validators=[validate_name])
    scope = forms.ChoiceField(choices=TokenScope.choices, initial=TokenScope.READ)
    days = forms.IntegerField(
        min_value=1,
        max_value=settings.API_TOKEN_MAX_DAYS,
        initial=settings.API_TOKEN_DEFAULT_DAYS,
        help_text=f"At most {settings.API_TOKEN_MAX_DAYS} days.",
    )


class OrganizationCreateForm(forms.Form):
    """A new customer organization: a display name, a slug, and the provider (owned by the user) managing it."""

    name = forms.CharField(max_length=63, validators=[validate_name], strip=False)
    slug = forms.CharField(
        max_length=63,
        validators=[validate_slug],
        strip=False,
        help_text="Lowercase letters, digits, '-' and '_'; it cannot be changed later.",
    )
    managed_by = forms.ModelChoiceField(queryset=Organization.objects.none(), label="Managed by", empty_label=None)

    def __init__(self, *args: Any, providers: QuerySet[Organization], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["managed_by"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = providers


class OrganizationRenameForm(forms.Form):
    """A new display name for an organization."""

    name = forms.CharField(max_length=63, validators=[validate_name], strip=False)


class InvitationForm(forms.Form):
    """Invite someone: an email address (for the record; the panel sends no mail) and the role to grant."""

    email = forms.EmailField()
    role = forms.ChoiceField(
        choices=Role.choices,
        help_text="Owners and operators may change compose files and env vars (root on the servers).",
    )


class RoleForm(forms.Form):
    """A member's new role."""

    role = forms.ChoiceField(choices=Role.choices)


class InvitationSignupForm(UserCreationForm):  # type: ignore[type-arg]
    """A new account for the holder of an invitation: a user name and a password (Django's validators)."""

    def __init__(self, *args: Any, email: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The similarity validator compares the password with the account's email too.
        self.instance.email = email


def apply_validation_error(form: forms.BaseForm, error: ValidationError) -> None:
    """Show a model ``ValidationError`` on the form: on its field when the form has it, else above the form."""
    if hasattr(error, "error_dict"):
        for field, errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, error)
