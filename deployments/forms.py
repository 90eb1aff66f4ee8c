"""Forms of the deployment pages."""

from __future__ import annotations

from typing import Any

from django import forms

from deployments.pipeline import SERVICE_NAME_RE
from panel.inventory.models import Environment
from panel.validators import validate_git_ref


class DeployForm(forms.Form):
    """Deploy an environment at a branch, tag or commit (blank: the environment's git ref)."""

    ref = forms.CharField(
        label="Branch, tag or commit",
        required=False,
        max_length=200,
        validators=[validate_git_ref],
        widget=forms.TextInput(attrs={"spellcheck": "false", "autocomplete": "off"}),
    )

    def __init__(self, *args: Any, environment: Environment, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["ref"].widget.attrs["placeholder"] = environment.git_ref
        self.fields["ref"].help_text = f"Leave blank to deploy {environment.git_ref}."

    def clean_ref(self) -> str:
        return str(self.cleaned_data["ref"]).strip()


class LifecycleForm(forms.Form):
    """Stop, start, restart or destroy an environment (``deployments.lifecycle.start_lifecycle`` checks the rest:
    which actions need the typed name)."""

    service = forms.RegexField(
        regex=SERVICE_NAME_RE.pattern, required=False, max_length=63, label="Service",
        error_messages={"invalid": "That is not a service name."},
    )  # fmt: skip
    confirm = forms.CharField(required=False, max_length=100, label="Type the environment's name to confirm")
    volumes = forms.BooleanField(required=False, label="Remove the volumes too (database and filestore)")
    backup = forms.BooleanField(required=False, label="Take a final backup first")
