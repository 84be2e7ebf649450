"""The service in the test's own process, on an event loop of its own in a background thread, as
``livekit-signaling run`` wires it (``SignalingService``): what a test that counts the service's own work
uses (the asyncio tasks it creates, through a counting task factory on that loop; the test's clients,
on the test's loop, are not counted)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Coroutine, Generator, Mapping
from contextvars import Context
from typing import Any

from prometheus_client import CollectorRegistry

from livekit_signaling.app.service import SignalingService
from livekit_signaling.app.settings import load_settings


class TaskCounter:
    """A task factory that counts the tasks created on its loop, by the qualified name of their
    coroutine (where they come from)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: Counter[str] = Counter()

    def __call__(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        context: Context | None = None,
    ) -> asyncio.Task[Any]:
        with self._lock:
            self._by_name[getattr(coro, "__qualname__", type(coro).__name__)] += 1
        return asyncio.Task(coro, loop=loop, context=context)

    def snapshot(self) -> Counter[str]:
        """The tasks created so far, by name (read from any thread)."""
        with self._lock:
            return Counter(self._by_name)


class InProcessService:
    """``start()`` runs the service with the settings ``environ`` until ``stop()``; ``tasks`` counts
    the asyncio tasks created on its loop."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.settings = load_settings(environ)
        self.tasks = TaskCounter()
        self.service: SignalingService | None = None
        self._loop = asyncio.new_event_loop()
        self._loop.set_task_factory(self.tasks)
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="in-process-service", daemon=True)

    def _main(self) -> None:
        try:
            self._loop.run_until_complete(self._run())
        except BaseException as error:  # reported by start() or stop()
            self._failure = error
            self._ready.set()
        finally:
            self._loop.close()

    async def _run(self) -> None:
        self.service = SignalingService(self.settings, registry=CollectorRegistry())
        running = asyncio.ensure_future(self.service.run(self._stop))
        for _ in range(1000):  # start() gives up first
            if self.service.is_ready() or running.done():
                break
            await asyncio.sleep(0.02)
        self._ready.set()
        await running

    def start(self, timeout: float = 20.0) -> InProcessService:
        self._thread.start()
        if not self._ready.wait(timeout) or self._failure is not None:
            raise RuntimeError(f"the service did not become ready: {self._failure!r}")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)
        if self._failure is not None:
            raise RuntimeError("the service failed") from self._failure

    def __enter__(self) -> InProcessService:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
