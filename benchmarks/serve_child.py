"""A ``pylfm serve`` child process, for the benchmarks that measure the server from the
outside (load_server.py, realtime_latency.py, realtime_soak.py): its own memory, its own
CPU threads, a real HTTP/WebSocket port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import httpx


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@contextmanager
def serve_child(args: List[str], *, log: Optional[Path] = None, echo: bool = False, start_timeout: float = 300,
                headers: Optional[Dict[str, str]] = None) -> Iterator[Tuple[subprocess.Popen, str]]:
    """Starts ``pylfm serve <args>`` on a free port, waits until ``/health`` answers and
    yields (process, base URL); stops it (SIGINT, then kill) on the way out. Its output
    goes to ``log`` (a file), to this terminal with ``echo``, else nowhere: never to a pipe
    nobody reads, which fills up and stalls the server."""
    port = free_port()
    cmd = [sys.executable, "-m", "pylfm.cli", "serve", "--port", str(port), *args]
    out = open(log, "w") if log else None
    sink = out if out else (None if echo else subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT if out else sink)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                seen = f":\n{log.read_text()[-4000:]}" if log else " (see its log)"
                raise SystemExit(f"the server exited with status {proc.returncode}{seen}\n" + " ".join(cmd))
            try:
                if httpx.get(url + "/health", headers=headers or {}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not answer /health within {start_timeout:.0f} s")
            time.sleep(0.2)
        yield proc, url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out:
            out.close()
