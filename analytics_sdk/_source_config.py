"""The sourceConfig document: its models, its fetch from the control plane, refresh and cache."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import requests
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from analytics_sdk._files import write_private
from analytics_sdk._logging import logger, register_secret
from analytics_sdk._transport import (
    UNREADABLE_TLS_FILES,
    UNSENDABLE,
    USER_AGENT,
    _load_backoff,
    _proxy_passwords,
    network_problem,
    open_session,
    retry_after_seconds,
    warn_if_cleartext,
)
from analytics_sdk._version import __version__
from analytics_sdk.options import ClientOptions

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "ConfigOrigin",
    "Destination",
    "DestinationDefinition",
    "Source",
    "SourceConfig",
    "SourceConfigClient",
    "SourceConfigError",
]

ConfigOrigin = Literal["control_plane", "cache", "file", "dict"]

MAX_DOCUMENT_BYTES = 5 * 1024 * 1024  # a workspace with hundreds of destinations is ~1 MB
THREAD_NAME = "analytics_sdk.config"
INITIAL_ATTEMPTS = 5  # then the cache, or on_unavailable; refreshes go on regardless
BACKOFF_BASE = 0.5  # seconds before the first retry of the initial fetch, before jitter
BACKOFF_CAP = 30.0  # seconds: the longest step (and the most a Retry-After hint may add)
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
DEVICE_MODES = frozenset({"device", "hybrid"})
_CACHE_FORMAT = 1
_ERROR_BODY_BYTES = 64 * 1024  # read (and drop) this much of an error answer, no more
_CHUNK_BYTES = 64 * 1024
_ID_IN_LOGS = 64  # characters of a destination id a warning may quote
_SKIPPED_WARNINGS = 5  # malformed destinations named one by one; the rest are counted
# The cache file's name: a salted PBKDF2 of the write key. A plain hash of a guessable key
# (a test key, one from a leaked list) is reversed by trying candidates at a billion a
# second; this costs each guess 40 ms, and us 40 ms once per client, on the config thread.
_CACHE_NAME_SALT = b"analytics-sdk sourceConfig cache name v1"
_CACHE_NAME_ITERATIONS = 100_000
_HINTS = {
    401: " (is the write key right?)",
    403: " (is the write key allowed to read this source's config?)",
    404: " (is control_plane_url the control plane's base URL, without /sourceConfig?)",
}


class SourceConfigError(Exception):
    """A sourceConfig document that cannot be used; the message names the path and problem.

    Messages never quote values: a destination's config holds its API keys.
    """


# -- the document -------------------------------------------------------------------------


class _WireModel(BaseModel):
    """What the control plane sends: unknown fields ignored, nulls read as absent."""

    model_config = ConfigDict(
        frozen=True, extra="ignore", validate_by_name=True, validate_by_alias=True
    )

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: Any) -> Any:
        # `"config": null` is common in hand-made and older documents (rudder-sdk-android
        # #429 crashed on it): a null takes the default, or is "missing" where required.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class DestinationDefinition(_WireModel):
    """Which kind of destination: `name` ("AM") and `display_name` ("Amplitude")."""

    name: str
    display_name: str = Field(alias="displayName")


class Destination(_WireModel):
    """One destination of the source, with its settings (`config` holds its secrets)."""

    id: str
    name: str = ""
    enabled: bool = True
    destination_definition: DestinationDefinition = Field(alias="destinationDefinition")
    config: dict[str, Any] = Field(default_factory=dict)

    @property
    def device_mode(self) -> bool:
        """True when this SDK should deliver to it itself (DESIGN.md section 6)."""
        if not self.enabled:
            return False
        mode = self.config.get("connectionMode")
        if isinstance(mode, str) and mode.strip().lower() in DEVICE_MODES:
            return True
        return self.config.get("useNativeSDK") is True  # the setting before connectionMode


class Source(_WireModel):
    """The source the write key belongs to. Its `writeKey` is deliberately not kept."""

    id: str
    name: str = ""
    enabled: bool = True
    config: dict[str, Any] = Field(default_factory=dict)
    destinations: list[Destination] = Field(default_factory=list)

    @field_validator("destinations", mode="before")
    @classmethod
    def _skip_bad_destinations(cls, value: Any) -> Any:
        # One malformed destination disables that destination only (LESSONS R24.3).
        if not isinstance(value, list):
            return value  # pydantic names the problem
        kept: list[Destination] = []
        skipped = 0
        for index, item in enumerate(value):
            try:
                kept.append(Destination.model_validate(item))
            except ValidationError as exc:
                skipped += 1
                if skipped <= _SKIPPED_WARNINGS:  # thousands of bad ones: not a line each
                    logger.warning(
                        "sourceConfig: destination %d%s skipped (%s); the others are kept",
                        index,
                        _id_note(item),
                        _problems(exc, "destinations", index),
                    )
        if skipped > _SKIPPED_WARNINGS:
            logger.warning(
                "sourceConfig: %d more malformed destinations skipped (%d of %d in all)",
                skipped - _SKIPPED_WARNINGS,
                skipped,
                len(value),
            )
        return kept


class SourceConfig(_WireModel):
    """A parsed `GET /sourceConfig/` answer (DESIGN.md section 6)."""

    source: Source

    @classmethod
    def parse(cls, raw: bytes | str | dict[str, Any]) -> SourceConfig:
        """Parse a document: JSON bytes or text, or an already decoded dict.

        Malformed destinations are skipped with a warning naming their index and id.

        Raises:
            SourceConfigError: not JSON, not an object, larger than MAX_DOCUMENT_BYTES, or
                `source` missing or invalid. The message names the path, never a value.
        """
        document = raw if isinstance(raw, dict) else _load_document(raw)
        return cls._from_document(document)

    @classmethod
    def _from_document(cls, document: dict[str, Any]) -> SourceConfig:
        source = document.get("source")
        if source is None:
            raise SourceConfigError("invalid sourceConfig: source: missing")
        if not isinstance(source, dict):
            raise SourceConfigError(
                f"invalid sourceConfig: source: must be an object (got {_json_type(source)})"
            )
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            # `from None`: pydantic's own text quotes the input, maybe an API key.
            raise SourceConfigError(f"invalid sourceConfig: {_problems(exc)}") from None

    def summary(self) -> str:
        """Counts and ids for logs: never a destination's config."""
        destinations = self.source.destinations
        device = sum(1 for d in destinations if d.device_mode)
        return (
            f"source {self.source.id[:_ID_IN_LOGS]!r}, {len(destinations)} destinations, "
            f"{device} in device mode"
        )


def _load_document(raw: bytes | str) -> dict[str, Any]:
    """JSON text -> the top-level object, within MAX_DOCUMENT_BYTES."""
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > MAX_DOCUMENT_BYTES:
        raise SourceConfigError(
            f"invalid sourceConfig: the document is {size} bytes, "
            f"over the limit of {MAX_DOCUMENT_BYTES}"
        )
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: str(exc) is the same, but never the document.
        raise SourceConfigError(
            f"invalid sourceConfig: not valid JSON ({exc.msg} at line {exc.lineno} "
            f"column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise SourceConfigError("invalid sourceConfig: not UTF-8 text") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise SourceConfigError(
            f"invalid sourceConfig: not usable JSON ({type(exc).__name__})"
        ) from None
    except RecursionError:
        raise SourceConfigError("invalid sourceConfig: nested too deeply") from None
    if not isinstance(document, dict):
        raise SourceConfigError(
            f"invalid sourceConfig: the document must be a JSON object (got {_json_type(document)})"
        )
    return document


def _problems(exc: ValidationError, *prefix: str | int) -> str:
    """One clause per problem, `source.destinations[2].id: Field required`; no input."""
    clauses = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        path = ""
        for part in (*prefix, *err["loc"]):
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
        clauses.append(f"{path or '<document>'}: {err['msg']}")
    return "; ".join(clauses)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else "an object"


def _id_note(item: object) -> str:
    if isinstance(item, dict) and isinstance(item.get("id"), str):
        return f" (id {item['id'][:_ID_IN_LOGS]!r})"
    return ""


def _without_write_key(document: dict[str, Any]) -> dict[str, Any]:
    """A shallow copy without source.writeKey, for the disk: the key is never stored."""
    source = document.get("source")
    if not isinstance(source, dict) or "writeKey" not in source:
        return document
    return {**document, "source": {k: v for k, v in source.items() if k != "writeKey"}}


# -- the control plane --------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    """One attempt's outcome. `problem` is loggable text: a status or an exception type."""

    status: int | None = None  # None: no HTTP answer at all
    body: bytes | None = None  # 2xx only
    etag: str | None = None
    problem: str = ""
    retry: bool = False
    retry_after: float | None = None  # seconds the server asked for (429/503)


class _Fetcher:
    """One requests session and one prepared GET, made on the config thread.

    Built per thread, so a forked child never shares the parent's keep-alive sockets.
    """

    def __init__(self, options: ClientOptions, token: str) -> None:
        base = (options.control_plane_url or "").rstrip("/")
        url = f"{base}/sourceConfig/"
        warn_if_cleartext("control_plane_url", options.control_plane_url)
        session, self._own_session, request_options = open_session(options, url)
        self._session = session
        self._send_options: dict[str, Any] = {
            **request_options,
            "stream": True,  # the body is read in chunks, up to MAX_DOCUMENT_BYTES
            "allow_redirects": True,  # a GET may follow http -> https; requests drops auth
        }
        headers = {
            "Authorization": f"Basic {token}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._prepared = session.prepare_request(
            requests.Request("GET", url, params={"p": "python", "v": __version__}, headers=headers)
        )

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def get(self, etag: str | None, stop: threading.Event) -> _Answer:
        """One GET, classified; never raises for network trouble."""
        request = self._prepared.copy()
        if etag:
            request.headers["If-None-Match"] = etag
        try:
            response = self._session.send(request, **self._send_options)
        except UNSENDABLE as exc:
            # The type only: requests' text can quote a proxy URL with its password.
            return _Answer(
                problem=f"the request cannot be made ({type(exc).__name__}); "
                "check control_plane_url and proxies"
            )
        except requests.RequestException as exc:  # refused, reset, timed out, TLS
            return _Answer(problem=network_problem(exc), retry=True)
        except OSError as exc:  # a verify= or cert= file requests cannot find
            return _Answer(problem=f"the request cannot be made ({type(exc).__name__}); "
                           f"{UNREADABLE_TLS_FILES}")  # fmt: skip
        with response:
            status = response.status_code
            if 200 <= status < 300:
                try:
                    body = _read_limited(response, MAX_DOCUMENT_BYTES, stop)
                except requests.RequestException as exc:  # the body broke off
                    return _Answer(problem=type(exc).__name__, retry=True)
                if body is None:
                    return _Answer(
                        status=status,
                        problem=f"the document is over the limit of {MAX_DOCUMENT_BYTES} bytes",
                    )
                return _Answer(status=status, body=body, etag=response.headers.get("ETag"))
            # A small error body is read, so the connection goes back to the pool.
            with contextlib.suppress(requests.RequestException):
                _read_limited(response, _ERROR_BODY_BYTES, stop)
            return _Answer(
                status=status,
                problem=f"HTTP {status}{_HINTS.get(status, '')}",
                retry=status in RETRY_STATUSES,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )


def _read_limited(response: requests.Response, limit: int, stop: threading.Event) -> bytes | None:
    """The (decoded) body, or None when it exceeds `limit` bytes or stop() was called."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit and "Content-Encoding" not in response.headers:
        return None
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_CHUNK_BYTES):
        size += len(chunk)
        if size > limit or stop.is_set():
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _backoff_waits() -> Iterator[float]:
    """Exponential steps from BACKOFF_BASE to BACKOFF_CAP, each with full jitter."""
    backoff = _load_backoff()  # lazily, under the transport's fork-safe import lock
    steps = backoff.expo(base=2, factor=BACKOFF_BASE, max_value=BACKOFF_CAP)
    next(steps)  # backoff's generators are primed with one send(None) before use
    for step in steps:
        yield backoff.full_jitter(step)


@dataclass(frozen=True)
class _Cached:
    config: SourceConfig
    etag: str | None


def _default_cache_dir() -> Path | None:
    """$XDG_CACHE_HOME/analytics-sdk, else ~/.cache/analytics-sdk; None without a home."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and os.path.isabs(xdg):  # the XDG spec: relative values are ignored
        return Path(xdg) / "analytics-sdk"
    try:
        return Path.home() / ".cache" / "analytics-sdk"
    except (RuntimeError, KeyError, OSError):  # no HOME and no passwd entry
        return None


class SourceConfigClient:
    """Delivers the source config to `on_config`, from one daemon thread, and keeps it fresh.

    With `options.source_config` (a dict or a JSON file) that is the config, delivered once.
    Otherwise it is fetched from `{control_plane_url}/sourceConfig/` with retries, backoff
    and jitter, then refreshed every `config_refresh_interval` seconds with `If-None-Match`.
    Each good control-plane document is cached on disk (0600, named by a salted, slow hash
    of the write key); when the control plane cannot be reached at start the cache is
    delivered instead, and with no cache `on_unavailable(reason)` is called, once.
    Refreshing goes on, so an outage ends without user action (LESSONS R24.2).

    `on_config(config, origin)` is called from the config thread when the config or its
    origin changes; once `stop()` was called nothing is called any more (a call already
    running may finish). Nothing here raises into the caller.
    """

    def __init__(
        self,
        options: ClientOptions,
        on_config: Callable[[SourceConfig, ConfigOrigin], None],
        on_unavailable: Callable[[str], None],
    ) -> None:
        self._options = options
        self._on_config = on_config
        self._on_unavailable = on_unavailable
        # Besides the transport's auth header, the key is read here: for this request's
        # header and for the cache file's name (a PBKDF2 hash of it, never the key itself).
        self._write_key = options.write_key.get_secret_value()
        self._token = base64.b64encode(f"{self._write_key}:".encode()).decode()
        for secret in (self._write_key, self._token, *_proxy_passwords(options.proxies)):
            register_secret(secret)
        self._cache_file: Path | None = None
        self._cache_file_known = False
        self._cache_warned = False
        # What was delivered, and the ETag that names it (written by the config thread only).
        self._config: SourceConfig | None = None
        self._origin: ConfigOrigin | None = None
        self._etag: str | None = None
        # Digests of the last good and the last unusable body: identical bodies from a server
        # without ETags are neither parsed nor reported again.
        self._good_digest: bytes | None = None
        self._bad_digest: bytes | None = None
        self._unavailable_reason: str | None = None  # what on_unavailable was told, if it was
        self._failures = 0  # the current streak of failed fetches, for rate-limited logs
        self._unusable = 0  # unusable documents since the last good one, likewise
        self._stopped = False
        self._reset_machinery()

    def _reset_machinery(self) -> None:
        """Fresh lock, stop event and thread: at construction and in a forked child."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if self._stopped:
            self._stop.set()  # a client stopped before the fork stays stopped
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"SourceConfigClient(control_plane_url={self._options.control_plane_url!r})"

    @property
    def etag(self) -> str | None:
        """The ETag of the current config (None before one arrived, or without ETags)."""
        return self._etag

    def cache_path(self) -> Path | None:
        """The cache file for this write key; None when there is no control plane to cache."""
        if not self._cache_file_known:
            self._cache_file = self._compute_cache_path()
            self._cache_file_known = True
        return self._cache_file

    def _compute_cache_path(self) -> Path | None:
        if self._options.source_config is not None or not self._options.control_plane_url:
            return None
        directory = self._options.config_cache_path or _default_cache_dir()
        if directory is None:
            return None
        digest = hashlib.pbkdf2_hmac(
            "sha256", self._write_key.encode(), _CACHE_NAME_SALT, _CACHE_NAME_ITERATIONS, dklen=16
        )
        return Path(directory) / f"sourceconfig-{digest.hex()}.json"

    # -- lifecycle (the caller's thread) -----------------------------------------------------

    def start(self) -> None:
        """Start the config thread; later calls do nothing. Never raises."""
        try:
            if self._pid != os.getpid():
                self.after_fork()  # a fork no at-fork hook reported
            with self._lock:
                if self._stopped or self._thread is not None:
                    return
                if self._options.source_config is None and not self._options.control_plane_url:
                    logger.debug("no control_plane_url and no source_config: no source config")
                    return
                thread = threading.Thread(
                    target=self._run, args=(self._stop,), name=THREAD_NAME, daemon=True
                )
                thread.start()
                self._thread = thread
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            logger.debug("source config thread not started: the interpreter is exiting")
        except Exception:  # noqa: BLE001 - start() is called from Client(): it must not raise
            logger.exception("the source config thread could not be started")

    def stop(self, timeout: float) -> None:
        """Stop refreshing and wait up to `timeout` seconds for the thread. Never raises.

        A request in flight cannot be interrupted; the daemon thread then ends when the
        request does (the options' `timeout` bounds each read) and delivers nothing more.
        """
        try:
            self._stopped = True
            self._stop.set()
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(timeout, 0.0))
        except Exception:  # noqa: BLE001 - stop() runs in shutdown and at exit
            logger.debug("stopping the source config thread failed", exc_info=True)

    def after_fork(self) -> None:
        """In a forked child: the thread is gone and locks may be held by it.

        The last config and its ETag are kept (they are data, not machinery). The child's
        factory starts from nothing, so the next `start()` hands it the last outcome again
        at once (`on_config` with the same origin, or `on_unavailable`), with no request,
        and then refreshes with a conditional request as the parent did.
        """
        self._reset_machinery()

    # -- the config thread ---------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        source_config = self._options.source_config
        # An outcome before the first run is one a forked child inherited.
        inherited = self._config is not None or self._unavailable_reason is not None
        if inherited:
            self._guard(lambda: self._replay(stop))
        if source_config is not None:
            if not inherited:
                self._guard(lambda: self._load_given(source_config, stop))
            return
        try:
            fetcher = _Fetcher(self._options, self._token)
        except Exception:  # noqa: BLE001 - the thread's boundary: log, never die silently
            logger.exception("cannot prepare the sourceConfig request")
            self._report_unavailable("the sourceConfig request cannot be prepared", stop)
            return
        try:
            if not inherited:
                fetched = self._guard(lambda: self._initial_fetch(fetcher, stop))
                if not fetched and self._config is None:
                    self._give_up("an internal error", None, stop, unreachable=False)
            interval = self._options.config_refresh_interval
            while not stop.wait(interval):
                self._guard(lambda: self._refresh(fetcher, stop))
        finally:
            fetcher.close()

    def _replay(self, stop: threading.Event) -> None:
        """Tell a forked child's factory what the parent's knew."""
        if self._config is not None and self._origin is not None:
            self._deliver(self._config, self._origin, stop)
        elif self._unavailable_reason is not None:
            reason, self._unavailable_reason = self._unavailable_reason, None
            self._report_unavailable(reason, stop)

    def _guard(self, work: Callable[[], None]) -> bool:
        """Run one unit of work; an exception is logged and the thread goes on."""
        try:
            work()
        except Exception:  # noqa: BLE001 - a config thread that dies silently is the worst bug
            logger.exception("unexpected error in the source config thread; it goes on")
            return False
        return True

    def _load_given(self, given: dict[str, Any] | Path, stop: threading.Event) -> None:
        """source_config=: a dict, or a JSON file read once."""
        origin: ConfigOrigin = "dict" if isinstance(given, dict) else "file"
        try:
            if isinstance(given, dict):
                config = SourceConfig.parse(given)
            else:
                config = SourceConfig.parse(self._read_file(Path(given)))
        except SourceConfigError as exc:
            where = "" if isinstance(given, dict) else f" (file {given})"
            self._report_unavailable(f"source_config{where}: {exc}", stop)
            return
        self._deliver(config, origin, stop)

    @staticmethod
    def _read_file(path: Path) -> bytes:
        try:
            size = path.stat().st_size
            if size > MAX_DOCUMENT_BYTES:
                raise SourceConfigError(
                    f"the file is {size} bytes, over the limit of {MAX_DOCUMENT_BYTES}"
                )
            return path.read_bytes()
        except OSError as exc:
            raise SourceConfigError(f"cannot read the file ({type(exc).__name__})") from None

    def _initial_fetch(self, fetcher: _Fetcher, stop: threading.Event) -> None:
        """Up to INITIAL_ATTEMPTS GETs with backoff; then the cache, or on_unavailable."""
        cached = self._read_cache()
        # The cache's ETag makes the first request conditional: a 304 confirms the cache.
        etag = cached.etag if cached is not None else None
        waits: Iterator[float] | None = None
        problem = ""
        unreachable = False  # True when the last failure was one a retry might fix
        for attempt in range(1, INITIAL_ATTEMPTS + 1):
            answer = fetcher.get(etag, stop)
            if stop.is_set():
                return
            if answer.status == 304 and cached is not None:
                self._etag = cached.etag
                self._finish_failure_streak()
                self._deliver(cached.config, "control_plane", stop)
                return
            if answer.body is not None:
                if self._handle_document(answer, stop):
                    return
                problem = "the control plane sent an invalid sourceConfig"
                break  # the same document would come again: no retry
            problem = answer.problem or f"unexpected HTTP {answer.status}"
            unreachable = answer.retry
            self._failures += 1
            if not answer.retry or attempt == INITIAL_ATTEMPTS:
                break
            if waits is None:
                waits = _backoff_waits()
            delay = next(waits)
            if answer.retry_after is not None:
                delay = max(delay, min(answer.retry_after, BACKOFF_CAP))
            logger.debug(
                "sourceConfig fetch failed (%s); attempt %d of %d in %.2f s",
                problem,
                attempt + 1,
                INITIAL_ATTEMPTS,
                delay,
            )
            if stop.wait(delay):
                return
        self._give_up(problem, cached, stop, unreachable=unreachable)

    def _give_up(
        self, problem: str, cached: _Cached | None, stop: threading.Event, *, unreachable: bool
    ) -> None:
        """The first fetch failed: deliver the cache, or report that there is no config."""
        if cached is not None:
            logger.info(
                "the control plane is %s (%s); using the cached sourceConfig (%s)",
                "unreachable" if unreachable else "not usable",
                problem,
                cached.config.summary(),
            )
            self._etag = cached.etag
            self._deliver(cached.config, "cache", stop)
            return
        logger.info("sourceConfig fetch gave up (%s); refreshing goes on", problem)
        if unreachable:
            reason = "control plane unreachable and no cached config"
        elif problem.startswith("HTTP "):
            reason = f"the control plane answered {problem} and there is no cached config"
        else:
            reason = f"{problem} and there is no cached config"
        self._report_unavailable(reason, stop)

    def _refresh(self, fetcher: _Fetcher, stop: threading.Event) -> None:
        """One conditional GET: 304 or the same document change nothing."""
        answer = fetcher.get(self._etag if self._config is not None else None, stop)
        if stop.is_set():
            return
        if answer.status == 304 and self._config is not None:
            self._finish_failure_streak()
            if self._origin != "control_plane":
                self._deliver(self._config, "control_plane", stop)  # the cache is confirmed
            return
        if answer.body is not None:
            self._handle_document(answer, stop)
            return
        self._refresh_failed(answer.problem or f"unexpected HTTP {answer.status}")

    def _handle_document(self, answer: _Answer, stop: threading.Event) -> bool:
        """A 2xx body: parse, cache and deliver it. False when it is not a usable config."""
        assert answer.body is not None  # guaranteed by the callers
        digest = hashlib.sha256(answer.body).digest()
        if digest == self._bad_digest:
            return False  # the same unusable document again (no ETags): warned already
        if digest == self._good_digest and self._origin == "control_plane":
            self._etag = answer.etag or self._etag  # the same document (a server without ETags)
            self._finish_failure_streak()
            return True
        try:
            document = _load_document(answer.body)
            config = SourceConfig._from_document(document)
        except SourceConfigError as exc:
            self._bad_digest = digest
            self._unusable += 1  # a server sending new junk each time: one WARNING a streak
            log = logger.warning if self._unusable == 1 else logger.debug
            keeping = "keeping the current config" if self._config else "no config yet"
            log("the control plane sent an unusable document (%s); %s", exc, keeping)
            return False
        self._good_digest, self._bad_digest = digest, None
        self._unusable = 0
        self._finish_failure_streak()
        self._etag = answer.etag
        self._write_cache(_without_write_key(document), answer.etag)
        if config == self._config and self._origin == "control_plane":
            logger.debug("sourceConfig unchanged (%s)", config.summary())
            return True
        logger.info("sourceConfig from the control plane: %s", config.summary())
        self._deliver(config, "control_plane", stop)
        return True

    def _refresh_failed(self, problem: str) -> None:
        # One WARNING per failure streak (a failed first fetch starts one): a long outage
        # must not write a line per interval.
        self._failures += 1
        if self._failures == 1:
            logger.warning(
                "sourceConfig refresh failed (%s); %s, retrying every %g s",
                problem,
                "keeping the current config" if self._config else "still no config",
                self._options.config_refresh_interval,
            )
        else:
            logger.debug("sourceConfig refresh failed again (%s)", problem)

    def _finish_failure_streak(self) -> None:
        if self._failures:
            logger.info("the control plane answers again (%d failed attempts)", self._failures)
            self._failures = 0

    def _deliver(self, config: SourceConfig, origin: ConfigOrigin, stop: threading.Event) -> None:
        if stop.is_set():
            return  # nothing reaches the factory after stop()
        self._config, self._origin = config, origin
        try:
            self._on_config(config, origin)
        except Exception:  # noqa: BLE001 - the factory's bug must not end refreshing
            logger.exception("on_config raised; the source config thread goes on")

    def _report_unavailable(self, reason: str, stop: threading.Event) -> None:
        if stop.is_set() or self._unavailable_reason is not None:
            return  # once: the factory says "device mode stays off" once
        self._unavailable_reason = reason
        try:
            self._on_unavailable(reason)
        except Exception:  # noqa: BLE001 - as in _deliver
            logger.exception("on_unavailable raised; the source config thread goes on")

    # -- the cache -----------------------------------------------------------------------------

    def _read_cache(self) -> _Cached | None:
        """The last good config from disk; None when absent, unreadable or corrupt."""
        path = self.cache_path()
        if path is None:
            return None
        try:
            if path.stat().st_size > 2 * MAX_DOCUMENT_BYTES:  # JSON-in-JSON grows a little
                raise SourceConfigError("the file is too large")
            entry = json.loads(path.read_bytes())
            if not isinstance(entry, dict) or entry.get("format") != _CACHE_FORMAT:
                raise SourceConfigError("not a sourceConfig cache file")
            etag, document = entry.get("etag"), entry.get("document")
            if not isinstance(document, dict) or not (etag is None or isinstance(etag, str)):
                raise SourceConfigError("not a sourceConfig cache file")
            config = SourceConfig._from_document(document)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError, SourceConfigError) as exc:
            # ValueError covers bad JSON; the type and our own message never quote values.
            why = str(exc) if isinstance(exc, SourceConfigError) else type(exc).__name__
            logger.warning("ignoring the sourceConfig cache %s (%s)", path, why)
            return None
        return _Cached(config, etag)

    def _write_cache(self, document: dict[str, Any], etag: str | None) -> None:
        """Atomically replace the cache file (0600: destination configs hold secrets)."""
        path = self.cache_path()
        if path is None:
            return
        data = json.dumps(
            {"format": _CACHE_FORMAT, "etag": etag, "document": document},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8", "surrogatepass")
        try:
            write_private(path, data)
        except OSError as exc:
            # The config works from memory; only the next start's fallback is lost.
            log = logger.debug if self._cache_warned else logger.warning
            self._cache_warned = True
            log("cannot write the sourceConfig cache in %s (%s); going on without it",
                path.parent, type(exc).__name__)  # fmt: skip
