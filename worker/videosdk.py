"""The VideoSDK REST client: one attempt per call, every outcome classified.

The client sends exactly the body it is given, with the raw token in ``Authorization`` (no
``Bearer`` prefix) and ``Content-Type: application/json``, on a pooled ``requests.Session``
with connect and read timeouts. It makes one attempt: retrying is the caller's business, done
once, by :class:`worker.retry.RetryPolicy`. The outcome is an :class:`~worker.errors.Answer`
on 2xx, :class:`~worker.errors.UpstreamUnavailable` for what may pass (network, timeout, 429,
5xx), and :class:`~worker.errors.UpstreamRejected` for every other answer.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import requests
import urllib3

from worker.errors import Answer, UpstreamError, UpstreamRejected, UpstreamUnavailable
from worker.redact import redact
from worker.tokens import TokenSigner

logger = logging.getLogger(__name__)
Observer = Callable[[str, "int | None", float], None]
"""Told of every call: the endpoint, the HTTP status (None: no answer) and the seconds it took."""


def _ignore(_endpoint: str, _status: int | None, _seconds: float) -> None:
    return None


class Endpoints:
    """Every VideoSDK path recq uses, in one place (see ``videosdk-api.md``)."""

    START_RECORDING: Final = "/v2/recordings/start"
    STOP_RECORDING: Final = "/v2/recordings/end"  # the index page says /stop; the API uses /end
    START_TRACK_RECORDING: Final = "/v2/recordings/participant/track/start"
    STOP_TRACK_RECORDING: Final = "/v2/recordings/participant/track/stop"
    SESSIONS: Final = "/v2/sessions/"


MAX_BODY_CHARS = 2000
_ALREADY_RUNNING_CODE, _NOT_RUNNING_CODE, _NO_SESSION_CODE = 4011, 4012, 4003
_DELTA_SECONDS = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() accepts "²"
# A recording that runs, in the words a refusal may use: "already running", "already being
# recorded", "in progress", "currently running".
_ALREADY_RUNNING_TEXT = re.compile(
    r"already\s+(running|started|starting|in\s+progress|active|being\s+recorded|recording)"
    r"|\bin\s+progress\b|\bcurrently\s+(running|active|recording|being\s+recorded)\b",
    re.I,
)
# A body that speaks of a recording and says nothing runs: "No recording is running for this
# room", "track recording not active". Without the recording ("Your plan is not active"), no;
# nor when it speaks of the account ("Recording service is not active for your plan").
_NOT_RUNNING_TEXT = re.compile(
    r"^(?!.*\b(plan|account|subscription|add-?ons?|billing|quota|limit|service|organi[sz]ation)s?\b)"
    r"(?=.*\brecord).*?\b(not\s+|no\s+(\w+\s+){0,3})(running|active)\b",
    re.I | re.S,
)


def build_session(endpoint: str, pool_size: int = 32) -> requests.Session:
    """A session for ``endpoint``: a connection pool sized for the worker, no retries of its
    own, and the environment's proxy and CA settings read once, here.

    requests would otherwise read them again on every call (the proxy variables, ``NO_PROXY``,
    ``REQUESTS_CA_BUNDLE``, and ``~/.netrc``: 5% of a worker's time). It also no longer reads
    ``~/.netrc``, whose login for the API's host would replace the signed token.
    """
    session = requests.Session()
    # max_retries=0: the one retry policy is RetryPolicy; the adapter must not add another layer.
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=pool_size, max_retries=0
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    environment = session.merge_environment_settings(endpoint, {}, None, None, None)
    session.proxies = environment["proxies"]
    session.verify = environment["verify"]
    session.cert = environment["cert"]
    session.trust_env = False
    return session


class VideoSDKClient:
    """Calls VideoSDK on behalf of the worker, one attempt at a time."""

    def __init__(
        self,
        session: requests.Session,
        *,
        endpoint: str,
        tokens: TokenSigner,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        observe: Observer = _ignore,
    ) -> None:
        self._session = session
        self._observe = observe
        self._base = endpoint.rstrip("/")
        self._tokens = tokens
        self._timeout = (connect_timeout, read_timeout)
        self._templates: dict[tuple[str, str], requests.PreparedRequest] = {}

    @property
    def longest_call(self) -> float:
        """The longest one call can take: its connect and read timeouts."""
        return self._timeout[0] + self._timeout[1]

    def _prepared(self, method: str, path: str) -> requests.PreparedRequest:
        """The request for ``method`` and ``path``, merged with the session's headers, hooks
        and auth once: each call copies it and adds its body, query and token.

        ``Session.request`` would merge and parse all of it again on every call (a fifth of a
        call's CPU). The one difference: the session's cookies are not sent; VideoSDK's API
        authenticates by token alone.
        """
        key = (method, path)
        prepared = self._templates.get(key)
        if prepared is None:
            headers = {"Content-Type": "application/json"}
            request = requests.Request(method, self._base + path, headers=headers)
            prepared = self._templates[key] = self._session.prepare_request(request)
            prepared.headers.pop("Cookie", None)
        return prepared

    def post(self, path: str, body: Mapping[str, Any]) -> Answer:
        """POST ``body`` as JSON to ``path``; return the answer or raise a classified error."""
        return self._send("POST", path, json_body=body)

    def get(self, path: str, params: Mapping[str, str]) -> Answer:
        """GET ``path`` with query ``params``; return the answer or raise a classified error."""
        return self._send("GET", path, params=params)

    def _send(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        request = self._prepared(method, path).copy()
        if params:
            request.prepare_url(request.url, params)
        if json_body is not None:
            request.prepare_body(json.dumps(json_body, separators=(",", ":")), None)
        request.headers["Authorization"] = self._tokens.token()
        began = time.perf_counter()
        try:
            response = self._session.send(request, timeout=self._timeout)
        except requests.RequestException as exc:
            error = _network_error(path, exc)
            self._observe(path, None, time.perf_counter() - began)
            logger.debug("%s %s: no answer (%s)", method, path, error)
            raise error from None
        took = time.perf_counter() - began
        self._observe(path, response.status_code, took)
        logger.debug("%s %s: %d in %.0f ms", method, path, response.status_code, took * 1000)
        answer = _answer(response)
        if response.ok:
            return answer
        raise classify(path, answer)


def classify(path: str, answer: Answer) -> UpstreamError:
    """The error an unsuccessful answer stands for: transient (429, 5xx) or permanent."""
    message = f"VideoSDK answered {answer.status} to {path}: {answer.body[:200]}"
    if answer.status == 429:  # noqa: PLR2004 - HTTP's own number
        # Too many requests: refused before any work, so it cannot have started a recording.
        return UpstreamUnavailable(message, endpoint=path, answer=answer, maybe_applied=False)
    if answer.status >= 500:  # noqa: PLR2004
        return UpstreamUnavailable(message, endpoint=path, answer=answer)
    return UpstreamRejected(message, endpoint=path, answer=answer)


def refused_as_already_running(error: UpstreamError) -> bool:
    """True when VideoSDK refused a start because that recording is already running.

    The error body is undocumented. The client SDKs' code 4011 means "start refused", a
    recording already starting or running being only its example: with that code, a message
    must not give another reason ("no active participants" is no running recording, and taking
    it for one reported a recording that never started); a 4011 with no message at all is
    taken for its example. A body without a code must say so in its wording.
    """
    if not _refused_for(error, {_ALREADY_RUNNING_CODE}, _ALREADY_RUNNING_TEXT):
        return False
    if _code(error) is None:  # judged by its wording already
        return True
    said = _said(error)
    return said is None or bool(_ALREADY_RUNNING_TEXT.search(said))


def refused_as_not_running(error: UpstreamError) -> bool:
    """True when VideoSDK refused a stop because nothing is recording: the code the client SDKs
    name for it (4012, stop refused); 4003, the catalogue's invalid meeting id, which the
    sandbox also answers for a room without a live session (either way nothing records there:
    a meeting's recordings end with it); or, in a body without a code, the wording about a
    recording."""
    return _refused_for(error, {_NOT_RUNNING_CODE, _NO_SESSION_CODE}, _NOT_RUNNING_TEXT)


def ongoing_session(answer: Answer) -> bool:
    """True when a sessions listing shows a session whose ``status`` is ``ongoing``."""
    listing = answer.data
    items = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(items, list):
        return False
    return any(isinstance(item, dict) and item.get("status") == "ongoing" for item in items)


def last_page(answer: Answer) -> int:
    """The listing's last page number (1 when it does not say)."""
    listing = answer.data
    info = listing.get("pageInfo") if isinstance(listing, dict) else None
    try:
        return max(1, int((info or {}).get("lastPage") or 1))
    except (ValueError, TypeError, AttributeError):
        return 1


def _code(error: UpstreamError) -> int | None:
    """The numeric ``code`` of an error body that is a JSON object, if it has one."""
    parsed = error.answer.data if error.answer is not None else None
    code = parsed.get("code") if isinstance(parsed, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _said(error: UpstreamError) -> str | None:
    """The message of an error body that is a JSON object (``message``, ``error`` or ``msg``,
    as the server SDK reads them); None for any other body, or one that says nothing."""
    parsed = error.answer.data if error.answer is not None else None
    if not isinstance(parsed, dict):
        return None
    for name in ("message", "error", "msg"):
        said = parsed.get(name)
        if isinstance(said, str) and said.strip():
            return said
    return None


def _refused_for(error: UpstreamError, codes: set[int], wording: re.Pattern[str]) -> bool:
    """Whether the refusal carries one of ``codes``; when its body has no numeric ``code`` at
    all, whether its wording says so. A body with another code is refused for that reason,
    whatever its message says ("Your subscription is not active" is no stopped recording)."""
    if not isinstance(error, UpstreamRejected) or error.answer is None:
        return False
    code = _code(error)
    if code is not None:
        return code in codes
    return bool(wording.search(error.answer.body))


def _answer(response: requests.Response) -> Answer:
    return answer_of(response.status_code, response.text, response.headers)


def answer_of(status: int, text: str, headers: Mapping[str, str] | None = None) -> Answer:
    """The :class:`Answer` for an HTTP answer's status, whole body text and headers."""
    headers = headers or {}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    return Answer(
        status=status,
        # Redacted, then cut: a cut first could part a URL's password from its '@', and leave
        # it unrecognised. What lies a little past the cut is enough to see any secret whole.
        body=redact(text[: MAX_BODY_CHARS + 1024])[:MAX_BODY_CHARS],
        request_id=headers.get("x-request-id") or headers.get("request-id"),
        retry_after=parse_retry_after(headers.get("Retry-After")),
        data=data,
    )


def _network_error(path: str, exc: requests.RequestException) -> UpstreamUnavailable:
    never_sent = isinstance(exc, requests.ConnectTimeout) or _refused(exc)
    what = "timed out" if isinstance(exc, requests.Timeout) else "failed"
    return UpstreamUnavailable(
        f"the call to VideoSDK {path} {what}: {type(exc).__name__}",
        endpoint=path,
        maybe_applied=not never_sent,
    )


def _refused(exc: requests.RequestException) -> bool:
    """True when the connection was never made, so VideoSDK cannot have seen the request."""
    reason = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", reason)
    return isinstance(inner, urllib3.exceptions.NewConnectionError)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
