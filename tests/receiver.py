"""A webhook receiver of the tests' (and benchmarks') own: an HTTP server on a free port in a thread.

No pytest here: ``bench/`` uses it too.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.procs import free_port

__all__ = ["Receiver"]


class Receiver:
    """Records every delivery (headers, body, status answered: -1 while it hangs).

    ``fail_first``: answer 500 to the first N deliveries of each webhook-id, then 200; ``hang``:
    never answer (until :meth:`close`); ``reply``: the body of a 200 answer; ``port``: listen there
    (a receiver back up at the address of one that was down) instead of on a free port.
    """

    def __init__(self, *, fail_first: int = 0, hang: bool = False, reply: bytes = b"", port: int | None = None) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes, int]] = []
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {key.lower(): value for key, value in self.headers.items()}
                with receiver.lock:
                    seen = receiver.attempts.get(headers.get("webhook-id", ""), 0)
                    receiver.attempts[headers.get("webhook-id", "")] = seen + 1
                    status = 500 if seen < fail_first else 200
                    receiver.deliveries.append((headers, body, -1 if hang else status))
                if hang:
                    receiver.release.wait(120)
                    return
                answer = reply if status == 200 else b""
                self.send_response(status)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.server.daemon_threads = False  # server_close() joins them: no socket is left to the GC
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answered(self) -> dict[str, bytes]:
        """webhook-id -> body of every delivery answered 200."""
        with self.lock:
            return {h["webhook-id"]: body for h, body, status in self.deliveries if status == 200}

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
