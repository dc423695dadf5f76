"""The proxy's own HTTP/1.1 client (agentguard/proxy/http_client.py), against small asyncio
servers on 127.0.0.1 that send exact bytes: so the tests choose how an answer is cut into
writes, and how a server misbehaves.

No test waits on the wall clock: a server that must hold back waits on an asyncio.Event the
test sets; the read-timeout test uses a 0.05 s timeout against a server that never answers.
Every scenario runs under a 10 s guard, so a client that hangs fails instead.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import socket
import ssl
import subprocess
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agentguard.proxy import http_client
from agentguard.proxy.http_client import HttpClient, Request

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


def run(scenario: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, 10))


class Loopback:
    """A server on 127.0.0.1 that runs `handler(reader, writer, n)` for its n-th connection
    (from 0) and counts the connections it accepted."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.accepts = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Loopback:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n, self.accepts = self.accepts, self.accepts + 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer, n)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # by __aexit__; Python 3.11's stream callback would log it
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request's head (up to its blank line) and body (by its Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length) if length else b""


def answer(body: bytes = b"ok", *headers: str, status: str = "200 OK") -> bytes:
    """An answer with a Content-Length and the given header lines."""
    lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def keep_answering(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
) -> None:
    """A well-behaved keep-alive server: every request answered "ok", until the client closes."""
    while True:
        await read_request(reader)
        writer.write(answer())
        await writer.drain()


async def eof(reader: asyncio.StreamReader) -> None:
    """Until the client closes its side (what it may still send is read and dropped)."""
    while await reader.read(65536):
        pass


def answering(raw: bytes) -> Handler:
    """A server that reads one request, writes `raw` as it is, and waits for the client to
    close."""

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(raw)
        await eof(reader)

    return server


def refused(server: Handler, match: str) -> None:
    """One request to `server` fails with a RemoteProtocolError saying `match`."""

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            with pytest.raises(httpx2.RemoteProtocolError, match=match):
                await client.request("GET", srv.url)
            await client.aclose()

    run(scenario())


# -- framing and streaming ---------------------------------------------------------------------


def test_a_chunked_answer_sent_byte_by_byte_arrives_whole() -> None:
    body = b'{"type":"message","content":[{"type":"text","text":"hello"}]}' * 3
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body[:50], body[50:])

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        for i in range(len(raw)):
            writer.write(raw[i : i + 1])
            await writer.drain()
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.request("GET", srv.url + "/x")
            assert response.status_code == 200
            assert response.content == body
            await client.aclose()

    run(scenario())


def test_a_streamed_answer_yields_its_first_chunk_before_the_rest_is_sent() -> None:
    first_read = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n" + b"6\r\nfirst\n\r\n")
        await writer.drain()
        await first_read.wait()  # the rest only once the client has read the first
        writer.write(b"5\r\nrest\n\r\n0\r\n\r\n")
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.send(client.build_request("GET", srv.url), stream=True)
            chunks = []
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)
                first_read.set()
            assert chunks == [b"first\n", b"rest\n"]
            await response.aclose()
            await client.aclose()

    run(scenario())


def test_a_read_until_close_answer_ends_at_the_close_and_is_not_pooled() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno length, ")
        await writer.drain()
        writer.write(b"then the close")

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            for _ in range(2):
                response = await client.request("GET", srv.url)
                assert response.content == b"no length, then the close"
            assert srv.accepts == 2
            await client.aclose()

    run(scenario())


def test_an_informational_answer_before_the_real_one_is_skipped() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await writer.drain()
        writer.write(answer(b"the real one", "X-Real: yes", status="201 Created"))
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.post(srv.url, content=b"{}")
            assert response.status_code == 201
            assert response.content == b"the real one"
            assert response.headers.raw == [(b"X-Real", b"yes"), (b"Content-Length", b"12")]
            await client.aclose()

    run(scenario())


def test_an_answer_to_head_has_no_body_whatever_its_length_says() -> None:
    server = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.request("HEAD", srv.url)
            assert (response.status_code, response.content) == (200, b"")
            assert response.headers["content-length"] == "1000"
            await client.aclose()

    run(scenario())


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw deflate"])
def test_a_compressed_answer_is_decoded(encoding: str) -> None:
    body = b'{"text": "' + b"compressible " * 5000 + b'"}'
    if encoding == "gzip":
        packed = gzip.compress(body)
    elif encoding == "deflate":
        packed = zlib.compress(body)
    else:  # what some servers send as "deflate": the stream without zlib's header
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed = packer.compress(body) + packer.flush()
    name = encoding.split()[-1]

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)  # the streamed one: in three chunks
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: %s\r\n" % name.encode())
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        third = len(packed) // 3
        writer.write(chunked(packed[:third], packed[third : 2 * third], packed[2 * third :]))
        await read_request(reader)  # the whole one
        writer.write(answer(packed, f"Content-Encoding: {name}"))
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            streamed = await client.send(client.build_request("GET", srv.url), stream=True)
            assert b"".join([chunk async for chunk in streamed.aiter_bytes()]) == body
            await streamed.aclose()
            whole = await client.request("GET", srv.url)
            assert whole.content == body
            assert whole.headers["content-encoding"] == name  # as sent: the proxy strips it
            assert srv.accepts == 1
            await client.aclose()

    run(scenario())


# -- the request's bytes, the answer's headers -------------------------------------------------


def recording(seen: list[bytes]) -> Handler:
    """A keep-alive server that keeps each request's bytes (head and body) and answers "ok"."""

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            head, body = await read_request(reader)
            seen.append(head + body)
            writer.write(answer())

    return server


def test_the_request_head_and_body_go_out_exactly() -> None:
    seen: list[bytes] = []
    server = recording(seen)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            headers = [
                ("x-api-key", "k"),
                ("X-Dup", "a"),
                ("content-type", "application/json"),
                ("x-dup", "b"),
                ("Host", "elsewhere"),  # the client's own go on, once: these are dropped
                ("content-length", "99"),
                ("Accept-Encoding", "br"),
                ("Connection", "close"),
                ("transfer-encoding", "chunked"),
            ]
            url = srv.url + "/v1/messages?beta=true"
            await client.post(url, headers=headers, content=b'{"a":1}')
            await client.post(srv.url + "/v1/empty")
            await client.request("GET", srv.url + "/v1/models/a b", headers={"X-One": "1"})
            port = srv.port
            await client.aclose()
        assert seen == [
            b"POST /v1/messages?beta=true HTTP/1.1\r\n"
            b"Host: 127.0.0.1:%d\r\n"
            b"Content-Length: 7\r\n"
            b"Accept-Encoding: gzip, deflate\r\n"
            b"x-api-key: k\r\nX-Dup: a\r\ncontent-type: application/json\r\nx-dup: b\r\n"
            b'\r\n{"a":1}' % port,
            b"POST /v1/empty HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 0\r\n"
            b"Accept-Encoding: gzip, deflate\r\n\r\n" % port,
            b"GET /v1/models/a%%20b HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Accept-Encoding: gzip, deflate\r\nX-One: 1\r\n\r\n" % port,
        ]

    run(scenario())


def test_the_host_header_carries_the_port_only_when_it_is_not_the_default() -> None:
    def head(url: str) -> bytes:
        _, data = http_client._encode(Request("GET", url, [], None))
        return data.split(b"\r\n")[1]

    assert head("https://api.anthropic.com/v1/messages") == b"Host: api.anthropic.com"
    assert head("http://example.com:80/") == b"Host: example.com"
    assert head("https://example.com:8443/") == b"Host: example.com:8443"
    assert head("http://[::1]:8080/") == b"Host: [::1]:8080"
    with pytest.raises(httpx2.LocalProtocolError):
        http_client._encode(Request("GET", "http://h/", [("x", "a\r\nInjected: 1")], None))
    with pytest.raises(httpx2.UnsupportedProtocol):
        http_client._encode(Request("GET", "ftp://h/", [], None))


def test_the_answer_headers_keep_their_order_and_duplicates() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(
            answer(
                b"{}",
                "Set-Cookie: a=1",
                "request-id: req_1",
                "set-cookie: b=2",
                "X-Z: last-name-first",
                "Set-Cookie: c=3",
            )
        )
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.request("GET", srv.url)
            assert response.headers.raw == [  # as sent: names in their own case
                (b"Set-Cookie", b"a=1"),
                (b"request-id", b"req_1"),
                (b"set-cookie", b"b=2"),
                (b"X-Z", b"last-name-first"),
                (b"Set-Cookie", b"c=3"),
                (b"Content-Length", b"2"),
            ]
            assert response.headers.get_list("set-cookie") == ["a=1", "b=2", "c=3"]
            await client.aclose()

    run(scenario())


def test_a_5_mb_request_body_and_a_5_mb_answer() -> None:
    upload, download = os.urandom(5 * 2**20), os.urandom(5 * 2**20)

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        _, body = await read_request(reader)
        assert body == upload
        writer.write(answer(download))
        await writer.drain()
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.post(srv.url, content=upload)
            assert response.content == download
            await client.aclose()

    run(scenario())


# -- keep-alive and the pool ---------------------------------------------------------------------


def test_sequential_requests_share_one_connection() -> None:
    async def scenario() -> None:
        async with Loopback(keep_answering) as srv:
            client = HttpClient()
            for _ in range(3):
                assert (await client.request("GET", srv.url)).content == b"ok"
            streamed = await client.send(client.build_request("GET", srv.url), stream=True)
            assert await streamed.aread() == b"ok"
            await streamed.aclose()
            assert (await client.post(srv.url, content=b"x")).content == b"ok"
            assert srv.accepts == 1
            await client.aclose()

    run(scenario())


def test_concurrent_requests_each_get_a_connection_and_all_return_to_the_pool() -> None:
    all_in = asyncio.Event()
    arrived = 0

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal arrived
        while True:
            await read_request(reader)
            arrived += 1
            if arrived == 3:
                all_in.set()
            await all_in.wait()  # no answer until all three requests are in: none waits
            writer.write(answer(b"%d" % n))

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            answers = await asyncio.gather(*(client.request("GET", srv.url) for _ in range(3)))
            assert sorted(a.content for a in answers) == [b"0", b"1", b"2"]
            assert len(client._idle[("http", "127.0.0.1", srv.port)]) == 3
            assert (await client.request("GET", srv.url)).status_code == 200
            assert srv.accepts == 3
            await client.aclose()

    run(scenario())


def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    closed = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer(b"first" if n == 0 else b"second"))  # keep-alive, by HTTP/1.1
        await writer.drain()
        if n == 0:  # then closes it, as a server does with connections idle too long
            writer.close()
            await writer.wait_closed()
            closed.set()
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            assert (await client.request("GET", srv.url)).content == b"first"
            await closed.wait()
            assert (await client.request("GET", srv.url)).content == b"second"
            assert srv.accepts == 2
            await client.aclose()

    run(scenario())


def test_an_answer_with_connection_close_is_not_pooled() -> None:
    server = answering(answer(b"bye", "Connection: close"))

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            for _ in range(2):
                assert (await client.request("GET", srv.url)).content == b"bye"
            assert srv.accepts == 2
            await client.aclose()

    run(scenario())


def test_an_idle_connection_past_the_keepalive_timeout_is_not_reused() -> None:
    async def scenario() -> None:
        async with Loopback(keep_answering) as srv:
            client = HttpClient(keepalive_timeout=0.0)
            for _ in range(2):
                assert (await client.request("GET", srv.url)).content == b"ok"
            assert srv.accepts == 2
            await client.aclose()

    run(scenario())


def test_aclose_closes_the_idle_connections() -> None:
    saw_eof = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(answer())
        await eof(reader)
        saw_eof.set()

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            await client.request("GET", srv.url)
            assert not saw_eof.is_set()
            await client.aclose()
            await saw_eof.wait()
            assert client._idle == {}
            assert client._open == set()

    run(scenario())


# -- failures ------------------------------------------------------------------------------------


def test_the_server_closing_mid_body_is_a_remote_protocol_error_and_the_next_request_works() -> (
    None
):
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            return  # and closes
        writer.write(answer())
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.send(client.build_request("GET", srv.url), stream=True)
            with pytest.raises(httpx2.RemoteProtocolError):
                async for _ in response.aiter_bytes():
                    pass
            await response.aclose()
            assert (await client.request("GET", srv.url)).content == b"ok"
            assert srv.accepts == 2
            await client.aclose()

    run(scenario())


def test_the_server_closing_before_answering_is_a_remote_protocol_error() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            with pytest.raises(httpx2.RemoteProtocolError):
                await client.request("GET", srv.url)
            await client.aclose()

    run(scenario())


def test_a_malformed_answer_is_a_remote_protocol_error() -> None:
    refused(answering(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n"), "malformed")


def test_a_refused_connection_is_a_connect_error() -> None:
    async def scenario() -> None:
        with socket.socket() as bound:  # bound, never listening: connecting is refused
            bound.bind(("127.0.0.1", 0))
            port = bound.getsockname()[1]
            client = HttpClient()
            with pytest.raises(httpx2.ConnectError):
                await client.request("GET", f"http://127.0.0.1:{port}/")

    run(scenario())


def test_no_byte_for_the_read_timeout_is_a_read_timeout() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 1:  # the second answers its head and a first piece, then nothing
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient(read_timeout=0.05)
            with pytest.raises(httpx2.ReadTimeout):  # waiting for the head
                await client.request("GET", srv.url)
            response = await client.send(client.build_request("GET", srv.url), stream=True)
            chunks = response.aiter_bytes()
            assert await anext(chunks) == b"first"
            with pytest.raises(httpx2.ReadTimeout):  # waiting for the next piece
                await anext(chunks)
            await response.aclose()
            await client.aclose()

    run(scenario())


@pytest.mark.parametrize("moment", ["waiting for the head", "reading the body"])
def test_a_task_cancelled_mid_request_closes_its_connection(moment: str) -> None:
    got_request, saw_eof = asyncio.Event(), asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 0:
            got_request.set()
            if moment == "reading the body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstarted")
            await eof(reader)
            saw_eof.set()
            return
        writer.write(answer())
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            started = asyncio.Event()

            async def call() -> None:
                response = await client.send(client.build_request("GET", srv.url), stream=True)
                async for _ in response.aiter_bytes():
                    started.set()

            task = asyncio.ensure_future(call())
            await (started if moment == "reading the body" else got_request).wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await saw_eof.wait()
            assert client._idle.get(("http", "127.0.0.1", srv.port), []) == []
            assert (await client.request("GET", srv.url)).content == b"ok"
            assert srv.accepts == 2
            await client.aclose()

    run(scenario())


def test_closing_a_half_read_answer_closes_its_connection() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstarted" if n == 0 else answer()
        )
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.send(client.build_request("GET", srv.url), stream=True)
            await response.aclose()
            assert (await client.request("GET", srv.url)).content == b"ok"
            assert srv.accepts == 2
            await client.aclose()

    run(scenario())


# -- flow control --------------------------------------------------------------------------------


def test_a_slow_reader_pauses_reading_and_the_server_backs_up() -> None:
    total, piece = 48 * 2**20, b"x" * 2**16
    written = 0

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal written
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        while written < total:
            writer.write(piece)
            await writer.drain()
            written += len(piece)
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.send(client.build_request("GET", srv.url), stream=True)
            connection = response._connection
            assert connection is not None
            chunks = response.aiter_bytes()
            received = len(await anext(chunks))
            for _ in range(100_000):  # loop turns, not time: until the client stops reading
                if connection.paused:
                    break
                await asyncio.sleep(0)
            assert connection.paused
            held = connection.buffered
            for _ in range(1000):  # paused, nothing more is read off the socket
                await asyncio.sleep(0)
            assert connection.buffered == held
            assert held <= http_client.HIGH_WATER + 2**20
            assert written < total  # the server's writes backed up
            async for chunk in chunks:
                received += len(chunk)
                assert connection.buffered <= http_client.HIGH_WATER + 2**20
            assert received == total
            assert not connection.paused
            await response.aclose()
            await client.aclose()

    run(scenario())


# -- https ---------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed: no certificate for the TLS test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_against_a_self_signed_loopback_server(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def scenario() -> None:
        async with Loopback(keep_answering, ssl_context=server_context) as srv:
            client = HttpClient(ssl_context=trusting)
            for _ in range(2):
                response = await client.post(srv.url + "/v1/messages", content=b"{}")
                assert response.content == b"ok"
            assert srv.accepts == 1
            await client.aclose()
            with pytest.raises(httpx2.ConnectError):  # the default context does not trust it
                await HttpClient().request("GET", srv.url)

    run(scenario())


# -- found by review: each fails on the first version of the client -----------------------------


def test_an_answer_header_with_non_ascii_bytes_is_kept_and_leaks_nothing() -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-Name: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\nok"

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(raw)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.request("GET", srv.url + "/x")
            assert response.content == b"ok"
            assert response.headers.raw[0] == (b"X-Name", "café".encode())
            assert len(client._open) == 1 and client._idle  # pooled, not stranded
            await client.aclose()

    run(scenario())


def test_trailers_and_a_message_past_the_answer_never_change_its_headers() -> None:
    trailed = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-T\r\n\r\n2\r\nok\r\n0\r\nX-T: late\r\n\r\n"
    )
    doubled = answer(b"ok", "Content-Type: application/json") + answer(b"no", "X-Second: 1")

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(trailed if n == 0 else doubled)  # one write: parsed before read_head ends
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            for _ in range(2):
                client = HttpClient()
                response = await client.request("GET", srv.url + "/x")
                assert response.content == b"ok"
                assert response.headers["content-type"] == "application/json"
                assert "x-t" not in response.headers and "x-second" not in response.headers
                await client.aclose()

    run(scenario())


def test_a_stray_percent_is_escaped_and_an_escape_is_left_as_it_is() -> None:
    seen: list[bytes] = []
    server = recording(seen)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            await client.request("GET", srv.url + "/v1/models/a%2Fb?q=100%&x=a%2Fb+c%25")
            await client.aclose()

    run(scenario())
    assert [request.split(b"\r\n")[0] for request in seen] == [
        b"GET /v1/models/a%2Fb?q=100%25&x=a%2Fb+c%25 HTTP/1.1"
    ]


def test_an_answer_without_length_cut_by_the_client_itself_is_not_a_whole_one() -> None:
    """A body that ends with the connection is whole only when the peer closed it: closing
    the client mid-answer must not hand the reader a truncated body as complete."""
    sent = asyncio.Event()

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart1 ")
        await writer.drain()
        sent.set()
        await eof(reader)

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            response = await client.send(client.build_request("GET", srv.url + "/x"), stream=True)
            chunks = response.aiter_bytes()
            assert await chunks.__anext__() == b"part1 "
            await client.aclose()  # the proxy stopping while the answer is read
            with pytest.raises(httpx2.RemoteProtocolError):
                await chunks.__anext__()

    run(scenario())


# -- what an upstream can make the proxy hold ----------------------------------------------------


def test_an_answer_head_over_the_limit_is_refused_not_buffered() -> None:
    padding = [f"X-Pad-{i}: {'a' * 1000}" for i in range(100)]  # a 100 KB head
    server = answering(answer(b"ok", *padding))

    refused(server, "head is over")


def test_a_compressed_body_that_expands_past_the_limit_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_client, "MAX_INFLATE", 1024 * 1024)
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 MB of zeros in a few KB
    server = answering(answer(bomb, "Content-Encoding: gzip"))

    refused(server, "expand past")


def test_a_whole_body_over_the_limit_is_refused_and_a_stream_is_not_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http_client, "MAX_WHOLE_BODY", 1024 * 1024)
    big = b"x" * (2 * 1024 * 1024)

    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(big))
            await writer.drain()

    async def scenario() -> None:
        async with Loopback(server) as srv:
            client = HttpClient()
            with pytest.raises(httpx2.RemoteProtocolError, match="over 1048576 bytes"):
                await client.request("GET", srv.url)
            streamed = await client.send(client.build_request("GET", srv.url), stream=True)
            assert b"".join([chunk async for chunk in streamed.aiter_bytes()]) == big
            await streamed.aclose()
            assert srv.accepts == 2  # the refused answer's connection was closed, not pooled
            await client.aclose()

    run(scenario())


def test_an_endless_answer_header_is_refused_once_past_the_limit() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        while True:  # one header value that never ends
            writer.write(b"a" * 16384)
            await writer.drain()

    refused(server, "head is over")


def test_answer_headers_read_as_httpx2_reads_them() -> None:
    """The answer's headers (built straight from the parser's bytes) look up, join and change
    as httpx2.Headers does."""
    raw = [(b"Content-Type", b"application/json"), (b"X-Many", b"a"), (b"x-many", b"b")]
    ours, theirs = http_client._AnswerHeaders(list(raw)), httpx2.Headers(list(raw))
    for key in ("content-type", "CONTENT-TYPE", "x-many", "absent"):
        assert ours.get(key) == theirs.get(key)
        assert (key in ours) == (key in theirs)
    assert ours.multi_items() == theirs.multi_items() and ours.raw == theirs.raw
    for headers in (ours, theirs):
        headers.update({"X-Many": "c"})
        headers["X-New"] = "d"
        del headers["content-type"]
    assert ours.multi_items() == theirs.multi_items()
    assert ours.get("x-many") == theirs.get("x-many") == "c"
    assert ours.get("content-type") is None and ours["x-new"] == "d"
