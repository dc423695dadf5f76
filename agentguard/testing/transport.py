"""The HTTP/1.1 mechanics under the fake provider: threads, keep-alive, chunked bodies, faults.

Stdlib only (`http.server`), one daemon thread per connection, so a stalled or sleeping
response never blocks another request. JSON bodies carry Content-Length; SSE bodies use
chunked transfer encoding, so a connection closed mid-body is an *incomplete chunked read*
on the client, as with a real provider dropping a stream.

Why not `serve_forever`: it polls every 0.5 s, and a fixture would pay that on every stop.
The accept loop here also wakes on a socket pair, so `stop()` is immediate; it then shuts
down every open connection (stalled or idle keep-alive) and joins their threads briefly.
"""

from __future__ import annotations

import contextlib
import select
import selectors
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOLD_POLL = 0.05  # how often a stalled response checks whether its client has gone


class Exchange(BaseHTTPRequestHandler):
    """One HTTP request and the primitives to answer it (or to fail answering it)."""

    protocol_version = "HTTP/1.1"
    server: LoopbackServer
    started = False  # whether the status line has been sent for the current request

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; with Nagle's algorithm on, the second
        # waits for the client's delayed ACK and every response costs ~40 ms.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            with contextlib.suppress(OSError):
                super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        self.started = False
        try:
            self.server.on_request(self)
        except OSError:  # the client went away; nothing left to tell it
            self.close_connection = True
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self._fail_loudly()

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    def _fail_loudly(self) -> None:
        """A bug in the fake: answer 500 if nothing was sent yet, else cut the connection."""
        self.close_connection = True
        if self.started:
            self.drop()
            return
        body = b'{"type":"error","error":{"type":"api_error","message":"fake provider bug"}}'
        with contextlib.suppress(OSError):
            self.start(500, {"content-type": "application/json"}, length=len(body))
            self.write(body)

    # -- reading ------------------------------------------------------------------------------

    def body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # -- answering ----------------------------------------------------------------------------

    def start(self, status: int, headers: Mapping[str, str], *, length: int | None) -> None:
        """Status line and headers; `length` None means a chunked body follows."""
        self.started = True
        self.send_response(status, _REASONS.get(status))
        for name, value in headers.items():
            self.send_header(name, value)
        if length is None:
            self.send_header("transfer-encoding", "chunked")
        else:
            self.send_header("content-length", str(length))
        self.end_headers()

    def write(self, data: bytes) -> None:
        self.wfile.write(data)

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def drop(self) -> None:
        """Close the connection now, mid-body: the client sees the peer hang up."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def hold(self) -> None:
        """Send nothing more until the client gives up, the server stops or stalls are
        released; then close the connection."""
        self.server.hold(self.connection)
        self.drop()

    def sleep(self, seconds: float) -> None:
        """A server-side delay that a stopping server cuts short."""
        self.server.stopping.wait(seconds)


_REASONS = {529: "Overloaded"}


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server that can stop at once, whatever its connections are doing."""

    daemon_threads = True
    block_on_close = False  # stop() joins the connection threads itself, with a deadline
    # socketserver's default backlog is 5: a burst of concurrent connections (64 agents'
    # streams at once) overflowed it and the kernel reset the connections it could not queue.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], on_request: Callable[[Exchange], None]) -> None:
        self.on_request = on_request
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._workers: list[threading.Thread] = []
        self._release = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._loop: threading.Thread | None = None
        super().__init__(address, Exchange)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can take seconds; skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client hanging up is business as usual here
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"agentguard-fake-{self.server_port}",
            daemon=True,
        )
        with self._lock:
            self._workers = [t for t in self._workers if t.is_alive()]
            self._workers.append(thread)
        thread.start()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = threading.Thread(
            target=self._accept_loop, name=f"agentguard-fake-{self.server_port}", daemon=True
        )
        self._loop.start()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self.socket and not self.stopping.is_set():
                        self._handle_request_noblock()

    def stop(self, timeout: float = 2.0) -> None:
        self.stopping.set()
        self._release.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._loop is not None:
            self._loop.join(timeout)
        self.server_close()
        with self._lock:
            connections, threads = list(self._connections), list(self._workers)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._wake_r.close()
        self._wake_w.close()

    # -- connections --------------------------------------------------------------------------

    def track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)
        if self.stopping.is_set():  # accepted while stopping: do not serve it
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def hold(self, connection: socket.socket) -> None:
        with self._lock:
            release = self._release
        while not release.wait(_HOLD_POLL):
            if self.stopping.is_set() or _peer_closed(connection):
                return

    def release_holds(self) -> None:
        with self._lock:
            release, self._release = self._release, threading.Event()
        release.set()


def _peer_closed(connection: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and connection.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
