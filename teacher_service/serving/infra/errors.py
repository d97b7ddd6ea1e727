"""Errors the service answers with: a status code and a message for the user, as JSON `{"detail": ...}`."""

from __future__ import annotations


class ApiError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ApiError):
    status_code = 422


class Unauthorized(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class Gone(ApiError):
    status_code = 410


class ClientClosedRequest(ApiError):
    """The client hung up while its request waited; nginx's code for it, seen only in metrics and logs."""

    status_code = 499
