"""The one settings object, read once from the environment at the edge.

Only :meth:`Settings.from_env` reads the environment; everything else is handed a
:class:`Settings`. Tests build one directly. Every problem is collected and reported together,
each naming its variable and how to fix it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import SplitResult, urlsplit

from worker.errors import SettingsError
from worker.rate_limit import Rate, parse_rate
from worker.redact import REDACTED, redact

DEFAULT_ENDPOINT = "https://api.videosdk.live"
DEFAULT_BROKER = "redis://localhost:6379/0"
DEFAULT_HEARTBEAT_FILE = Path(tempfile.gettempdir()) / "recq-worker.heartbeat"
LOG_FORMATS = ("text", "json")
BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp")
REDIS_SCHEMES = ("redis", "rediss", "unix")
MAX_STATE_TTL = 10 * 365 * 24 * 3600
"""The longest a job's state is kept (ten years): beyond what Redis' EXPIRE takes, no job
could be recorded at all."""

_T = TypeVar("_T")


class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A VideoSDK account: the API key and its secret."""

    api_key: str
    secret: Secret


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything recq is configured with. Immutable; build with :meth:`from_env` or directly."""

    credentials: Credentials | None = None
    api_endpoint: str = DEFAULT_ENDPOINT
    broker_url: str = DEFAULT_BROKER
    redis_url: str = DEFAULT_BROKER
    namespace: str = "recq"
    queue: str = "recq"
    state_ttl: int = 7 * 24 * 3600
    token_ttl: int = 600
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    retry_attempts: int = 5
    retry_window: float = 30.0
    outage_window: float = 3600.0
    requeue_delay: float = 15.0
    max_deliveries: int = 5
    visibility_timeout: int = 90
    start_grace: float = 900.0
    """How long a scheduled start waits for its meeting when the job names no startDeadline."""
    live_poll_interval: float = 10.0
    """How often a scheduled start checks whether its meeting is live."""
    rate_limit: Rate | None = None
    """The fleet-wide cap on VideoSDK calls (``RECQ_RATE_LIMIT``); None: no cap."""
    max_pause: float = 30.0
    """The longest a 429 pauses every worker, whatever its Retry-After."""
    log_format: str = "text"
    """``text`` (human-readable lines) or ``json`` (one JSON object a line)."""
    metrics_port: int | None = None
    """Where a worker serves Prometheus metrics (``/metrics``); None: not served."""
    metrics_address: str = "0.0.0.0"  # noqa: S104 - Prometheus scrapes from another host
    """The address the metrics port listens on: every interface, or one (``127.0.0.1``)."""
    heartbeat_file: Path = DEFAULT_HEARTBEAT_FILE
    """The file a worker's consumer touches while it runs; ``recq health liveness`` reads it."""
    heartbeat_interval: float = 10.0
    """How often the consumer touches the heartbeat file."""

    @property
    def job_budget(self) -> float:
        """The longest one delivery of a job can take: its retry window plus one last call."""
        return self.retry_window + self.connect_timeout + self.read_timeout

    @property
    def claim_lease(self) -> float:
        """How long a claim on a job outlives its holder: the job budget with a margin."""
        return self.job_budget + 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check every variable; raise one :class:`SettingsError` naming all problems."""
        reader = _Reader(environ)
        broker_url = reader.url("CELERY_BROKER_URL", DEFAULT_BROKER, BROKER_SCHEMES)
        scheme = urlsplit(broker_url).scheme
        redis_default = broker_url if scheme in ("redis", "rediss") else None
        if scheme in ("amqp", "amqps", "pyamqp") and "RECQ_REDIS_URL" not in environ:
            reader.problems.append(
                "RECQ_REDIS_URL is not set: the broker is not Redis, so recq needs a Redis for "
                "job state; set RECQ_REDIS_URL=redis://host:6379/0"
            )
        settings = cls(
            credentials=reader.credentials(),
            api_endpoint=reader.url(
                "VIDEOSDK_API_ENDPOINT", DEFAULT_ENDPOINT, ("https", "http")
            ).rstrip("/"),
            broker_url=broker_url,
            # Checked only when set: the broker's URL, its default, was checked as the broker's.
            redis_url=reader.url("RECQ_REDIS_URL", DEFAULT_BROKER, REDIS_SCHEMES)
            if "RECQ_REDIS_URL" in environ
            else redis_default or DEFAULT_BROKER,
            namespace=reader.text("RECQ_NAMESPACE", "recq"),
            queue=reader.text("RECQ_QUEUE", "recq"),
            state_ttl=reader.number(
                "RECQ_STATE_TTL", 7 * 24 * 3600, int, minimum=60, maximum=MAX_STATE_TTL
            ),
            token_ttl=reader.number("RECQ_TOKEN_TTL", 600, int, minimum=120),
            connect_timeout=reader.number("RECQ_CONNECT_TIMEOUT", 5.0, float, minimum=0.1),
            read_timeout=reader.number("RECQ_READ_TIMEOUT", 20.0, float, minimum=0.1),
            retry_attempts=reader.number("RECQ_RETRY_ATTEMPTS", 5, int, minimum=1),
            retry_window=reader.number("RECQ_RETRY_WINDOW", 30.0, float, minimum=0),
            outage_window=reader.number("RECQ_OUTAGE_WINDOW", 3600.0, float, minimum=0),
            requeue_delay=reader.number("RECQ_REQUEUE_DELAY", 15.0, float, minimum=0.1),
            max_deliveries=reader.number("RECQ_MAX_DELIVERIES", 5, int, minimum=1),
            visibility_timeout=reader.number("RECQ_VISIBILITY_TIMEOUT", 90, int, minimum=10),
            start_grace=reader.number("RECQ_START_GRACE", 900.0, float, minimum=0),
            live_poll_interval=reader.number("RECQ_LIVE_POLL_INTERVAL", 10.0, float, minimum=0.1),
            rate_limit=reader.rate("RECQ_RATE_LIMIT"),
            max_pause=reader.number("RECQ_MAX_PAUSE", 30.0, float, minimum=0),
            log_format=reader.choice("RECQ_LOG_FORMAT", LOG_FORMATS),
            metrics_port=reader.port("RECQ_METRICS_PORT"),
            metrics_address=reader.address("RECQ_METRICS_ADDRESS", "0.0.0.0"),  # noqa: S104
            heartbeat_file=Path(reader.text("RECQ_HEARTBEAT_FILE", str(DEFAULT_HEARTBEAT_FILE))),
            heartbeat_interval=reader.number("RECQ_HEARTBEAT_INTERVAL", 10.0, float, minimum=0.1),
        )
        if not reader.problems and settings.visibility_timeout < settings.claim_lease + 10:
            reader.problems.append(
                f"RECQ_VISIBILITY_TIMEOUT={settings.visibility_timeout} must exceed a job's "
                f"longest delivery ({settings.claim_lease:.0f} s: RECQ_RETRY_WINDOW + "
                "RECQ_CONNECT_TIMEOUT + RECQ_READ_TIMEOUT + 5) by at least 10 s, or the broker "
                "would hand a running job to a second worker"
            )
        if reader.problems:
            raise SettingsError(reader.problems)
        return settings

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed (settings stay immutable)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def require_credentials(self) -> Credentials:
        """The credentials, or a :class:`SettingsError` saying how to provide them."""
        if self.credentials is None:
            raise SettingsError(
                [
                    "VIDEOSDK_API_KEY and VIDEOSDK_SECRET (or VIDEOSDK_SECRET_FILE) must be set "
                    "for a worker: it signs VideoSDK tokens with them. Find both in the "
                    "VideoSDK dashboard under API keys (or run `recq dev` to use the sandbox)."
                ]
            )
        return self.credentials


def _shown_url(url: str) -> str:
    """``url`` as an error may show it: without what may be a password (everything from the
    scheme to the last '@', and the query string, where redis-py also reads one) and cut short.
    redact() is not enough here: a password may hold '/' or '@', which a URL reader would take
    for the path or the host."""
    head, separator, rest = url.partition("://")
    if not separator:
        head, rest = "", url
    if "@" in rest:  # the last '@' first: a password may hold a '?'
        rest = f"{REDACTED}@{rest.rsplit('@', 1)[1]}"
    rest = rest.split("?", 1)[0]
    return (f"{head}://{rest}" if separator else redact(rest))[:200]


def _port_read(parts: SplitResult) -> bool:
    """Whether the URL's port, if it has one, is a number from 0 to 65535."""
    try:
        parts.port  # noqa: B018 - urllib checks the port only when it is read
    except ValueError:
        return False
    return True


class _Reader:
    """Reads variables one by one, collecting every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def text(self, name: str, default: str) -> str:
        value = self.environ.get(name, "").strip()
        return value or default

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, choices[0]).lower()
        if value not in choices:
            self.problems.append(f"{name}={value!r} must be one of {', '.join(choices)}")
            return choices[0]
        return value

    def port(self, name: str) -> int | None:
        port = self.number(name, 0, int, minimum=0)
        if port > 65535:  # noqa: PLR2004 - the largest TCP port
            self.problems.append(f"{name}={port} is not a TCP port (1-65535; 0 or unset: off)")
        return port or None

    def address(self, name: str, default: str) -> str:
        value = self.text(name, default)
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            self.problems.append(
                f"{name}={value!r} is not an IP address (0.0.0.0: every interface; 127.0.0.1: "
                "this host only; :: for every IPv6 and IPv4 interface)"
            )
            return default

    def rate(self, name: str) -> Rate | None:
        value = self.environ.get(name, "").strip()
        if not value:
            return None
        try:
            return parse_rate(value)
        except SettingsError as exc:
            self.problems.extend(exc.problems)
            return None

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        value = self.text(name, default)
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path):
            allowed = ", ".join(f"{s}://" for s in schemes)
            self.problems.append(
                f"{name}={_shown_url(value)!r} is not a URL starting with one of {allowed}"
            )
            return value
        host_read = bool(parts.hostname) and _port_read(parts)
        if "@" in value.partition("://")[2] and "@" not in parts.netloc and not host_read:
            # "redis://:ab/cd@host": the password's '/' ended the host part early (an '@'
            # later in a valid URL, "amqp://rabbit/team@prod", is its path's).
            self.problems.append(
                f"{name}={_shown_url(value)!r}: its user or password holds a '/', '?' or '#', "
                "which ends the host part of a URL; write them percent-encoded (%2F, %3F, %23)"
            )
            return value
        if not _port_read(parts):
            self.problems.append(
                f"{name}={_shown_url(value)!r} has a port that is not a number from 0 to 65535"
            )
        database = parts.path.lstrip("/")
        if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
            named = f" {database!r}" if database.isalnum() else ""  # else it may hold a secret
            self.problems.append(
                f"{name}={_shown_url(value)!r} names the Redis database{named}: it must be a "
                "number (redis://host:6379/0), or nothing for 0"
            )
        return value

    def number(
        self,
        name: str,
        default: _T,
        kind: Callable[[str], _T],
        *,
        minimum: float,
        maximum: float = math.inf,
    ) -> _T:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = kind(raw)
        except ValueError:
            value = None
        what = "a whole number" if kind is int else "a number"
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            self.problems.append(f"{name}={raw!r} is not {what}")
            return default
        if value < minimum:  # type: ignore[operator]
            self.problems.append(f"{name}={raw!r} must be at least {minimum}")
        elif value > maximum:  # type: ignore[operator]
            self.problems.append(f"{name}={raw!r} must be at most {maximum:g}")
        return value

    def credentials(self) -> Credentials | None:
        key = self.environ.get("VIDEOSDK_API_KEY", "").strip()
        secret = self._secret()
        if key and secret:
            return Credentials(api_key=key, secret=Secret(secret))
        if key and not secret and not self.problems_mention("VIDEOSDK_SECRET"):
            self.problems.append(
                "VIDEOSDK_API_KEY is set but VIDEOSDK_SECRET is not: set VIDEOSDK_SECRET, "
                "or VIDEOSDK_SECRET_FILE to a file holding it"
            )
        if secret and not key:
            self.problems.append("VIDEOSDK_SECRET is set but VIDEOSDK_API_KEY is not: set both")
        return None

    def problems_mention(self, name: str) -> bool:
        return any(p.startswith(name) for p in self.problems)

    def _secret(self) -> str:
        inline = self.environ.get("VIDEOSDK_SECRET", "").strip()
        path = self.environ.get("VIDEOSDK_SECRET_FILE", "").strip()
        if inline and path:
            self.problems.append(
                "VIDEOSDK_SECRET and VIDEOSDK_SECRET_FILE are both set: keep only one"
            )
            return inline
        if not path:
            return inline
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
            # A value with no '/', or whose directory does not exist, may be the secret itself,
            # set here by mistake (a base64 secret holds '/'): not shown.
            parent = Path(path).parent
            a_path = "/" in path and parent.is_dir() and parent != Path("/")
            shown = f"={path!r}" if a_path else " (not shown: it may be the secret itself)"
            self.problems.append(
                f"VIDEOSDK_SECRET_FILE{shown} cannot be read ({why or 'error'}): mount the "
                "secret there or fix the path; it names a file, not the secret itself"
            )
            return ""
        if not value:
            self.problems.append(f"VIDEOSDK_SECRET_FILE={path!r} is empty")
        return value
