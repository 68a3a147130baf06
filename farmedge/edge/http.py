"""``/healthz`` and ``/metrics`` of the edge service (aiohttp)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from .app import EdgeService

__all__ = ["start_http"]


async def start_http(service: EdgeService, host: str, port: int) -> tuple[web.AppRunner, int]:
    async def healthz(request: web.Request) -> web.Response:
        h = service.health()
        status = "ok" if h.ok else "unhealthy" if h.reasons else "degraded"
        body = {"status": status, "reasons": [*h.reasons, *h.degraded], **h.details}
        return web.json_response(body, status=200 if h.ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        data = generate_latest(service.metrics.registry)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # The port actually bound, when port was 0.
    addresses: list[Any] = runner.addresses
    bound = int(addresses[0][1]) if addresses else port
    return runner, bound
