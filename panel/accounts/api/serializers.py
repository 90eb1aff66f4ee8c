"""Serializers of tenancy (organizations, members, invitations, tokens), and the pieces every API serializer shares.

- ``ScopedRelatedField``: a foreign key the caller may only point at objects the scoping helper lets them see
  (anything else "does not exist", exactly like an unknown id) and may only use when they may take the required
  action there (403 otherwise: e.g. a viewer creating a server in their own organization).
- ``PanelModelSerializer``: never trims whitespace (a trailing newline is rejected by the validators rather than
  silently removed), maps Django ``ValidationError`` to field errors, and supports create-only fields.
- ``AuditedSecretSerializer``: create and update recorded in the audit log (the names of changed fields, never their
  values), with a write-only secret kept when an update sends it empty.
- ``CustomerViewMixin``: a representation reduced to an allowlist of fields for callers who may only see status.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models, transaction
from rest_framework import exceptions, serializers
from rest_framework.fields import CharField

from panel.accounts.choices import Action, Role, TokenScope
from panel.accounts.models import ApiToken, Invitation, Membership, Organization
from panel.accounts.scoping import can, for_user, organization_ids, role_in
from panel.accounts.services import record
from panel.validators import validate_name


def api_validation_error(exc: DjangoValidationError) -> exceptions.ValidationError:
    """A Django ``ValidationError`` (from ``full_clean`` or a validator) as a DRF 400 with field errors."""
    if hasattr(exc, "error_dict"):
        errors = {
            ("non_field_errors" if field == NON_FIELD_ERRORS else field): messages
            for field, messages in exc.message_dict.items()
        }
        return exceptions.ValidationError(errors)
    return exceptions.ValidationError({"non_field_errors": exc.messages})


def request_user(serializer: serializers.Field[Any, Any, Any, Any]) -> Any:
    """The user making the request the serializer works for (None outside a request, e.g. schema generation)."""
    request = serializer.context.get("request")
    return getattr(request, "user", None)


class ScopedRelatedField(serializers.PrimaryKeyRelatedField):  # type: ignore[type-arg]
    """A primary key restricted by ``for_user``: invisible objects do not exist; visible ones need ``require``."""

    def __init__(self, model: type[models.Model], require: str = Action.CHANGE, **kwargs: Any) -> None:
        self.model = model
        self.require = require
        kwargs.setdefault("queryset", model._default_manager.none())
        super().__init__(**kwargs)

    def get_queryset(self) -> models.QuerySet[Any]:
        user = request_user(self)
        if user is None:
            return self.model._default_manager.none()
        return for_user(self.model, user, Action.VIEW)

    def to_internal_value(self, data: Any) -> Any:
        obj = super().to_internal_value(data)
        if not can(request_user(self), self.require, obj):
            raise exceptions.PermissionDenied(
                f"Your role does not allow changes in this {self.model._meta.verbose_name}."
            )
        return obj


class PanelModelSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """Base of every model serializer of the API (see the module docstring).

    ``Meta.create_only`` names fields that are writable on create and read-only afterwards.
    """

    def build_standard_field(self, field_name: str, model_field: Any) -> tuple[type[Any], dict[str, Any]]:
        field_class, kwargs = super().build_standard_field(field_name, model_field)
        if issubclass(field_class, CharField):
            kwargs["trim_whitespace"] = False
        return field_class, kwargs

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        if self._updating():
            for name in getattr(self.Meta, "create_only", ()):
                fields[name].read_only = True
        return fields

    def to_internal_value(self, data: Any) -> Any:
        """Refuse (400) a change to a create-only field rather than ignoring it silently."""
        if self._updating() and hasattr(data, "get"):
            errors = {}
            for name in getattr(self.Meta, "create_only", ()):
                if name in data and str(data.get(name)) != str(self._current(name)):
                    errors[name] = ["This field cannot be changed after creation."]
            if errors:
                raise serializers.ValidationError(errors)
        return super().to_internal_value(data)

    def _updating(self) -> bool:
        return self.instance is not None and not isinstance(self.instance, (list, models.QuerySet))

    def _current(self, name: str) -> Any:
        field = self.instance._meta.get_field(name)  # type: ignore[union-attr]
        return getattr(self.instance, field.attname)


class AuditedSecretSerializer(PanelModelSerializer):
    """A serializer whose create and update are audit entries, ``<audit_name>.created`` and ``<audit_name>.updated``
    (with the names of the changed fields, never their values), and whose write-only ``secret_field`` keeps the
    stored secret when an update leaves it out or sends it empty."""

    audit_name: ClassVar[str] = ""
    secret_field: ClassVar[str] = ""

    def create(self, validated_data: dict[str, Any]) -> Any:
        model: Any = self.Meta.model
        with transaction.atomic():
            obj = model._default_manager.create(**validated_data)
            record(action=f"{self.audit_name}.created", actor=request_user(self), obj=obj)
        return obj

    def update(self, instance: Any, validated_data: dict[str, Any]) -> Any:
        if self.secret_field and not validated_data.get(self.secret_field, "x"):
            validated_data.pop(self.secret_field)
        changed = sorted(name for name, value in validated_data.items() if getattr(instance, name) != value)
        with transaction.atomic():
            for name, value in validated_data.items():
                setattr(instance, name, value)
            instance.save()
            if changed:  # the names of the fields, never their values
                record(
                    action=f"{self.audit_name}.updated", actor=request_user(self), obj=instance,
                    detail={"fields": changed},
                )  # fmt: skip
        return instance


class CustomerViewMixin:
    """Reduce the representation to ``customer_fields`` unless the caller may see details of the object's org."""

    customer_fields: ClassVar[tuple[str, ...]] = ()
    context: dict[str, Any]

    def organization_id_of(self, instance: Any) -> int:
        """The id of the organization that owns ``instance``."""
        return int(instance.organization_id)

    def shows_details(self, instance: Any) -> bool:
        """Whether the caller's role in the object's organization includes ``view_details``."""
        user = getattr(self.context.get("request"), "user", None)
        return self.organization_id_of(instance) in organization_ids(user, Action.VIEW_DETAILS)

    def customer_view_fields(self) -> tuple[str, ...]:
        """The fields customers see (``customer_fields``; inventory adds those feature apps contribute)."""
        return self.customer_fields

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)  # type: ignore[misc]
        if self.shows_details(instance):
            return data
        return {name: data[name] for name in self.customer_view_fields()}


class DetailSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """An error or refusal in words (404, 409, ...)."""

    detail = serializers.CharField()


class OrganizationSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """An organization the caller belongs to (or manages), with the caller's effective role in it."""

    role = serializers.SerializerMethodField()

    class Meta:
        model = Organization
        fields = ["id", "name", "slug", "managed_by", "role"]
        read_only_fields = fields

    def get_role(self, organization: Organization) -> str | None:
        """owner, operator, viewer or customer."""
        user = request_user(self)
        return role_in(user, organization) if user is not None else None


class ApiTokenSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """One of the caller's API tokens; the secret is never shown again after creation."""

    is_usable = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "scope",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "created_at",
            "is_usable",
        ]
        read_only_fields = fields


class ApiTokenCreateSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """What creating a token takes: a name, a scope and a lifetime in days (capped by API_TOKEN_MAX_DAYS)."""

    name = serializers.CharField(max_length=63, trim_whitespace=False, validators=[validate_name])
    scope = serializers.ChoiceField(choices=TokenScope.choices, default=TokenScope.READ)
    days = serializers.IntegerField(min_value=1, required=False)

    def validate_days(self, value: int) -> int:
        """At most API_TOKEN_MAX_DAYS."""
        if value > settings.API_TOKEN_MAX_DAYS:
            raise serializers.ValidationError(f"Tokens live at most {settings.API_TOKEN_MAX_DAYS} days.")
        return value


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    """A token just created: the only response that carries the plain ``token`` value."""

    token = serializers.CharField(read_only=True, help_text="Shown once; only a hash is stored.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class MemberSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """A member of an organization and their role (owners of the organization or of its provider only)."""

    username = serializers.CharField(source="user.username", read_only=True)
    email = serializers.CharField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "username", "email", "role", "created_at"]
        read_only_fields = fields


class InvitationSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """An invitation; its token is never shown again after creation (only a hash is stored)."""

    status = serializers.CharField(read_only=True, help_text="pending (the link works), accepted, revoked or expired.")
    created_by = serializers.SerializerMethodField()
    accepted_by = serializers.SerializerMethodField()

    class Meta:
        model = Invitation
        fields = [
            "id",
            "organization",
            "email",
            "role",
            "status",
            "created_by",
            "created_at",
            "expires_at",
            "accepted_at",
            "accepted_by",
            "revoked_at",
        ]
        read_only_fields = fields

    def get_created_by(self, invitation: Invitation) -> str | None:
        """User name of the inviter."""
        return invitation.created_by.get_username() if invitation.created_by else None

    def get_accepted_by(self, invitation: Invitation) -> str | None:
        """User name of the account that accepted it."""
        return invitation.accepted_by.get_username() if invitation.accepted_by else None


class InvitationCreateSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """What creating an invitation takes: an organization the caller administers, an email address and a role."""

    organization = ScopedRelatedField(Organization, require=Action.ADMIN)
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationCreatedSerializer(InvitationSerializer):
    """An invitation just created: the only response that carries its plain ``token`` and ``url``."""

    token = serializers.CharField(read_only=True, help_text="Shown once; only a hash is stored.")
    url = serializers.CharField(read_only=True, help_text="The link to pass on; it works once.")

    class Meta(InvitationSerializer.Meta):
        fields = [*InvitationSerializer.Meta.fields, "token", "url"]
        read_only_fields = fields
