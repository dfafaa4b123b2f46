"""A Flask app that tracks one event per request and flushes when the process exits.

    pip install flask
    ANALYTICS_SDK_WRITE_KEY=... ANALYTICS_SDK_DATA_PLANE_URL=... flask --app examples/flask_app run

Without ANALYTICS_SDK_DATA_PLANE_URL, `python examples/flask_app.py` starts the embedded dev
server and serves on 127.0.0.1:5000. The client is created once per process, never per
request; track() only queues (microseconds), the network is the client's background thread's
business, and the exit flush delivers what is still queued (also under gunicorn: after a
fork, the client starts a fresh delivery thread in each worker).
"""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, Response, g, request

from analytics_sdk import Client


def create_app(client: Client) -> Flask:
    app = Flask(__name__)

    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def track_request(response: Response) -> Response:
        user = request.headers.get("X-User-Id")  # your auth layer's user id
        client.track(
            user_id=user,
            anonymous_id=None if user else request.headers.get("X-Anonymous-Id", "web-visitor"),
            event="API Request",
            properties={
                "method": request.method,
                "path": request.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - g.started) * 1000, 2),
            },
            context={"ip": request.remote_addr, "userAgent": request.user_agent.string},
        )
        return response

    @app.get("/")
    def home() -> dict[str, Any]:
        return {"hello": "world"}

    @app.post("/signup")
    def signup() -> tuple[dict[str, Any], int]:
        payload = request.get_json(silent=True) or {}
        user_id = str(payload.get("email", "anonymous"))
        client.identify(user_id, {"email": payload.get("email"), "plan": "free"})
        return {"user": user_id}, 201

    return app


def main() -> None:
    import os

    from analytics_sdk.devserver import DevServer

    url = os.environ.get("ANALYTICS_SDK_DATA_PLANE_URL")
    server = None if url else DevServer(echo=None).start()
    client = Client(
        os.environ.get("ANALYTICS_SDK_WRITE_KEY", server.write_key if server else None),
        url or (server.url if server else None),
    )
    if server is not None:
        print(f"events go to the dev server at {server.url}: GET {server.url}/v1/events")
    try:
        create_app(client).run(host="127.0.0.1", port=5000)
    finally:
        client.shutdown()  # the atexit flush would do it too; explicit is clearer
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
