"""The proxy's HTTP/1.1 client to its routes: asyncio and httptools underneath, httpx2's shape
on top.

Why its own: beside a provider taking 150 ms, a forwarder on a raw asyncio keep-alive client
added 0.92–0.95 ms per request where one on aiohttp's client added 1.23–1.28 ms (tuned or not),
and the proxy's whole added latency is meant to stay within 2 ms. Why httpx2's shape: the
classifier, the stream code and the translation paths speak httpx2 — its `Headers`, its
transport exceptions (`ConnectError`, `ReadTimeout`, `RemoteProtocolError`, …), which the
library face gets from the SDKs too — so one classification serves both faces.

What it does: http and https, a pool of idle keep-alive connections per (scheme, host, port)
and no limit on connections in use, Content-Length / chunked / read-until-close answers
(httptools, llhttp, does the framing), gzip and deflate undone on the fly, answers streamed as
their bytes arrive with the socket paused while a slow reader has 256 KB unread, a timeout per
connect and per read (never for a whole answer: a stream may rightly last many minutes), and
bounds on what an upstream can make it hold (a 64 KB head, a 64 MB body read whole, 64 MB
from one read of a compressed body), each crossed a RemoteProtocolError.

What it deliberately does not do: follow redirects, keep cookies, read proxies from the
environment, speak HTTP/2, or resend a request — ever: these are paid model calls, and a
failure goes to the classifier, which decides.
"""

from __future__ import annotations

import asyncio
import functools
import re
import select
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httptools
import httpx2

# Per read and per connect, never for a whole answer: a stream may rightly last many minutes.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0  # Claude Code's own cut for a stream without bytes
KEEPALIVE_TIMEOUT = 15.0  # an idle connection older than this is closed, not reused
HIGH_WATER = 256 * 1024  # unread bytes past which the socket is not read until they are
# Bounds on what an upstream can make the proxy hold (aiohttp's client had its own): an answer's
# head (status line and headers, informational heads included), a body read whole (a JSON
# answer; a stream is passed on as it comes, so has none), and what one read of a compressed
# body may expand to (a small gzip can hold gigabytes of zeros).
MAX_HEAD = 64 * 1024
MAX_WHOLE_BODY = 64 * 1024 * 1024
MAX_INFLATE = 64 * 1024 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}
# the head's own headers: the caller's copies are dropped, never sent twice
_OWN_HEADERS = frozenset(
    {"host", "content-length", "accept-encoding", "transfer-encoding", "connection"}
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# characters a request target may carry as they are; others are percent-encoded (as yarl did)
_TARGET_SAFE = "/?:@!$&'()*+,;=%~"
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")  # not an escape: sent as %25, as yarl did
_TIMER_SLACK = 0.001  # a timer may fire this early and still count as due

_Key = tuple[str, str, int]  # scheme, host, port: the pool's unit


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Sequence[tuple[str, str]]
    content: bytes | None


class _AnswerHeaders(httpx2.Headers):
    """httpx2's Headers of an answer's raw byte pairs, built without re-checking each pair
    (the parser gave bytes already) and with single-valued lookups from a dict made once; every
    other method is httpx2's own."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._list = [(name, name.lower(), value) for name, value in raw]
        self._encoding = None
        self._first: dict[str, str | None] | None = None

    def __getitem__(self, key: str) -> str:
        lookup = self._first
        if lookup is None:
            seen: dict[str, list[bytes]] = {}
            for _, name, value in self._list:
                seen.setdefault(name.decode(self.encoding), []).append(value)
            lookup = self._first = {
                name: ", ".join(v.decode(self.encoding) for v in values)
                for name, values in seen.items()
            }
        value = lookup.get(key.lower())
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: str) -> None:
        self._first = None
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._first = None
        super().__delitem__(key)

    def update(self, headers: Any = None) -> None:  # type: ignore[override]
        super().update(headers)
        self._first = None


class Response:
    """An upstream answer whose body is read on demand (`aread`, `aiter_bytes`)."""

    def __init__(self, connection: _Connection, client: HttpClient) -> None:
        self._connection: _Connection | None = connection
        self._client = client
        self.status_code = connection.status
        self.headers = _AnswerHeaders(connection.raw_headers)  # bytes: any octet survives
        self._content: bytes | None = None

    @property
    def content(self) -> bytes:
        assert self._content is not None, "read the body first (aread)"
        return self._content

    async def aread(self) -> bytes:
        """The whole body; one over MAX_WHOLE_BODY is a RemoteProtocolError (connection
        closed)."""
        connection = self._connection
        if self._content is None and connection is not None and connection.whole():
            self._content = connection.take()  # all in already: no reading loop
            self._release()
        if self._content is None:
            chunks, size = [], 0
            async for chunk in self.aiter_bytes():
                size += len(chunk)
                if size > MAX_WHOLE_BODY:
                    if self._connection is not None:
                        self._connection.abort()
                    self._release()
                    raise httpx2.RemoteProtocolError(
                        f"the answer's body is over {MAX_WHOLE_BODY} bytes"
                    )
                chunks.append(chunk)
            self._content = b"".join(chunks)
        return self._content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, decoded: each chunk is what was there to read, never more
        waiting than for the next byte."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        connection = self._connection
        while connection is not None and self._connection is connection:  # not once released
            chunk = await connection.read()
            if not chunk:
                self._release()
                return
            yield chunk

    async def aclose(self) -> None:
        """Done with the answer: its connection goes back to the pool only if the whole answer
        was read; a half-read one is closed."""
        self._release()

    def _release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._client._release(connection)


class HttpClient:
    """One connection pool for every route; httpx2.AsyncClient's methods the proxy uses."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self._ssl_context = ssl_context  # made on first https use when not given (it is slow)
        self._idle: dict[_Key, list[_Connection]] = {}
        self._open: set[_Connection] = set()

    def build_request(
        self,
        method: str,
        url: str,
        *,
        headers: Sequence[tuple[str, str]] | dict[str, str] = (),
        content: bytes | None = None,
    ) -> Request:
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
        return Request(method, url, pairs, content)

    async def send(self, request: Request, *, stream: bool = False) -> Response:
        """The answer once its headers are in; with `stream`, its body is left to read."""
        key, data = _encode(request)
        connection = await self._acquire(key)
        try:
            connection.begin(data, head_only=request.method == "HEAD")
            await connection.read_head()
            response = Response(connection, self)
        except BaseException:
            connection.abort()
            raise
        if not stream:
            try:
                await response.aread()
            finally:
                await response.aclose()
        return response

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Sequence[tuple[str, str]] | dict[str, str] = (),
        content: bytes | None = None,
    ) -> Response:
        return await self.send(self.build_request(method, url, headers=headers, content=content))

    async def post(
        self,
        url: str,
        *,
        headers: Sequence[tuple[str, str]] | dict[str, str] = (),
        content: bytes | None = None,
    ) -> Response:
        return await self.request("POST", url, headers=headers, content=content)

    async def aclose(self) -> None:
        """Close every connection, idle or in use (as aiohttp's session did); the client stays
        usable and opens new ones."""
        self._idle.clear()
        for connection in list(self._open):
            connection.shut()

    async def _acquire(self, key: _Key) -> _Connection:
        """The most recently used idle connection that is still good, else a new one."""
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.reusable():
                connection.idle_since = None
                return connection
            connection.close()
        return await self._connect(key)

    async def _connect(self, key: _Key) -> _Connection:
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            context = self._ssl_context
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, key),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                    # IPv6 and IPv4 raced, as aiohttp did: a dead IPv6 route costs 0.25 s,
                    # not the whole connect timeout
                    happy_eyeballs_delay=0.25,
                    interleave=1,
                )
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            raise httpx2.ConnectTimeout(
                f"connecting to {host}:{port} took over {self.connect_timeout} s"
            ) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake
            raise httpx2.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        if not connection.lost:  # one already gone fails its request in `begin`
            self._open.add(connection)
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.reusable():
            connection.rest()
            self._idle.setdefault(connection.key, []).append(connection)
        else:
            connection.shut()

    def _forget(self, connection: _Connection) -> None:
        """A connection closed (either side): out of the pool and the open set."""
        self._open.discard(connection)
        if connection.idle_since is not None:
            idle = self._idle.get(connection.key)
            if idle and connection in idle:
                idle.remove(connection)


class _Connection(asyncio.Protocol):
    """One keep-alive connection, answering one request at a time; the parser's callbacks
    (`on_*`) fill the answer in, `read_head` / `read` hand it out."""

    def __init__(self, client: HttpClient, key: _Key) -> None:
        self._client = client
        self.key = key
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.lost = False  # connection_lost seen
        self._aborted = False  # closed by us mid-answer (cancelled, released half-read)
        self.idle_since: float | None = None  # in the pool since (loop time)
        # one timer per connection, re-armed lazily: a read's deadline or the idle limit
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._busy = False
        self._begin_answer(head_only=False)

    def _begin_answer(self, head_only: bool) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._head_done = False
        self._until_close = False  # no length, not chunked: the body ends when the peer closes
        self._decoder: _Decoder | None = None
        self._chunks: deque[bytes] = deque()
        self.buffered = 0  # bytes received and not yet read
        self.paused = False  # the socket is not being read (too much unread)
        self._done = False  # the whole answer is in
        self._keep_alive = False
        self._error: Exception | None = None
        self._head_bytes = 0  # the head's headers so far
        self._head_fed = 0  # bytes fed while the head was unfinished (one endless header)

    # -- the request side ----------------------------------------------------------------------

    def begin(self, data: bytes, *, head_only: bool) -> None:
        """Send one request (head and body in one write) and expect its answer."""
        self._begin_answer(head_only)
        self._busy = True
        if self.lost or self._transport is None:
            self._error = httpx2.RemoteProtocolError(
                "the connection closed before the request went out"
            )
            return
        self._transport.write(data)

    async def read_head(self) -> None:
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait()

    def whole(self) -> bool:
        """The whole answer is in, and within MAX_WHOLE_BODY."""
        return self._done and self._error is None and self.buffered <= MAX_WHOLE_BODY

    def take(self) -> bytes:
        """What of the body has arrived and is unread, all of it (the whole body once `whole`)."""
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self.buffered = 0
        return data

    async def read(self) -> bytes:
        """What of the body has arrived (at least a byte), or b"" at its end."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            await self._wait()
        data = self.take()
        if self.paused and self._transport is not None:
            self.paused = False
            self._transport.resume_reading()
        return data

    async def _wait(self) -> None:
        """Until the parser has more (or fails); READ_TIMEOUT without a byte is ReadTimeout.
        Cancelled here, the answer is half-read: the connection is closed, never pooled."""
        self._waiter = waiter = self._loop.create_future()
        self._deadline = self._loop.time() + self._client.read_timeout
        self._arm(self._deadline)
        try:
            await waiter
        except BaseException:
            self.abort()
            raise
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        """The answer cannot be read on: its reader gets `error`, the connection is closed."""
        if not self._done and self._error is None:
            self._error = error
        self.abort()
        self._wake()

    # -- the pool's side -----------------------------------------------------------------------

    def reusable(self) -> bool:
        """Whole answer read, both sides keep-alive, nothing left unsent, the peer still there,
        not idle too long. The socket is polled too: a FIN that arrived since the loop last
        looked would otherwise be found only after the request went out."""
        transport = self._transport
        if (
            self.lost
            or transport is None
            or transport.is_closing()
            or self._error is not None
            or (self._busy and not (self._done and self._keep_alive))
            or transport.get_write_buffer_size()
        ):
            return False
        if self.idle_since is not None:
            if self._loop.time() - self.idle_since >= self._client.keepalive_timeout:
                return False
            sock = transport.get_extra_info("socket")
            if sock is not None and _readable(sock.fileno()):
                return False  # the peer closed, or sent bytes nobody asked for
        return True

    def rest(self) -> None:
        """Into the pool: idle from now, closed by the timer past the keep-alive limit."""
        self._busy = False
        self._chunks.clear()
        if self.paused and self._transport is not None:
            self.paused = False
            self._transport.resume_reading()
        self.idle_since = self._loop.time()
        self._arm(self.idle_since + self._client.keepalive_timeout)

    def shut(self) -> None:
        """Closed by its owner: gracefully if idle or done, at once if an answer is half-read."""
        if self._busy and not self._done:
            self.abort()
        else:
            self.close()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None and not self.lost:
            self._aborted = True  # so connection_lost never reads it as the peer's clean end
            self._transport.abort()

    def _arm(self, when: float) -> None:
        """The timer fires at `when` or earlier (then it re-arms itself for what is due)."""
        timer = self._timer
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time() + _TIMER_SLACK
        if self.idle_since is not None:
            due = self.idle_since + self._client.keepalive_timeout
            if now >= due:
                self.close()
            else:
                self._arm(due)
        elif self._waiter is not None and not self._waiter.done():  # only one still waiting
            if now >= self._deadline:
                self._fail(httpx2.ReadTimeout(f"no bytes for {self._client.read_timeout} s"))
            else:
                self._arm(self._deadline)

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            self.abort()  # bytes while idle: nothing to pair them with, never reuse
            return
        try:
            self._parser.feed_data(data)
            if not self._head_done:
                self._head_fed += len(data)
                if self._head_fed > MAX_HEAD:
                    self._fail(
                        httpx2.RemoteProtocolError(f"the answer's head is over {MAX_HEAD} bytes")
                    )
        except httptools.HttpParserUpgrade:
            self._fail(httpx2.RemoteProtocolError("the server switched protocols"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
            self._fail(httpx2.RemoteProtocolError(f"a malformed answer: {cause or exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._busy and not self._done and self._error is None:
            if self._head_done and self._until_close and exc is None and not self._aborted:
                try:  # a body without length or chunks ends here, whole
                    self._finish_body()
                except (zlib.error, ValueError) as error:
                    self._error = httpx2.RemoteProtocolError(str(error))
            elif isinstance(exc, OSError):
                self._error = httpx2.ReadError(str(exc) or type(exc).__name__)
            else:
                when = "mid-answer" if self._head_done else "before answering"
                self._error = httpx2.RemoteProtocolError(f"the server closed the connection {when}")
        self._wake()
        self._client._forget(self)

    # -- httptools' callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._done:
            self._keep_alive = False  # bytes past the answer: this connection is not reused
        if not self._head_done:  # an informational answer's head is replaced; ours is kept
            self.raw_headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:  # trailers, or a message past ours, never join the answer's
            self._head_bytes += len(name) + len(value) + 4
            if self._head_bytes > MAX_HEAD:
                raise ValueError(f"the answer's head is over {MAX_HEAD} bytes")
            self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._done:
            return
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: not the answer
            return
        self.status = status
        length = chunked = False
        for name, value in self.raw_headers:
            lower = name.lower()
            if lower == b"content-length":
                length = True
            elif lower == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif lower == b"content-encoding":
                self._decoder = _Decoder.of(value.decode("latin-1"))
        self._until_close = not (length or chunked)
        self._head_done = True
        if self._head_only:  # an answer to HEAD has no body, whatever its length says
            self._done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._done or not body:
            return
        if self._decoder is not None:
            body = self._decoder.feed(body)  # ValueError: a bomb (the parser's callback error)
            if not body:
                return
        self._chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self._transport is not None:
            self.paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._done or not self._head_done:  # an informational answer's end, or past ours
            return
        self._finish_body()
        self._keep_alive = self._parser.should_keep_alive()

    def _finish_body(self) -> None:
        if self._decoder is not None and (tail := self._decoder.finish()):
            self._chunks.append(tail)
            self.buffered += len(tail)
        self._done = True
        self._wake()


class _Decoder:
    """gzip or deflate undone on the fly. Deflate is sniffed on its first byte, as aiohttp did:
    RFC 1950's zlib stream, or the raw one some servers send."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._zlib: zlib._Decompress | None = None

    @classmethod
    def of(cls, encoding: str) -> _Decoder | None:
        encoding = encoding.strip().lower()
        return cls(encoding) if encoding in ("gzip", "x-gzip", "deflate") else None

    def feed(self, data: bytes) -> bytes:
        if self._zlib is None:
            if self._encoding == "deflate":
                wbits = zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS
            else:
                wbits = 16 + zlib.MAX_WBITS
            self._zlib = zlib.decompressobj(wbits)
        out = self._zlib.decompress(data, MAX_INFLATE)
        if self._zlib.unconsumed_tail:
            raise ValueError(
                f"{len(data)} bytes of the {self._encoding} body expand past {MAX_INFLATE} bytes"
            )
        return out

    def finish(self) -> bytes:
        if self._zlib is None:
            return b""
        tail = self._zlib.flush()
        if not self._zlib.eof:
            raise ValueError(f"the {self._encoding} body ended before its end")
        return tail


@functools.lru_cache(maxsize=256)
def _parts(url: str) -> tuple[_Key, str, str]:
    """A URL's pool key, request target and Host header (the proxy sends to a few URLs, again
    and again)."""
    split = urlsplit(url)
    default_port = _DEFAULT_PORTS.get(split.scheme)
    host = split.hostname
    if default_port is None or not host:
        raise httpx2.UnsupportedProtocol(f"not an http(s) URL: {url!r}")
    try:
        port = split.port or default_port
    except ValueError as exc:
        raise httpx2.UnsupportedProtocol(f"a bad port in {url!r}") from exc
    authority = f"[{host}]" if ":" in host else host
    if port != default_port:
        authority = f"{authority}:{port}"
    target = quote(_STRAY_PERCENT.sub("%25", split.path or "/"), safe=_TARGET_SAFE)
    if split.query:
        target = f"{target}?{quote(_STRAY_PERCENT.sub('%25', split.query), safe=_TARGET_SAFE)}"
    return (split.scheme, host, port), target, authority


def _encode(request: Request) -> tuple[_Key, bytes]:
    """The pool key and the request's bytes: head, then body."""
    key, target, authority = _parts(request.url)
    lines = [f"{request.method} {target} HTTP/1.1", f"Host: {authority}"]
    body = request.content
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    elif request.method in _BODY_METHODS:
        lines.append("Content-Length: 0")
    lines.append("Accept-Encoding: gzip, deflate")
    lines += [
        f"{name}: {value}" for name, value in request.headers if name.lower() not in _OWN_HEADERS
    ]
    head = "\r\n".join(lines)
    if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1:
        raise httpx2.LocalProtocolError("a header name or value holds a line break")
    # utf-8 with surrogateescape: header bytes aiohttp's server decoded so go out as they came
    data = (head + "\r\n\r\n").encode("utf-8", "surrogateescape")
    return key, data + body if body else data


def _readable(fd: int) -> bool:
    """Whether bytes (or the peer's FIN) wait on an idle socket, without blocking."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])
