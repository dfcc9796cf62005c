"""HTTP health endpoint for Kubernetes probes (``--health-server-address``).

* ``GET /healthz`` (liveness): 200 while the agent's event loop has turned within the last
  ``stale_after`` seconds, else 503 — a wedged loop gets the pod restarted.
* ``GET /readyz`` (readiness): 200 once the sensors are attached and the cache is seeded.

Both answer a small JSON body saying why.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger("lanner.health")


class HealthServer:
    def __init__(self, address: str, last_loop: Callable[[], float], ready: Callable[[], bool],
                 stale_after: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        try:
            port_n = int(port)
        except ValueError:
            raise ValueError(f"--health-server-address: {address!r} is not [ADDR]:PORT") from None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                code, body = owner.answer(self.path)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("health: " + fmt, *args)

        self._last_loop = last_loop
        self._ready = ready
        self.stale_after = stale_after
        try:
            self._server = ThreadingHTTPServer((host or "0.0.0.0", port_n), Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"--health-server-address {address}: {exc.strerror}") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.address = f"{host or '0.0.0.0'}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="lanner-health", daemon=True)
        self._thread.start()

    def answer(self, path: str) -> tuple[int, dict]:
        age = time.monotonic() - self._last_loop()
        if path.startswith("/healthz"):
            ok = age <= self.stale_after
            return (200 if ok else 503), {"status": "ok" if ok else "stalled", "event_loop_age_s": round(age, 3)}
        if path.startswith("/readyz"):
            ok = self._ready()
            return (200 if ok else 503), {"status": "ready" if ok else "starting"}
        return 404, {"error": f"no such endpoint {path}; try /healthz or /readyz"}

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
