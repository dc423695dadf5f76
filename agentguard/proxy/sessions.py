"""Which run a request belongs to, and driving its step on the proxy's event loop.

One run (one `Guard`) per client session: the `x-claude-code-session-id` header, else the
conversation itself (a hash of its first message, which every later turn repeats; not of the
system prompt, which Claude Code changes from turn to turn). Sub-agents
(`x-claude-code-agent-id`) record into the session's run, each step marked with an `agent`
event.

The Guard keeps one conversation head — the messages of its latest step, so a step stores only
what it adds. A session interleaves conversations (the main agent, sub-agents running
concurrently, side requests such as title generation), and one head would flip between them
and store each conversation again on every switch. So each conversation gets a *lane*: its own
head, put in place while the step checkpoints. The checkpoint runs synchronously when the step
starts (nothing else runs on the loop meanwhile), so concurrent steps of one run never see
each other's head.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from agentguard.conversation import Head, message_sha
from agentguard.guard import Guard
from agentguard.plan import Call, StepPlan, adrive, first_on_loop
from agentguard.proxy.hold import KeepAlive
from agentguard.proxy.options import ProxyOptions
from agentguard.routes import Route
from agentguard.step_types import Served, StepRequest
from agentguard.store import Store

SESSION_HEADER = "x-claude-code-session-id"
AGENT_HEADER = "x-claude-code-agent-id"


@dataclass
class Session:
    guard: Guard
    lanes: dict[str, Head] = field(default_factory=dict)
    last_used: float = 0.0  # the clock's monotonic seconds when its last request ended
    busy: int = 0  # requests in flight (a held or streaming one included)
    idle: bool = False  # its run was closed for want of requests; the next one reopens it
    closing: asyncio.Future[None] | None = None  # its run being closed (idle), on a thread
    # lane → (messages, when): its held stream ended in an error event (see server._hold)
    gave_up: dict[str, tuple[int, float]] = field(default_factory=dict)


def conversation_key(body: dict[str, Any]) -> str:
    """A conversation's fingerprint: its first message (cache markers ignored), which every
    later turn of it repeats. The system prompt is left out: Claude Code's changes between
    turns of one conversation (tests/fixtures/claude-code-2.1.330-requests.json)."""
    messages = body.get("messages") or []
    if not messages:
        return _key("")
    first = messages[0]
    if type(first) is not dict:
        return _key(message_sha(first)[0])
    for seen, key in _RECENT_FIRSTS:  # a later turn: comparing its first message is cheaper
        if first == seen:  # than hashing it again (tens of KB)
            return key
    key = _key(message_sha(first)[0])
    _RECENT_FIRSTS.appendleft((first, key))
    return key


def _key(first_sha: str) -> str:
    return hashlib.sha256(first_sha.encode()).hexdigest()[:16]


# The first messages of the conversations seen last (a proxy parses every request anew, so
# equal messages are new objects): Claude Code interleaves a few — the main agent, sub-agents,
# side requests.
_RECENT_FIRSTS: deque[tuple[dict[str, Any], str]] = deque(maxlen=8)


class Sessions:
    """The proxy's runs: one Guard per (client session, front), closed when the proxy stops."""

    def __init__(self, options: ProxyOptions, store: Store) -> None:
        self.options = options
        self.store = store
        self._sessions: dict[tuple[str, str], Session] = {}
        self._opening: dict[tuple[str, str], asyncio.Future[Session]] = {}

    async def session(self, kind: str, headers: dict[str, str], conversation: str) -> Session:
        """The session a request belongs to: its client session, else its conversation (the
        `conversation_key` of its body). A new session's run is opened — and an idle one's
        reopened — on a worker thread (a Guard runs git and may wait for the shadow store's
        lock behind other sessions' snapshots): the event loop, and every stream on it, never
        waits for that. Concurrent first requests of one session share one opening."""
        await self.aclose_idle()
        session_id = headers.get(SESSION_HEADER)
        key = (kind, f"session:{session_id}" if session_id else f"conversation:{conversation}")
        found = self._sessions.get(key)
        if found is not None and not found.idle:
            return found
        opening = self._opening.get(key)
        if opening is None:
            opening = asyncio.ensure_future(self._open(key, session_id, found))
            self._opening[key] = opening
            opening.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(opening)

    async def _open(
        self, key: tuple[str, str], session_id: str | None, idle: Session | None
    ) -> Session:
        kind = key[0]
        if idle is not None:  # back after a pause: the same run goes on
            if idle.closing is not None:
                await idle.closing
            idle.guard = await asyncio.to_thread(
                self._new_guard, kind, idle.guard.name, resume=idle.guard.run_id
            )
            idle.idle, idle.closing = False, None
            return idle
        label = f"session {session_id[:8]}" if session_id else "proxy"
        guard = await asyncio.to_thread(
            self._new_guard, kind, f"{self.options.project.name} ({label})"
        )
        if session_id:  # how `agentguard statusline` finds the run of a Claude Code session
            guard.event(None, "client_session", session_id=session_id)
        session = Session(guard, last_used=self.options.monotonic())
        self._sessions[key] = session
        return session

    @contextmanager
    def in_use(self, session: Session) -> Iterator[Session]:
        """Around a request of the session: it is not idle while the request lasts."""
        session.busy += 1
        try:
            yield session
        finally:
            session.busy -= 1
            session.last_used = self.options.monotonic()

    def _quiet(self) -> list[Session]:
        """Sessions without a request for `session_idle` seconds, marked idle (their run is
        `completed` by `_close_quiet`, with an event saying why; a later request reopens it)."""
        limit = self.options.session_idle
        if not limit:
            return []
        now = self.options.monotonic()
        quiet = []
        for session in self._sessions.values():
            if session.idle or session.busy or now - session.last_used < limit:
                continue
            session.guard.event(None, "session_idle", idle_seconds=round(now - session.last_used))
            session.idle = True
            quiet.append(session)
        return quiet

    def close_idle(self) -> list[str]:
        """Close the runs of quiet sessions now (off the event loop: the proxy's own sweep
        uses `aclose_idle`). Returns the run ids closed."""
        quiet = self._quiet()
        for session in quiet:
            session.guard.close()
        return [session.guard.run_id for session in quiet]

    async def aclose_idle(self) -> list[str]:
        """`close_idle` on the event loop: the runs are closed on a worker thread (a close
        waits for a snapshot still running)."""
        quiet = self._quiet()
        for session in quiet:
            session.closing = asyncio.ensure_future(asyncio.to_thread(session.guard.close))
        for session in quiet:
            assert session.closing is not None
            await asyncio.shield(session.closing)
        return [session.guard.run_id for session in quiet]

    def _new_guard(self, kind: str, name: str, *, resume: str | None = None) -> Guard:
        o = self.options
        return Guard(
            o.project,
            run=name,
            policy=o.policy,
            chain=o.chain_for(kind),
            home=o.home,
            clock=o.clock,
            rng=o.rng,
            tracer_provider=o.tracer_provider,
            snapshots=o.snapshots,
            max_file_bytes=o.max_file_bytes,
            secret_files=o.secret_files,
            store=self.store,
            resume=resume,
            snapshot_remote=o.snapshot_remote,
        )

    async def step(
        self,
        session: Session,
        lane: str,
        request: StepRequest,
        routes: list[Route],
        call: Callable[[Call], Awaitable[Served]],
        on_started: Callable[[Guard, int], None] | None = None,
        *,
        hold: float = 0.0,
        keeper: KeepAlive | None = None,
    ) -> Any:
        """Run one guarded step in a conversation lane, on `routes` (the fallbacks this
        request may use); returns what the step hands over (a served answer). `hold`: the
        step's hold mode (seconds); `keeper` keeps a streaming client alive while it is held."""
        guard = session.guard
        head = session.lanes.setdefault(lane, Head())
        plan = guard.step(
            request,
            hold=hold,
            head=head,
            chain=routes,
            # a stream is passed on as it comes: its snapshot is joined after its first content
            defer_checkpoint=request.stream,
            # any answer goes to the client before the rows saying it was served (the server
            # writes them right after; a substitution is written before, never held back)
            defer_record=True,
        )
        first = first_on_loop(plan)  # the checkpoint: the step, its messages, the snapshot
        if on_started is not None and head.step_id is not None:
            on_started(guard, head.step_id)
        if keeper is None:
            return await adrive(_resumed(plan, first), call, guard.clock)
        resumed = _resumed(plan, first, keeper.saw)
        return await adrive(resumed, keeper.call_for(call), keeper.clock_for(guard.clock))

    def close(self) -> None:
        for session in self._sessions.values():
            if not session.idle:
                session.guard.close()
        self._sessions.clear()

    async def aclose(self) -> None:
        """`close` off the event loop, once every run still being closed is."""
        for session in self._sessions.values():
            if session.closing is not None:
                await asyncio.shield(session.closing)
        await asyncio.to_thread(self.close)


def _resumed(
    plan: StepPlan, first: Any, seen: Callable[[Any], None] | None = None
) -> Generator[Any, Any, Any]:
    """A plan already started (its first action taken), handed on as if new; `seen` is shown
    each action before it is done."""
    action = first
    while True:
        try:
            if seen is not None:
                seen(action)
            reply = yield action
        except GeneratorExit:
            plan.close()
            raise
        except BaseException as exc:
            try:
                action = plan.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            action = plan.send(reply)
        except StopIteration as stop:
            return stop.value
