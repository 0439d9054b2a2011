"""A TCP relay the tests put between a client and a server they started, counting the bytes the
server sends back: what a client really fetched (headers, bodies, and any bytes a ranged read
fetched beyond what it returned), measured on the wire instead of trusted from the client."""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["Wiretap"]

_CHUNK = 64 * 1024


class Wiretap:
    """Listens on a free port of 127.0.0.1 and relays every connection to ``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._received = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="wiretap-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def take_received_bytes(self) -> int:
        """The bytes the server sent since the last call (then counted from zero again)."""
        with self._lock:
            received, self._received = self._received, 0
        return received

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, count: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(_CHUNK):
                if count:
                    with self._lock:
                        self._received += len(data)
                target.sendall(data)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
