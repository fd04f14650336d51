"""Errors of the Kubernetes API double and their wire form, the ``kind: Status`` body.

It owns the mapping from a failure to (HTTP code, reason, message, details); it does not decide
when a failure happens (``store``, ``patching``, ``selectors`` do).
"""

from __future__ import annotations

from typing import Any

# The reason each code carries when the caller does not name one (as the real server does).
REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict", 410: "Expired",
    415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
    500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}


class ApiError(Exception):
    """A request the double refuses; rendered as a ``kind: Status`` body with ``code``."""

    def __init__(self, code: int, message: str, *, reason: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        return status_body(self.code, self.message, reason=self.reason, details=self.details)


def status_body(code: int, message: str, *, reason: str | None = None,
                details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A failure ``Status`` object as the API server sends it."""
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message,
                            "reason": reason or REASONS.get(code, "Unknown"), "code": code}
    if details:
        body["details"] = details
    return body


def not_found(qualified: str, name: str) -> ApiError:
    kind = qualified.split(".", 1)
    details = {"name": name, "kind": kind[0]}
    if len(kind) > 1:
        details["group"] = kind[1]
    return ApiError(404, f'{qualified} "{name}" not found', details=details)


def already_exists(qualified: str, name: str) -> ApiError:
    kind = qualified.split(".", 1)
    details = {"name": name, "kind": kind[0]}
    if len(kind) > 1:
        details["group"] = kind[1]
    return ApiError(409, f'{qualified} "{name}" already exists', reason="AlreadyExists",
                    details=details)


def conflict(qualified: str, name: str) -> ApiError:
    return ApiError(409, f'Operation cannot be fulfilled on {qualified} "{name}": the object '
                    "has been modified; please apply your changes to the latest version and "
                    "try again", details={"name": name, "kind": qualified.split(".", 1)[0]})


def gone(message: str) -> ApiError:
    return ApiError(410, message, reason="Expired")
