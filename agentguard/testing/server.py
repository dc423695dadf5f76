"""FakeProvider: a fake Anthropic + OpenAI endpoint on loopback, driven by a script.

agentguard's tests, demo and benchmarks must exercise the *real* SDK clients (their retry
loops, SSE parsers, exception classes and httpx2 transport), so the fake speaks HTTP on
127.0.0.1 instead of patching anything. Each request takes the next scripted Reply for its
model (else from the shared queue, else a normal answer from the scripted model), is
recorded with its credentials masked, and is answered in its provider's wire format:

    POST /v1/messages            Anthropic Messages (also `?beta=true`), JSON or SSE
    POST /v1/chat/completions    OpenAI Chat Completions, JSON or SSE
    POST /v1/messages/count_tokens  {"input_tokens": N}, N as the answer's usage would say
    GET  /v1/models              the `models=` given (a 404 like any other path without it)
    HEAD / and /api/hello        200, no body (Claude Code's reachability probes)
    anything else                404 in the provider's error shape

Any key is accepted (`x-api-key` or `Authorization: Bearer`) unless `api_key=` is given.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType

from agentguard.testing import anthropic_wire, openai_wire
from agentguard.testing.recording import (
    RecordedRequest,
    mask_body,
    mask_headers,
    mask_query,
    secrets_in,
)
from agentguard.testing.respond import JSON, play
from agentguard.testing.script import (
    Reply,
    ReplyQueue,
    ScriptedModel,
    Turn,
    default_model,
    error,
    ok,
)
from agentguard.testing.transport import Exchange, LoopbackServer
from agentguard.testing.wire import Context, Wire, dumps, next_sequence

COUNT_TOKENS = "/v1/messages/count_tokens"
PROBES = frozenset({"/", "/api/hello"})  # HEAD: Claude Code checks it can reach the API


class FakeProvider:
    """A scripted fake provider on loopback. Use it as a context manager, or start()/stop()."""

    def __init__(
        self,
        model: ScriptedModel | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        models: list[str] | None = None,
    ) -> None:
        self._model: ScriptedModel = model or default_model
        self._models = models  # opt-in: GET /v1/models lists these
        self._host, self._port = host, port
        self._api_key = api_key  # opt-in: when set, any other key gets 401
        self._queue = ReplyQueue()
        self._faults: Callable[[str | None], Reply | None] | None = None
        self._lock = threading.Lock()
        self._records: list[RecordedRequest] = []
        self._server: LoopbackServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeProvider:
        if self._server is None:
            server = LoopbackServer((self._host, self._port), self._handle)
            server.start()
            self._server = server
        return self

    def stop(self) -> None:
        """Stop at once, closing every connection, stalled ones included. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT — give it to Anthropic(base_url=…) as it is."""
        if self._server is None:
            raise RuntimeError("the FakeProvider is not running: start() it or use `with`")
        return f"http://{self._host}:{self._server.server_port}"

    @property
    def openai_base_url(self) -> str:
        """base_url + "/v1" — what OpenAI(base_url=…) expects."""
        return f"{self.base_url}/v1"

    # -- scripting ----------------------------------------------------------------------------

    def script(self, *replies: Reply, model: str | None = None) -> None:
        """Queue replies for requests whose body "model" is `model` (None: the shared queue,
        used when a model's own queue is empty). With both empty, requests get ok()."""
        self._queue.add(replies, model)

    def set_model(self, model: ScriptedModel) -> None:
        """What answers ok() replies that carry no Turn of their own."""
        self._model = model

    def set_faults(self, faults: Callable[[str | None], Reply | None] | None) -> None:
        """A rule asked (with the request's model) when no scripted reply is queued: return a
        Reply, or None for ok(). Benchmarks use it for faults that depend on time, not count."""
        self._faults = faults

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        return self._queue.pending()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._records)

    def release_stalls(self) -> None:
        """End the stalls in progress by closing their connections; later stalls stall again."""
        if self._server is not None:
            self._server.release_holds()

    def reset(self) -> None:
        """Forget scripted replies and recorded requests."""
        self._queue.clear()
        with self._lock:
            self._records.clear()

    # -- serving ------------------------------------------------------------------------------

    def _handle(self, ex: Exchange) -> None:
        received_at = time.monotonic()
        raw = ex.body()
        path, _, query = ex.path.partition("?")
        raw_headers = list(ex.headers.items())
        headers = {name.lower(): value for name, value in raw_headers}
        wire = _wire_for(path, headers)
        seq = next_sequence()
        request_id = f"req_fake_{seq:06d}"
        body, problem = _parse(raw)
        ctx = Context.for_request(seq, request_id, body)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        stream = body.get("stream") is True
        local = self._local(ex.command, path, body, problem, ctx)
        reply = (
            ok()
            if local is not None
            else self._choose(ex.command, path, wire, problem, headers, model)
        ).sent_as(stream)
        secrets = secrets_in(headers)
        record = RecordedRequest(
            api=wire.api,
            method=ex.command,
            path=path,
            query=mask_query(query, secrets),
            headers=mask_headers(raw_headers, secrets),
            body=mask_body(body, secrets),
            model=model,
            stream=stream,
            reply=reply.label,
            request_id=request_id,
            received_at=received_at,
        )
        if ex.command == "HEAD":  # a status and headers, never a body
            with self._lock:
                self._records.append(record)
            ex.start(reply.status, {"request-id": request_id}, length=0)
            return
        if local is not None:
            with self._lock:
                self._records.append(record)
            data = dumps(local).encode()
            ex.start(200, {"request-id": request_id, "content-type": JSON}, length=len(data))
            ex.write(data)
            return
        turn: Turn | None = None
        if reply.needs_turn:
            try:
                turn = reply.turn or self._model(record)
            except Exception as exc:
                traceback.print_exc()
                reply = error(500, "api_error", f"the scripted model raised {exc!r}")
                record = replace(record, reply=reply.label)
        with self._lock:
            self._records.append(record)
        if reply.latency:
            ex.sleep(reply.latency)
        if reply.served_model:
            ctx = replace(ctx, model=reply.served_model)
        play(ex, wire, reply, turn, ctx, stream=stream)

    def _local(
        self, method: str, path: str, body: dict, problem: str | None, ctx: Context
    ) -> dict | None:
        """The answer of an endpoint that is not a model call (count_tokens, models), or None."""
        if method == "POST" and path == COUNT_TOKENS and problem is None:
            return {"input_tokens": ctx.input_tokens}
        if method == "GET" and path == "/v1/models" and self._models is not None:
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"}
                for m in self._models
            ]
            first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
            return {"data": data, "has_more": False, "first_id": first, "last_id": last}
        return None

    def _choose(
        self,
        method: str,
        path: str,
        wire: Wire,
        problem: str | None,
        headers: dict[str, str],
        model: str | None,
    ) -> Reply:
        if method == "HEAD":
            return ok() if path in PROBES else error(404, "not_found_error", f"Not found: {path}")
        if method != "POST" or path not in wire.paths:
            return error(404, "not_found_error", f"Not found: {method} {path}")
        if problem is not None:
            return error(400, "invalid_request_error", problem)
        if self._api_key is not None and self._api_key not in _presented_keys(headers):
            return error(401, "authentication_error", "invalid x-api-key")
        scripted = self._queue.next(model)
        if scripted is None and self._faults is not None:
            scripted = self._faults(model)
        return scripted or ok()


def _wire_for(path: str, headers: dict[str, str]) -> Wire:
    """Anthropic for its paths or when the client says it is (anthropic-version); else OpenAI."""
    if path in anthropic_wire.WIRE.paths or path == COUNT_TOKENS or "anthropic-version" in headers:
        return anthropic_wire.WIRE
    return openai_wire.WIRE


def _parse(raw: bytes) -> tuple[dict, str | None]:
    if not raw:
        return {}, "the request body is empty; expected a JSON object"
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"the request body is not valid JSON: {exc}"
    if not isinstance(body, dict):
        return {}, "the request body must be a JSON object"
    return body, None


def _presented_keys(headers: dict[str, str]) -> set[str]:
    keys = {headers.get("x-api-key", ""), headers.get("api-key", "")}
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        keys.add(token.strip())
    return keys - {""}
