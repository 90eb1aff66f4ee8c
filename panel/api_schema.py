"""The OpenAPI schema generator: drf-spectacular's, plus the error answers of every operation (``panel.api``)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema

DETAIL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"detail": {"type": "string"}},
    "required": ["detail"],
}
VALIDATION_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        'Invalid input: {"field": ["message", ...]} (non_field_errors for the whole object; nested objects for '
        'mappings and lists), or {"detail": "message"} for a malformed request (unreadable body, NUL character).'
    ),
    "additionalProperties": {},
}


class PanelAutoSchema(AutoSchema):
    """drf-spectacular's schema, plus the error answers every operation can give (their bodies: ``panel.api``).

    400 for any operation (invalid input, a malformed query string or body), 401 and 403 (no or a read-only
    token), 404 for an object in the path, 415 for a request body of another media type. Other answers an
    operation declares itself (a 409 with ``job``) are kept.
    """

    def _get_response_bodies(self, direction: Any = "response") -> Any:
        responses = super()._get_response_bodies(direction)
        errors: dict[str, tuple[str, dict[str, Any]]] = {
            "400": ("Invalid input.", VALIDATION_ERROR_SCHEMA),
            "401": ("No valid credentials.", DETAIL_SCHEMA),
            "403": ("Not allowed with these credentials (a read-only token, a missing CSRF token).", DETAIL_SCHEMA),
        }
        if "{" in self.path:
            errors["404"] = ("Not found, or not visible to the caller.", DETAIL_SCHEMA)
        if self.method in ("POST", "PUT", "PATCH"):
            errors["415"] = ("The body's media type is not accepted.", DETAIL_SCHEMA)
        for code, (description, schema) in errors.items():
            declared = responses.get(code)
            # A declared 409 (``job``) stays; a declared 400 gets the general shape, which any 400 may have.
            if declared is None or code == "400":
                responses[code] = {
                    "description": (declared or {}).get("description") or description,
                    "content": {"application/json": {"schema": schema}},
                }
        return responses
