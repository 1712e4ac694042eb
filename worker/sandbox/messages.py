"""What goes in and out of the sandbox: a request, a reply, and the error that becomes a reply.

The error body mimics a typical gateway (``statusCode``, ``error``, ``message``, optional
``code`` and ``detail``). VideoSDK does not document its error shape, so clients must not rely on
this one: they should keep the status and the raw text, which is all the sandbox promises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

JSON_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as the sandbox sees it. Header names are lower-case."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer; ``drop`` means close the connection without answering at all."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False

    @classmethod
    def json(cls, status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
        """A reply whose body is ``value`` encoded as JSON."""
        body = json.dumps(value, separators=(",", ":")).encode()
        return cls(status, body, (("Content-Type", JSON_TYPE), *headers))

    @classmethod
    def dropped(cls) -> Reply:
        """No answer: the server closes the connection, the client sees a connection error."""
        return cls(0, drop=True)


def phrase(status: int) -> str:
    """The reason phrase of a status, e.g. ``Bad Request``."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(
    status: int, message: str, *, code: int | None = None, detail: str | None = None
) -> dict[str, Any]:
    """The JSON object the sandbox answers an error with."""
    body: dict[str, Any] = {"statusCode": status, "error": phrase(status), "message": message}
    if code is not None:
        body["code"] = code
    if detail is not None:
        body["detail"] = detail
    return body


class ApiError(Exception):
    """Raised by endpoint code to answer with an error; the service turns it into a reply."""

    def __init__(
        self, status: int, message: str, *, code: int | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.detail = detail

    def reply(self) -> Reply:
        """The error as an HTTP reply."""
        body = error_body(self.status, self.message, code=self.code, detail=self.detail)
        return Reply.json(self.status, body)


def bad_request(message: str, *, code: int | None = None) -> ApiError:
    """A 400 with ``message``."""
    return ApiError(400, message, code=code)
