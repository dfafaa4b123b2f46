"""The Redis destination's settings, as RudderStack's control plane sends them."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from analytics_sdk.integration import IntegrationOptions

__all__ = ["RedisOptions", "parse_address"]

DEFAULT_PORT = 6379
MAX_PREFIX = 100  # characters, as in the control plane's form
MAX_EVENTS_PER_USER = 100_000


def parse_address(address: str) -> list[tuple[str, int]]:
    """`"host:port, host2:port"` as (host, port) pairs; the port defaults to 6379.

    Raises ValueError with a message that never repeats the address (it may hold secrets
    pasted by mistake).
    """
    nodes = []
    for part in address.split(","):
        item = part.strip()
        if not item:
            raise ValueError("has an empty host:port entry")
        if "/" in item or "@" in item:
            raise ValueError("must be host:port entries; put a redis:// URL in url instead")
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else rest
        elif item.count(":") == 1:
            host, port_text = item.split(":")
        elif ":" in item:  # a bare IPv6 address, no port
            host, port_text = item, ""
        else:
            host, port_text = item, ""
        if not host or any(c.isspace() for c in host):
            raise ValueError("has an entry without a valid host")
        if not port_text:
            port = DEFAULT_PORT
        elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
            port = int(port_text)
        else:
            raise ValueError("has a port that is not a number from 1 to 65535")
        nodes.append((host, port))
    return nodes


class RedisOptions(IntegrationOptions):
    """RudderStack's Redis destination settings, plus the device-mode ones (see README)."""

    # Declared first: the validators of the fields after them read these.
    cluster_mode: bool = True  # clusterMode; RudderStack's default (a missing key means true)
    secure: bool = False  # TLS
    skip_verify: bool = False  # skipVerify: TLS without checking the server certificate
    ca_certificate: SecretStr | None = None  # caCertificate: PEM text of the CA to trust
    url: SecretStr | None = None  # redis:// or rediss://; overrides address (may hold a password)
    address: str | None = Field(default=None, validate_default=True)  # "host:port"
    password: SecretStr | None = None
    database: int = 0  # the control plane sends it as a string; standalone only
    prefix: str = Field(default="", max_length=MAX_PREFIX)
    track_events: bool = False  # device mode only: keep each user's latest track events
    max_events_per_user: int = Field(default=100, ge=1, le=MAX_EVENTS_PER_USER)
    socket_timeout: float = Field(default=5.0, gt=0, le=60)  # seconds per reply
    socket_connect_timeout: float = Field(default=5.0, gt=0, le=60)  # seconds per connect
    max_retries: int = Field(default=2, ge=0, le=10)  # after a connection error or timeout

    @field_validator("ca_certificate", "password", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value  # the control plane sends "" for "not set"

    @field_validator("url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value.get_secret_value())
            parts.port  # noqa: B018 - raises ValueError on a port out of range
        except ValueError:
            raise ValueError("must be a redis:// or rediss:// URL with a valid port") from None
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError("must be a redis:// or rediss:// URL with a host")
        if info.data.get("secure") and parts.scheme == "redis":
            raise ValueError("is redis:// but secure is true: use a rediss:// URL for TLS")
        if info.data.get("cluster_mode"):
            db = parse_qs(parts.query).get("db", [parts.path.strip("/") or "0"])[0]
            if db not in ("", "0"):
                raise ValueError("selects a database; Redis Cluster has only database 0")
        return value

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            if "url" in info.data and info.data["url"] is None:
                raise ValueError("is required (host:port), unless url is set")
            return None
        nodes = parse_address(value)
        if len(nodes) > 1 and not info.data.get("cluster_mode"):
            raise ValueError("lists several hosts, which needs clusterMode: true")
        return value.strip()

    @field_validator("database", mode="before")
    @classmethod
    def _database_number(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return 0
        if isinstance(value, str):
            text = value.strip()
            if not text.isdigit():
                raise ValueError("must be a database number from 0 to 2147483647")
            return int(text)
        return value

    @field_validator("database")
    @classmethod
    def _database_range(cls, value: int) -> int:
        if not 0 <= value <= 2**31 - 1:
            raise ValueError("must be a database number from 0 to 2147483647")
        return value

    @field_validator("prefix")
    @classmethod
    def _trimmed(cls, value: str) -> str:
        return value.strip()  # as RudderStack does before adding the ":"
