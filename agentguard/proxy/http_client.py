"""The proxy's HTTP client to its routes: aiohttp underneath, httpx2's shape on top.

Why aiohttp: on loopback an aiohttp client forwards a small request about 1 ms faster than
httpx2's async client (anyio underneath), and the proxy's whole added latency is meant to stay
within 2 ms. Why httpx2's shape: the classifier, the stream code and the translation paths
speak httpx2 — its `Headers`, its transport exceptions (`ConnectError`, `ReadTimeout`,
`RemoteProtocolError`, …), which the library face gets from the SDKs too. So aiohttp's
failures are raised as their httpx2 equivalents, and one classification serves both faces.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import httpx2

# Per read and per connect, never for a whole answer: a stream may rightly last many minutes.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0  # Claude Code's own cut for a stream without bytes


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Sequence[tuple[str, str]]
    content: bytes | None


class Response:
    """An upstream answer whose body is read on demand (`aread`, `aiter_bytes`)."""

    def __init__(self, raw: aiohttp.ClientResponse) -> None:
        self._raw = raw
        self.status_code = raw.status
        self.headers = httpx2.Headers(
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw.raw_headers]
        )
        self._content: bytes | None = None

    @property
    def content(self) -> bytes:
        assert self._content is not None, "read the body first (aread)"
        return self._content

    async def aread(self) -> bytes:
        if self._content is None:
            with _as_httpx_errors():
                self._content = await self._raw.read()
        return self._content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for chunk in self._raw.content.iter_any():
                yield chunk

    async def aclose(self) -> None:
        self._raw.release()


class HttpClient:
    """One connection pool for every route; httpx2.AsyncClient's methods the proxy uses."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on the event loop that uses it
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
                ),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),  # the client's own goes on, or none
            )
        return self._session

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
        with _as_httpx_errors():
            raw = await self._open().request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.content,
                allow_redirects=False,
            )
        response = Response(raw)
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
        if self._session is not None:
            await self._session.close()
            self._session = None


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """aiohttp's transport failures as httpx2's, so the classifier reads one vocabulary."""
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        raise httpx2.ConnectError(str(exc)) from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise httpx2.ConnectTimeout(str(exc) or "connecting timed out") from exc
    except (TimeoutError, aiohttp.SocketTimeoutError) as exc:
        raise httpx2.ReadTimeout(str(exc) or "no bytes for too long") from exc
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
        raise httpx2.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
    except aiohttp.ClientOSError as exc:
        raise httpx2.ReadError(str(exc) or type(exc).__name__) from exc
    except aiohttp.ClientError as exc:
        raise httpx2.RemoteProtocolError(str(exc) or type(exc).__name__) from exc
