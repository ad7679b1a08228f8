"""Stopping a request's work when its client goes away."""

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # asyncio is imported when the server is built
    import asyncio


class Client:
    """Whether a request's client is still there, and the job to stop when it leaves."""

    def __init__(self) -> None:
        self.gone = threading.Event()
        self._job: Any = None
        self._lock = threading.Lock()

    def attach(self, job: Any) -> None:
        with self._lock:
            self._job = job
        if self.gone.is_set():
            job.cancel()

    def leave(self) -> None:
        self.gone.set()
        with self._lock:
            job = self._job
        if job is not None:
            job.cancel()  # its windows stop at the engine's next step


def watch_disconnect(request: Any, client: Client, loop: "asyncio.AbstractEventLoop") -> "asyncio.Task":
    """A task that marks ``client`` gone when the client disconnects. Only start it once
    the request body has been read (it consumes the ASGI receive channel)."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                client.leave()
                return

    return loop.create_task(watch())
