"""Run a palign server inside the current process, e.g. as a real endpoint in tests.

>>> from palign.serve import create_app
>>> from palign.serve.testing import serve_in_thread
>>> with serve_in_thread(create_app(lm, adapters=[folder])) as base_url:
...     client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from palign.errors import PalignError

__all__ = ["serve_in_thread"]


@contextmanager
def serve_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yields ``http://host:port/v1``.

    Args:
        app: an ASGI app (:func:`palign.serve.create_app`).
        host: interface to bind (loopback by default).
        port: port (0: a free one, chosen by the OS, no race).
        timeout: seconds to wait for start-up.

    The server (and the app's engine) is shut down when the block ends.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > timeout:
            server.should_exit = True
            sock.close()
            raise PalignError(f"the test server did not start within {timeout:g} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
