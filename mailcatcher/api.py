"""API of an environment's mail catcher, mixed into ``/api/v1/environments/``:

- ``GET /environments/{id}/mails/?q=&kind=any|from|to&start=&limit=``: caught mails, newest first;
- ``DELETE /environments/{id}/mails/``: delete them all (``change``; audited);
- ``GET /environments/{id}/mails/{message_id}/``: one mail with its text, HTML (as a string: a client that shows
  it must sandbox it, as the panel's page does), headers and attachments.

Staff who may see the environment's details only; customers, production environments and other organizations'
environments answer 404. A catcher that cannot be reached answers 503, one that answers oddly 502.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from mailcatcher import services
from mailcatcher.adapters import MESSAGE_ID, SEARCH_KINDS, CatcherError, MailNotFound
from panel.accounts.api.serializers import DetailSerializer
from panel.accounts.choices import Action
from panel.accounts.scoping import can
from panel.inventory.models import Environment


class CatcherUnavailableError(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The mail catcher cannot be reached."


class CatcherAnswerError(APIException):
    status_code = status.HTTP_502_BAD_GATEWAY
    default_detail = "The mail catcher answered something unexpected."


class MailQuerySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The list's query string."""

    q = serializers.CharField(required=False, default="", allow_blank=True, max_length=200, trim_whitespace=True)
    kind = serializers.ChoiceField(choices=SEARCH_KINDS, required=False, default="any")
    start = serializers.IntegerField(required=False, default=0, min_value=0, max_value=10_000_000)
    limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=250)


class MailSummarySerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One caught mail in the list."""

    id = serializers.CharField()
    sender = serializers.CharField()
    recipients = serializers.ListField(child=serializers.CharField())
    subject = serializers.CharField()
    date = serializers.DateTimeField(allow_null=True)
    size = serializers.IntegerField()


class MailPageSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A page of caught mails."""

    catcher = serializers.CharField(help_text="mailhog or mailpit")
    total = serializers.IntegerField()
    start = serializers.IntegerField()
    results = MailSummarySerializer(many=True)


class HeaderSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """One header line."""

    name = serializers.CharField()
    value = serializers.CharField()


class AttachmentSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """An attachment (``part``: its id in the catcher, for the HTML download route)."""

    part = serializers.CharField()
    filename = serializers.CharField()
    content_type = serializers.CharField()
    size = serializers.IntegerField()


class MailSerializer(MailSummarySerializer):
    """One caught mail, whole."""

    headers = HeaderSerializer(many=True)
    text = serializers.CharField(allow_blank=True)
    html = serializers.CharField(allow_blank=True, help_text="Untrusted HTML: show it only in a sandbox.")
    attachments = AttachmentSerializer(many=True)


def _environment(viewset: Any, request: Request) -> Environment:
    environment: Environment = viewset.get_object()
    if not services.has_catcher_kind(environment) or not can(request.user, Action.VIEW_DETAILS, environment):
        raise NotFound("Not found.")
    return environment


def _summary(mail: Any) -> dict[str, Any]:
    return {
        "id": mail.id,
        "sender": mail.sender,
        "recipients": mail.recipients,
        "subject": mail.subject,
        "date": mail.date,
        "size": mail.size,
    }


def _guarded(call: Any) -> Any:
    try:
        return call()
    except MailNotFound as exc:
        raise NotFound("No such mail.") from exc
    except services.CatcherUnavailable as exc:
        raise CatcherUnavailableError(str(exc)) from exc
    except CatcherError as exc:
        raise CatcherAnswerError(str(exc)) from exc


class EnvironmentMailActions(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """``mails`` routes, mixed into ``EnvironmentViewSet`` (``get_object`` keeps its scoping)."""

    @extend_schema(
        operation_id="environments_mails_list",
        request=None,
        parameters=[MailQuerySerializer],
        responses={
            200: MailPageSerializer,
            400: DetailSerializer,
            404: DetailSerializer,
            502: DetailSerializer,
            503: DetailSerializer,
        },
    )
    @action(detail=True, methods=["get"])
    def mails(self, request: Request, pk: str | None = None) -> Response:
        """The mails the environment's catcher (MailHog, Mailpit) caught, newest first, optionally searched."""
        environment = _environment(self, request)
        query = MailQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data

        def listing() -> dict[str, Any]:
            catcher = services.locate(environment)
            page = services.list_mails(
                environment=environment,
                start=params["start"],
                limit=params["limit"],
                query=params["q"],
                search_kind=params["kind"],
            )
            results = [_summary(item) for item in page.items]
            return {"catcher": catcher.kind, "total": page.total, "start": page.start, "results": results}

        return Response(MailPageSerializer(_guarded(listing)).data)

    @extend_schema(
        operation_id="environments_mails_delete_all",
        request=None,
        responses={204: None, 404: DetailSerializer, 502: DetailSerializer, 503: DetailSerializer},
    )
    @mails.mapping.delete
    def delete_mails(self, request: Request, pk: str | None = None) -> Response:
        """Delete every mail the environment's catcher holds (audited)."""
        environment = _environment(self, request)
        _guarded(lambda: services.delete_all(environment=environment, actor=request.user, request=request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="environments_mail_retrieve",
        request=None,
        parameters=[OpenApiParameter("message_id", str, OpenApiParameter.PATH, description="The catcher's id.")],
        responses={200: MailSerializer, 404: DetailSerializer, 502: DetailSerializer, 503: DetailSerializer},
    )
    @action(detail=True, methods=["get"], url_path=rf"mails/(?P<message_id>{MESSAGE_ID.pattern[1:-1]})")
    def mail(self, request: Request, pk: str | None = None, message_id: str = "") -> Response:
        """One caught mail: text, HTML, headers and attachments."""
        environment = _environment(self, request)
        found = _guarded(lambda: services.get_mail(environment=environment, message_id=message_id))
        data = {
            **_summary(found),
            "headers": [{"name": name, "value": value} for name, value in found.headers],
            "text": found.text,
            "html": found.html,
            "attachments": [attachment.__dict__ for attachment in found.attachments],
        }
        return Response(MailSerializer(data).data)
