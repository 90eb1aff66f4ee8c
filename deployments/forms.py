"""Forms of the deployment pages."""

from __future__ import annotations

from typing import Any

from django import forms

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
