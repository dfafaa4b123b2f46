"""One batch -> one HTTP POST: requests.Session, Basic auth, gzip, retries, Retry-After."""

from __future__ import annotations

import base64
import gzip
import ipaddress
import math
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from analytics_sdk._logging import logger, mask_secrets, register_secret
from analytics_sdk._serialization import DEFAULT_TAIL, now_iso
from analytics_sdk._version import __version__
from analytics_sdk.errors import DeliveryError, Reason
from analytics_sdk.options import ClientOptions

USER_AGENT = f"analytics-sdk-python/{__version__}"
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))
BACKOFF_BASE = 0.5  # seconds before the first retry, before jitter
BACKOFF_CAP = 60.0  # seconds: the longest backoff step
MAX_RETRY_AFTER = 300.0  # seconds: a longer server hint is capped, not obeyed blindly
_GZIP_LEVEL = 1  # JSON batches shrink ~50x even at level 1, at a quarter of level 6's CPU
_BRACE = ord("}")
_BODY_SNIPPET = 200  # characters of a rejection's response text kept in the error
_HINTS = {
    401: " (is the write key right for this data plane?)",
    403: " (is the write key right, and its source enabled?)",
    404: " (is data_plane_url the data plane's base URL, without /v1/batch?)",
}
# Failures no retry can fix: a malformed URL, or a proxy scheme requests cannot speak
# (SOCKS without its extra raises InvalidSchema).
UNSENDABLE = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
)
# What a plain OSError (not a requests exception) from sending means: requests raises one
# for a `verify=` CA bundle or a `cert=` file it cannot find, before any connection.
UNREADABLE_TLS_FILES = "check verify= (a CA bundle file or directory) and cert="


class Transport:
    """Posts batches of serialized messages to `{data_plane_url}/v1/batch`.

    `send()` builds the body anew for every attempt (a fresh `sentAt` in the envelope and in
    each message; messageIds never change), retries 408/429/5xx and network errors with
    exponential backoff and full jitter, and raises `DeliveryError` when it gives up or
    the data plane refuses the batch. The caller decides what a 400 or 413 means for the
    messages (split, bisect, report).
    """

    def __init__(self, options: ClientOptions, stop: threading.Event) -> None:
        self._options = options
        self._stop = stop  # set when shutdown's budget is spent: abandon backoff waits
        self._url = f"{options.data_plane_url}/v1/batch"
        session, self._own_session, request_options = open_session(options, self._url)
        self._session = session
        # The write key is read here and only here; the header value stays in this object.
        key = options.write_key.get_secret_value()
        token = base64.b64encode(f"{key}:".encode()).decode()
        secrets = [key, token, *_proxy_passwords(options.proxies)]
        self._secrets = tuple(secret for secret in secrets if len(secret) >= 4)
        for secret in self._secrets:
            register_secret(secret)  # the log filter masks every form as a second defence
        headers = {
            "Authorization": f"Basic {token}",
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        if options.gzip:
            headers["Content-Encoding"] = "gzip"
        self._send_options: dict[str, Any] = {
            **request_options,
            "stream": False,
            "allow_redirects": False,  # a redirected POST would be replayed as a GET
        }
        # One prepared request, copied per batch: preparing one costs more than sending it.
        self._prepared = session.prepare_request(
            requests.Request("POST", self._url, headers=headers)
        )
        if self._own_session:
            # Our session has no hooks and needs no cookie jar: its adapter sends directly
            # (Session.send's cookie bookkeeping is a fifth of a batch's CPU). A caller's
            # session keeps Session.send, hooks and all.
            self._adapter_send: Any = session.get_adapter(self._url).send
            del self._send_options["allow_redirects"]  # adapters never follow redirects
        self.retries = 0  # attempts after the first, for stats(); written by one thread

    def __repr__(self) -> str:
        return f"Transport(url={self._url!r})"

    def close(self) -> None:
        if self._own_session:
            self._session.close()

    def send(self, messages: Sequence[bytes]) -> None:
        """Deliver `messages` in one request, retrying what may succeed later.

        Raises:
            DeliveryError: `retries_exhausted` (408/429/5xx/network, after max_retries),
                `rejected_4xx` with the status (400/413 included: the caller splits), or
                `shutdown` when shutdown's budget ran out during a backoff wait.
        """
        waits: Iterator[float] | None = None  # made at the first failure
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._post(messages)
            except UNSENDABLE as exc:
                # The type only: requests' text can quote a proxy URL with its password.
                raise DeliveryError(
                    f"the request cannot be made ({type(exc).__name__}); "
                    "check data_plane_url and proxies",
                    reason=Reason.REQUEST_ERROR,
                    count=len(messages),
                ) from None
            except requests.RequestException as exc:  # resets, timeouts, broken reads
                status, hint, problem = None, None, network_problem(exc)
            except OSError as exc:  # after RequestException, which is an OSError too
                raise DeliveryError(
                    f"the request cannot be made ({type(exc).__name__}: "
                    f"{self._mask(str(exc))}); {UNREADABLE_TLS_FILES}",
                    reason=Reason.REQUEST_ERROR,
                    count=len(messages),
                ) from None
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return
                if status not in RETRY_STATUSES:
                    raise DeliveryError(
                        f"data plane answered HTTP {status}: {self._snippet(response)}"
                        + _HINTS.get(status, ""),
                        reason=Reason.REJECTED_4XX,
                        status=status,
                        count=len(messages),
                    )
                hint = retry_after_seconds(response.headers.get("Retry-After"))
                problem = f"HTTP {status}"
            if attempt > self._options.max_retries:
                raise DeliveryError(
                    f"gave up after {attempt} attempts; last failure: {problem}",
                    reason=Reason.RETRIES_EXHAUSTED,
                    status=status,
                    count=len(messages),
                )
            if waits is None:
                waits = _backoff_waits()
            delay = next(waits)
            if hint is not None:
                delay = min(max(delay, hint), MAX_RETRY_AFTER)
            logger.debug(
                "batch of %d failed (%s); retry %d in %.2f s",
                len(messages),
                problem,
                attempt,
                delay,
            )
            self.retries += 1
            if self._stop.wait(delay):
                raise DeliveryError(
                    f"shutdown began while retrying after {problem}",
                    reason=Reason.SHUTDOWN,
                    status=status,
                    count=len(messages),
                )

    def _snippet(self, response: requests.Response) -> str:
        """The start of the server's answer, with our secrets masked (servers echo them)."""
        text = self._mask((response.text or "").strip().replace("\n", " "))
        if len(text) > _BODY_SNIPPET:
            return text[:_BODY_SNIPPET] + "..."
        return text or "(no body)"

    def _mask(self, text: str) -> str:
        """Our key and token, and every secret registered (destinations' keys), masked."""
        for secret in self._secrets:
            text = text.replace(secret, "**********")
        return mask_secrets(text)

    def _post(self, messages: Sequence[bytes]) -> requests.Response:
        body = build_body(messages, now_iso().encode())
        if self._options.gzip:
            body = gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0)
        request = self._prepared.copy()
        request.body = body
        request.headers["Content-Length"] = str(len(body))
        if self._own_session:
            response: requests.Response = self._adapter_send(request, **self._send_options)
            response.content  # noqa: B018 - read it all: that returns the connection to the pool
        else:
            response = self._session.send(request, **self._send_options)
        return response


def open_session(options: ClientOptions, url: str) -> tuple[requests.Session, bool, dict[str, Any]]:
    """The session to use (the caller's, or a new one of ours), whether it is ours, and the
    per-request options: timeout, proxies, verify, cert.

    HTTP(S)_PROXY, NO_PROXY and REQUESTS_CA_BUNDLE are read once, here. Per request,
    requests would read the environment and stat ~/.netrc again (a third of its CPU per
    batch), and a .netrc entry for the host would replace our Authorization header.
    """
    own = options.session is None
    session: requests.Session = options.session or requests.Session()
    settings = session.merge_environment_settings(
        url, options.proxies or {}, False, options.verify, None
    )
    if own:
        session.trust_env = False
    request_options = {
        "timeout": options.timeout,
        "proxies": settings["proxies"],
        "verify": settings["verify"],
        "cert": settings["cert"],
    }
    return session, own, request_options


def network_problem(exc: requests.RequestException) -> str:
    """Loggable text for a failed request: the exception's type, and for TLS what to do.

    Never the exception's text: requests quotes proxy URLs in it, passwords included.
    """
    problem = type(exc).__name__
    if isinstance(exc, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return (
                f"{problem}: the server's TLS certificate is not trusted (for a private CA, "
                "pass verify='/path/to/ca-bundle.pem')"
            )
        return f"{problem}: the TLS handshake failed"
    return problem


# -- plain http:// to another machine -------------------------------------------------------

_cleartext_warned: set[str] = set()  # hosts warned about, once per process
_cleartext_lock = threading.Lock()


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (IPv4-mapped too), from the text alone.

    No DNS: a name other than localhost counts as another machine, whatever it resolves to.
    """
    host = host.lower().removesuffix(".")
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True  # RFC 6761: every name under .localhost is this machine
    try:
        address = ipaddress.ip_address(host.partition("%")[0])  # fe80::1%eth0: zone dropped
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified  # 0.0.0.0: this machine too


def warn_if_cleartext(option: str, url: str | None) -> None:
    """Log a WARNING, once per process per host, when `url` is plain http:// to a host that
    is not this machine: the write key goes in every request's Authorization header.

    Called when a client is built and when the config fetcher starts (never in track()); it
    reads the URL's text only. Loopback URLs (the dev server, tests, a local sidecar) stay
    quiet. The host is named, never the URL: it may carry a user and password.
    """
    if not url:
        return
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return
    if parts.scheme.lower() != "http" or not host or is_loopback_host(host):
        return
    with _cleartext_lock:
        if host in _cleartext_warned:
            return
        _cleartext_warned.add(host)
    logger.warning(
        "%s is plain http:// to %s, another machine: the write key (sent with every request) "
        "and the events travel in clear text, readable by anyone on the network path; "
        "use https://",
        option,
        host,
    )


def build_body(messages: Sequence[bytes], sent_at: bytes) -> bytes:
    """`{"batch":[...],"sentAt":...}` with `sentAt` also inside each message.

    Each message is serialized JSON as queued: a whole object, or a compact one that lacks
    DEFAULT_TAIL (see _serialization.compact). `sentAt` goes in before the closing brace,
    so the queued bytes are never parsed again. The size is exactly what the consumer
    budgets: sum(wire_size(m) + MESSAGE_OVERHEAD_BYTES) - 1 + ENVELOPE_BYTES.
    """
    field = b',"sentAt":"' + sent_at + b'"}'
    with_tail = DEFAULT_TAIL[:-1] + field
    joined = b",".join([m[:-1] + field if m[-1] == _BRACE else m + with_tail for m in messages])
    return b"".join((b'{"batch":[', joined, b'],"sentAt":"', sent_at, b'"}'))


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or HTTP date); None if absent or junk."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if not math.isfinite(seconds):  # "inf", "nan", "1e999": junk, not a wait
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _proxy_passwords(proxies: dict[str, str] | None) -> list[str]:
    """Passwords in proxy URLs (http://user:secret@proxy:3128): secrets to mask."""
    found = []
    for url in (proxies or {}).values():
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            found.append(password)
    return found


def _backoff_waits() -> Iterator[float]:
    """Exponential steps from 0.5 s to a 60 s cap, each with full jitter (backoff's own).

    `backoff` is imported on the first retry only: it imports asyncio, which costs ~10 MB
    and ~30 ms that a healthy data plane never needs.
    """
    backoff = _load_backoff()
    steps = backoff.expo(base=2, factor=BACKOFF_BASE, max_value=BACKOFF_CAP)
    next(steps)  # backoff's generators are primed with one send(None) before use
    for step in steps:
        yield backoff.full_jitter(step)


# The delivery thread imports backoff lazily; a fork in the middle of that import would
# hand the child a half-initialized module. Fork takes this lock first, so it waits for
# the import to finish (the pattern of the at-fork "before" hooks in the stdlib).
_import_lock = threading.Lock()


def _load_backoff() -> Any:
    with _import_lock:
        import backoff

    return backoff


def _after_fork_in_child() -> None:
    global _cleartext_lock
    _import_lock.release()  # held by the forking thread: ours to release
    _cleartext_lock = threading.Lock()  # another thread may have held it: the child's own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_import_lock.acquire,
        after_in_parent=_import_lock.release,
        after_in_child=_after_fork_in_child,
    )
