"""A FastAPI app: one client for the app's lifetime, one event per request, flush at shutdown.

    pip install fastapi uvicorn
    ANALYTICS_SDK_WRITE_KEY=... ANALYTICS_SDK_DATA_PLANE_URL=... uvicorn examples.fastapi_app:app

The lifespan creates the client at startup and shuts it down (flushing within its timeout,
without blocking the event loop: `ashutdown` runs it in a thread) when the server stops.
Handlers call track() directly: it never blocks on the network, so it is safe in async code.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from analytics_sdk import Client


def create_app(make_client: Callable[[], Client] = Client) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.analytics = make_client()  # reads ANALYTICS_SDK_* by default
        try:
            yield
        finally:
            await app.state.analytics.ashutdown()

    app = FastAPI(lifespan=lifespan)

    @app.middleware("http")
    async def track_request(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        user = request.headers.get("x-user-id")
        request.app.state.analytics.track(
            user_id=user,
            anonymous_id=None if user else request.headers.get("x-anonymous-id", "api-visitor"),
            event="API Request",
            properties={
                "method": request.method,
                "path": request.url.path,
                "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return response

    @app.get("/")
    async def home() -> dict[str, Any]:
        return {"hello": "world"}

    @app.post("/orders/{order_id}/complete")
    async def complete(order_id: str, request: Request) -> dict[str, Any]:
        request.app.state.analytics.track(
            request.headers.get("x-user-id", "u-unknown"),
            "Order Completed",
            {"order_id": order_id, "revenue": 42.0, "currency": "EUR"},
        )
        return {"order": order_id, "status": "completed"}

    return app


app = create_app()
