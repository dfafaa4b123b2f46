"""A local data plane and control plane: the SDK end to end with no account and no network.

`DevServer` (a context manager; port 0 picks a free port) and `analytics-sdk serve` implement
DESIGN 8: `POST /v1/batch` and `/v1/<type>` with Basic-auth write keys from a workspace,
gzip bodies, the data plane's limits and status codes (each 4xx with a one-line reason),
dedupe by messageId, SQLite storage, `GET /sourceConfig/` with ETag, `GET /health`,
`GET /v1/events?limit=&type=&userId=`, a live line per event, and fault injection.
Standard library only.
"""

from analytics_sdk.devserver._protocol import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES
from analytics_sdk.devserver._server import DevServer, Faults
from analytics_sdk.devserver._store import EventStore
from analytics_sdk.devserver._workspace import DEFAULT_WRITE_KEY, Workspace, WorkspaceError

__all__ = [
    "DEFAULT_WRITE_KEY",
    "MAX_MESSAGE_BYTES",
    "MAX_REQUEST_BYTES",
    "DevServer",
    "EventStore",
    "Faults",
    "Workspace",
    "WorkspaceError",
]
