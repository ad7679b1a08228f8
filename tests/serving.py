"""A pylfm server running in a thread of the test process, for tests that talk HTTP to it."""

from __future__ import annotations

import socket
import threading
import time
from typing import Optional

import httpx


class Serving:
    """Runs ``app`` with uvicorn on a free loopback port in a background thread.
    ``key``: the API key the app was built with (None: no key)."""

    key: Optional[str] = None

    def __init__(self, app, key: Optional[str] = None) -> None:
        import uvicorn

        if key is not None:
            self.key = key
        # IPPROTO_TCP, as uvicorn's own sockets: asyncio sets TCP_NODELAY only on sockets that
        # say they are TCP; without it every keep-alive answer waited ~40 ms (Nagle + delayed ACK).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "Serving":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def client(self, key: Optional[str] = None, **kw):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or self.key or "none", max_retries=0, **kw)

    def health(self) -> dict:
        return httpx.get(self.url + "/health").json()

    def wait_idle(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            q = self.health()["queue"]
            if q["admitted"] == 0 and q["decoding"] == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"requests still in flight: {self.health()}")
