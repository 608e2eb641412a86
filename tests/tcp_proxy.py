"""A TCP proxy in front of the tests' S3 endpoint (moto) for the S3 end-to-end tests: it
forwards both ways, byte for byte, notes every request line it sees, and lets a subclass change
or cut what goes through, so a test can break a transfer at a chosen moment. Each connection is
served by one thread with a selector, so no socket is shared between threads."""
from __future__ import annotations

import re
import selectors
import socket
import struct
import threading

REQUEST_LINE = re.compile(rb"(GET|PUT|POST|DELETE|HEAD) (/\S*) HTTP/1\.1\r\n")
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with a reset, at once


def reset(*sockets: socket.socket) -> None:
    """Make closing these sockets send a reset, not an orderly FIN."""
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)


class Connection:
    """One client connection as the proxy follows it."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        self.carry = b""            # the tail of the last read: a request line may span reads
        self.sent = 0               # request bytes forwarded so far
        self.current = ("", "")     # the last request seen: (method, target)
        self.answered = 0           # bytes of the answer to it so far


class ForwardingProxy:
    """Forwards every connection to the target port unchanged; `from_client` and `from_server`
    may change a chunk, or return None to end the connection there."""

    def __init__(self, target_port: int, port: int = 0):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.gone = False
        self.sockets: set[socket.socket] = set()
        self.requests: list[tuple[str, str]] = []  # (method, target), in the order seen
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # the listener was closed: stop
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> bool:
        """Note a socket to reset if the proxy goes; one that comes too late is reset now."""
        with self.lock:
            if self.gone:
                reset(sock)
                sock.close()
                return False
            self.sockets.add(sock)
            return True

    def _serve(self, client: socket.socket) -> None:
        if not self._track(client):
            return
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        if not self._track(upstream):
            client.close()
            return
        self._forward(self.new_connection(client, upstream))

    def new_connection(self, client: socket.socket, upstream: socket.socket) -> Connection:
        return Connection(client, upstream)

    def _forward(self, conn: Connection) -> None:
        selector = selectors.DefaultSelector()
        selector.register(conn.client, selectors.EVENT_READ, conn.upstream)
        selector.register(conn.upstream, selectors.EVENT_READ, conn.client)
        try:
            while not self.gone:
                for key, _ in selector.select():
                    source, sink = key.fileobj, key.data
                    data = source.recv(1 << 16)
                    if not data or self.gone:
                        return
                    if source is conn.client:
                        data = self.from_client(conn, data)
                    else:
                        data = self.from_server(conn, data)
                    if data is None:
                        return
                    sink.sendall(data)
        except OSError:
            return
        finally:
            selector.close()
            for sock in (conn.client, conn.upstream):
                with self.lock:
                    self.sockets.discard(sock)
                sock.close()

    def request_lines(self, conn: Connection, data: bytes) -> list[tuple[str, str]]:
        """The request lines that begin in `data`, noted in self.requests. A request line split
        between two reads is found in carry + data; one wholly inside the carry was counted
        already."""
        window = conn.carry + data
        found = [(m.group(1).decode(), m.group(2).decode())
                 for m in REQUEST_LINE.finditer(window) if m.end() > len(conn.carry)]
        conn.carry = window[-512:]
        with self.lock:
            self.requests += found
        return found

    def from_client(self, conn: Connection, data: bytes) -> bytes | None:
        self.request_lines(conn, data)
        return data

    def from_server(self, conn: Connection, data: bytes) -> bytes | None:
        return data

    def close(self) -> None:
        with self.lock:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
            self.listener.close()
        self.accepter.join(timeout=10)
