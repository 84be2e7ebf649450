"""HTTP endpoints: ``/metrics`` (Prometheus text, or OpenMetrics with exemplars), ``/healthz`` (the loop
runs), ``/readyz`` (taking commands), and ``/webhook`` (LiveKit webhooks, verified with livekit-api's
``WebhookReceiver``); ``mount`` adds more on the same port (``dev`` mounts its console)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from livekit.api import WebhookReceiver
from livekit.protocol.webhook import WebhookEvent
from prometheus_client.exposition import choose_encoder

from livekit_signaling.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

WebhookCallback = Callable[[WebhookEvent], Awaitable[None]]
#: Adds routes (and start-up/clean-up hooks) to the application before it starts.
Mount = Callable[[web.Application], None]


class HttpServer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        metrics: Metrics,
        is_ready: Callable[[], bool],
        describe: Callable[[], str],
        webhook_receiver: WebhookReceiver,
        on_webhook: WebhookCallback,
        before_scrape: Callable[[], Awaitable[None]],
    ) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._is_ready = is_ready
        self._describe = describe
        self._receiver = webhook_receiver
        self._on_webhook = on_webhook
        self._before_scrape = before_scrape
        self._runner: web.AppRunner | None = None
        self._mounts: list[Mount] = []
        self.port: int | None = None

    def mount(self, install: Mount) -> None:
        """Serve more on this port; call before ``start``."""
        self._mounts.append(install)

    async def start(self) -> None:
        app = web.Application(client_max_size=1024 * 1024)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_post("/webhook", self._webhook)
        for install in self._mounts:
            install(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics_page(self, request: web.Request) -> web.Response:
        """Prometheus text, or OpenMetrics when the scraper asks for it (``Accept``): only OpenMetrics
        carries the latency histograms' exemplars (the trace of a command in that bucket)."""
        await self._before_scrape()
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self._metrics.registry), headers={"Content-Type": content_type})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self._is_ready():
            return web.Response(text=f"ready\n{self._describe()}")
        return web.Response(status=503, text=f"not ready\n{self._describe()}")

    async def _webhook(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event = self._receiver.receive(body, request.headers.get("Authorization", ""))
        except Exception as error:  # livekit-api raises plain Exception for a hash mismatch
            # The reason is ours to log; the caller learns only that it was refused.
            log.warning("webhook refused: %s", type(error).__name__)
            self._metrics.webhooks.labels("unknown", "rejected").inc()
            return web.Response(status=401, text="invalid webhook signature\n")
        await self._on_webhook(event)
        return web.Response(text="ok\n")
