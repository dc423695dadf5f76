"""One attempt: the client's request forwarded verbatim to a route, the answer handed back.

Every header the client sent goes on except hop-by-hop ones, Host, Content-Length and
Accept-Encoding (the proxy reads the answer, so it negotiates an encoding it can decode; the
client gets identity). The body goes byte for byte when the route is the one asked for; on a
tier fallback only its `model` is rewritten. A non-2xx answer, or an SSE `error` event before
any content, raises `UpstreamError` for the classifier; transport failures raise httpx2's own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
import orjson

from agentguard.classify import UpstreamError
from agentguard.proxy import credentials, sse
from agentguard.proxy.http_client import HttpClient, Response
from agentguard.proxy.stream import LiveStream, close_quietly
from agentguard.routes import Route
from agentguard.step_types import Served

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "accept-encoding"}
_NOT_RETURNED = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}


@dataclass(frozen=True)
class Incoming:
    """A client's request as the proxy received it (headers already without hop-by-hop)."""

    kind: str  # the front: "anthropic" or "openai"
    method: str
    path: str  # /v1/messages
    query: str  # beta=true, as sent
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def header_map(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers}


class Answer:
    """A whole (non-streamed) answer: status, headers and body as the provider sent them."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def forwarded_headers(raw: Any) -> list[tuple[str, str]]:
    """The client's headers as they may go upstream, in order, duplicates kept."""
    items = raw.items() if isinstance(raw, Mapping) else raw
    connection = {
        token.strip().lower()
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    items = raw.items() if isinstance(raw, Mapping) else raw
    return [
        (name, value)
        for name, value in items
        if name.lower() not in _NOT_FORWARDED and name.lower() not in connection
    ]


def returned_headers(response: Response) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in response.headers.multi_items()
        if name.lower() not in _NOT_RETURNED
    ]


def url_for(route: Route, incoming: Incoming) -> str:
    """The route's base URL with the client's path (OpenAI base URLs already end in /v1)."""
    base = (route.base_url or "").rstrip("/")
    path = incoming.path
    if route.kind == "openai" and path.startswith("/v1/"):
        path = path[3:]
    return f"{base}{path}" + (f"?{incoming.query}" if incoming.query else "")


def body_for(route: Route, requested: Route, incoming: Incoming) -> bytes:
    """Verbatim for the route asked for; another model of the same wire format gets only its
    `model` field rewritten."""
    if route.key == requested.key:
        return incoming.body
    data = json.loads(incoming.body)
    data["model"] = route.model
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class Upstream:
    """The proxy's HTTP client to every route (one connection pool)."""

    def __init__(self, client: HttpClient | None = None) -> None:
        self.client = client or HttpClient()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def passthrough(self, route: Route, incoming: Incoming) -> Answer:
        """An endpoint that is not a model call (count_tokens, models): forwarded untouched."""
        response = await self.client.request(
            incoming.method,
            url_for(route, incoming),
            headers=incoming.headers,
            content=incoming.body or None,
        )
        return Answer(response.status_code, returned_headers(response), response.content)

    async def attempt(self, route: Route, requested: Route, incoming: Incoming) -> Served:
        """One attempt of a step on `route`: a Served answer, or the failure raised. A route
        of the other wire format gets the request translated (see `translated`)."""
        from agentguard.proxy import translated

        if translated.crosses(route, incoming):
            return await translated.attempt(self.client, route, incoming)
        headers = incoming.headers
        if credentials.needs_env_key(route):
            headers = credentials.with_env_key(headers, route)
        request = self.client.build_request(
            incoming.method,
            url_for(route, incoming),
            headers=headers,
            content=body_for(route, requested, incoming),
        )
        response = await self.client.send(request, stream=True)
        try:
            if response.status_code >= 400:
                body = await response.aread()
                raise UpstreamError(response.status_code, response.headers, body)
            if "text/event-stream" not in response.headers.get("content-type", ""):
                return served_whole(route, response, await response.aread())
            return await open_stream(route, response)
        except BaseException:
            await close_quietly(response)
            raise


def parse_json(body: bytes) -> Any:
    """A body's JSON (a request's, an answer's): orjson's parser (a 1 MB conversation in about
    a quarter of the standard library's time), the standard one for what orjson refuses and
    JSON allows (integers past 64 bits, NaN); a body that is not JSON raises
    json.JSONDecodeError."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def served_whole(route: Route, response: Response, body: bytes) -> Served:
    """A JSON answer: the whole body is the answer, recorded as it came."""
    answer = Answer(response.status_code, returned_headers(response), body)
    data: Any
    try:
        data = parse_json(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    data = data if isinstance(data, dict) else {}
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    if route.kind == "anthropic":
        tokens = (usage.get("input_tokens"), usage.get("output_tokens"))
        stop = data.get("stop_reason")
    else:
        tokens = (usage.get("prompt_tokens"), usage.get("completion_tokens"))
        choices = data.get("choices") or [{}]
        stop = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
    model = data.get("model")
    return Served(
        value=answer,
        request_id=_request_id(response),
        model=model if isinstance(model, str) else route.model,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        stop_reason=stop,
        response_json=body.decode("utf-8", "replace") if data else None,
    )


async def open_stream(route: Route, response: Response) -> Served:
    """Read the stream up to its first content event. A failure before it is this attempt's
    failure (retried invisibly); from it on, the stream belongs to the client."""
    events = sse.events(response.aiter_bytes())
    held: list[sse.Event] = []
    async for event in events:
        if sse.is_error(route.kind, event):
            raise UpstreamError(None, response.headers, event.data.encode())
        held.append(event)
        if not sse.is_preamble(route.kind, event):
            break
    else:
        raise httpx2.RemoteProtocolError("the stream ended before any content")
    stream = LiveStream(
        route.kind, response.status_code, returned_headers(response), held, events, response
    )
    final = stream.assembler.final()
    return Served(
        value=stream,
        request_id=_request_id(response),
        model=final.model or route.model,
        input_tokens=final.input_tokens,
    )


def _request_id(response: Response) -> str | None:
    return response.headers.get("request-id") or response.headers.get("x-request-id")
