"""The PostgreSQL store when the server goes away in the middle of a transaction.

Two real faults, no mocks: the server itself ends the agent's backend half-way through a
transaction (`pg_terminate_backend` from a trigger, at an exact point), and a loopback relay in
front of the server that loses the answer to a COMMIT the server has already applied, or stops
taking connections for a while (what a restart looks like from the client). Each time the step
must go on on a new connection, and nothing may be lost or written twice.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from agentguard.breaker import Breaker
from agentguard.clock import FakeClock
from agentguard.errors import StoreError
from agentguard.store_pg import PostgresStore
from agentguard.testing import FakeProvider
from tests.conftest import user

RUN = "run-faults"
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"  # the simple-query message psycopg sends to commit


class Relay:
    """A TCP relay on 127.0.0.1 in front of the PostgreSQL server, which can cut connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self.lose_next_commit_answer = threading.Event()
        self.commits_lost = 0
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        """`url` through the relay (in clear: the relay reads the protocol)."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
        query = f"{parts.query}&sslmode=disable" if parts.query else "sslmode=disable"
        return urlunsplit(parts._replace(netloc=netloc_new, query=query))

    def down(self) -> None:
        """Cut every connection and refuse new ones until `restore()`."""
        self.up.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            _close(conn)

    def restore(self) -> None:
        self.up.set()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            if not self.up.is_set():
                _close(client)
                continue
            server = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, server]
            cut = threading.Event()
            threading.Thread(
                target=self._pump, args=(client, server, cut, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, cut, False), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, cut: threading.Event, up: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not up and cut.is_set():  # the server's answer to the COMMIT: lost
                    self.commits_lost += 1
                    break
                dst.sendall(data)
                if up and COMMIT in data and self.lose_next_commit_answer.is_set():
                    self.lose_next_commit_answer.clear()
                    cut.set()
        _close(src)
        _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class Ticking(FakeClock):
    """A fake clock whose sleeps can run a hook: the test's way to act "while the store waits"."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []
        self.on_sleep: Callable[[int], None] = lambda n: None

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        super().sleep(seconds)
        self.on_sleep(len(self.slept))


@pytest.fixture
def relay(postgres_url: str) -> Relay:
    parts = urlsplit(postgres_url)
    return Relay((parts.hostname or "127.0.0.1", parts.port or 5432))


@pytest.fixture
def opened(postgres_schema_url: str, home: Any) -> Iterator[Callable[..., PostgresStore]]:
    stores: list[PostgresStore] = []

    def open_(url: str = postgres_schema_url, **options: Any) -> PostgresStore:
        store = PostgresStore(url, home, **options)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


def _admin(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def _kill_once_on(url: str, table: str) -> None:
    """The server ends the backend that first writes `table`, inside that transaction (a
    sequence, not a table, remembers it: the killed transaction's own writes roll back)."""
    _admin(
        url,
        f"""
        create sequence kills;
        create function kill_once() returns trigger language plpgsql as $$
        begin
            if nextval('kills') = 1 then
                perform pg_terminate_backend(pg_backend_pid());
                perform pg_sleep(5);  -- the signal lands here; never reached in full
            end if;
            return null;
        end $$;
        create trigger kill_once after insert or update on {table}
            for each statement execute function kill_once();
        """,
    )


def _new_run(store: PostgresStore, run_id: str = RUN) -> None:
    store.insert_run({"id": run_id, "status": "running", "created_at": 1.0, "updated_at": 1.0})


def _step(n: float) -> dict[str, Any]:
    return {"run_id": RUN, "status": "running", "started_at": 1000.0 + n, "request": f"r{n}"}


# -- the server ends the backend inside a transaction ---------------------------------------------


def test_a_backend_killed_inside_a_step_write_is_written_once_on_a_new_connection(
    opened: Callable[..., PostgresStore], postgres_schema_url: str
) -> None:
    store = opened()
    _new_run(store)
    _kill_once_on(postgres_schema_url, "messages")
    message = {"position": 0, "role": "user", "content": '"hi"', "sha": "s0"}
    step_id, number = store.begin_step(_step(1), [message], None)
    assert number == 1
    assert store.reconnects == 1
    assert _admin(postgres_schema_url, "select id, number from steps") == [(step_id, 1)]
    assert _admin(postgres_schema_url, "select step_id, sha from messages") == [(step_id, "s0")]
    assert _admin(postgres_schema_url, "select last_value from kills") == [(2,)]  # two tries


def test_a_backend_killed_inside_the_breakers_transaction_is_retried(
    opened: Callable[..., PostgresStore], postgres_schema_url: str
) -> None:
    """The breaker's read-modify-write (`transact`) runs again: the streak counts one failure."""
    clock = FakeClock()
    store = opened()
    breaker = Breaker(store, clock)
    _kill_once_on(postgres_schema_url, "route_health")
    breaker.record_failure("anthropic:m")
    assert store.reconnects == 1
    assert _admin(postgres_schema_url, "select route, failures from route_health") == [
        ("anthropic:m", 1)
    ]


def test_a_plain_write_block_lost_half_way_is_one_sentence(
    opened: Callable[..., PostgresStore], postgres_schema_url: str
) -> None:
    """`write()`'s block is the caller's and cannot run twice: a clear StoreError, no psycopg
    traceback, and the half-done transaction rolled back."""
    store = opened()
    _new_run(store)
    _kill_once_on(postgres_schema_url, "events")
    with pytest.raises(StoreError) as raised, store.write() as db:
        db.conn.execute("update runs set status = 'x' where id = ?", [RUN])
        db.conn.execute("insert into events (run_id, kind, at) values (?, 'k', 1)", [RUN])
    message = str(raised.value)
    assert "lost the PostgreSQL server" in message and "\n" not in message
    assert _admin(postgres_schema_url, "select status from runs") == [("running",)]
    store.update_run(RUN, status="ok")  # and the store goes on
    assert _admin(postgres_schema_url, "select status from runs") == [("ok",)]


# -- the answer to COMMIT is lost: applied or not, nobody knows -----------------------------------


def _attempt(store: PostgresStore) -> Any:
    step_id, _ = store.begin_step(_step(1), [], None)
    row = {"run_id": RUN, "step_id": step_id, "number": 1, "started_at": 1001.5, "outcome": None}
    return lambda: store.insert_attempt(row)


WRITES: dict[str, tuple[Callable[[PostgresStore], Callable[[], Any]], str]] = {
    "step": (lambda s: lambda: s.begin_step(_step(2), [], None), "select count(*) from steps"),
    "attempt": (_attempt, "select count(*) from attempts"),
    "event": (
        lambda s: lambda: s.insert_event(RUN, "fell_back", {"to": "x"}, at=5.0, step_id=None),
        "select count(*) from events",
    ),
    "run": (lambda s: lambda: _new_run(s, "run-2"), "select count(*) from runs"),
}


@pytest.mark.parametrize("what", list(WRITES))
def test_a_commit_whose_answer_was_lost_is_not_written_twice(
    what: str, opened: Callable[..., PostgresStore], postgres_schema_url: str, relay: Relay
) -> None:
    store = opened(relay.url(postgres_schema_url))
    _new_run(store)
    prepare, count = WRITES[what]
    write = prepare(store)
    before = _admin(postgres_schema_url, count)[0][0]
    relay.lose_next_commit_answer.set()
    first = write()
    assert relay.commits_lost == 1 and store.reconnects == 1
    assert _admin(postgres_schema_url, count) == [(before + 1,)]
    if what == "step":  # the caller got the step that is there, not a guess
        assert first == tuple(_admin(postgres_schema_url, "select id, number from steps")[-1])


# -- the server is away for a while ---------------------------------------------------------------


def test_a_store_call_waits_for_the_server_to_come_back(
    opened: Callable[..., PostgresStore], postgres_schema_url: str, relay: Relay
) -> None:
    clock = Ticking()
    store = opened(relay.url(postgres_schema_url), clock=clock, reconnect_within=30.0)
    _new_run(store)
    relay.down()
    clock.on_sleep = lambda n: relay.restore() if n == 3 else None
    store.update_run(RUN, status="ok")
    assert len(clock.slept) >= 3 and sum(clock.slept) < 30.0
    assert _admin(postgres_schema_url, "select status from runs") == [("ok",)]


def test_a_server_away_past_reconnect_within_is_one_sentence(
    opened: Callable[..., PostgresStore], postgres_schema_url: str, relay: Relay
) -> None:
    clock = Ticking()
    store = opened(relay.url(postgres_schema_url), clock=clock, reconnect_within=0.3)
    _new_run(store)
    relay.down()
    with pytest.raises(StoreError) as raised:
        store.update_run(RUN, status="ok")
    message = str(raised.value)
    assert message.startswith("agentguard lost the PostgreSQL server at 127.0.0.1:")
    assert "did not come back within" in message and "\n" not in message
    assert "sslmode" not in message and "options" not in message
    relay.restore()
    deadline = time.monotonic() + 30  # the pool reconnects in the background: wait for it
    while True:
        try:
            store.update_run(RUN, status="ok")
            break
        except StoreError:
            if time.monotonic() > deadline:
                raise
    assert _admin(postgres_schema_url, "select status from runs") == [("ok",)]


# -- a forked child --------------------------------------------------------------------------------


def test_a_forked_child_writes_on_connections_of_its_own(
    opened: Callable[..., PostgresStore], postgres_schema_url: str
) -> None:
    """Forked inside the parent's open transaction, the child's step is its own commit (seen
    at once by another connection), not a write into the parent's transaction over the
    parent's socket; and the parent's transaction and store carry on."""
    store = opened()
    _new_run(store)
    _new_run(store, "run-child")
    with store.write() as db:
        db.conn.execute("update runs set status = 'parent' where id = ?", [RUN])
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code, never raise past here
            code = 2
            try:
                step = {**_step(9), "run_id": "run-child"}
                store.begin_step(step, [], None)
                seen = _admin(postgres_schema_url, "select count(*) from steps")
                code = 0 if seen == [(1,)] else 1
                store.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    store.begin_step(_step(3), [], None)
    assert _admin(postgres_schema_url, "select id, status from runs order by id") == [
        ("run-child", "running"),
        (RUN, "parent"),
    ]
    assert _admin(postgres_schema_url, "select run_id, number from steps order by id") == [
        ("run-child", 1),
        (RUN, 1),
    ]


def test_store_connections_name_themselves_to_the_server(
    opened: Callable[..., PostgresStore], postgres_schema_url: str
) -> None:
    """An operator looking at pg_stat_activity sees which connections are agentguard's: the
    store's, `agentguard watch`'s reader and the status line's."""
    from agentguard.commands.statusline import open_reader as statusline_reader
    from agentguard.tui.data import PostgresReader

    store = opened()
    _new_run(store)
    names = _admin(
        postgres_schema_url,
        "select count(*) from pg_stat_activity where application_name = 'agentguard'",
    )
    assert names[0][0] >= 1
    reader = PostgresReader(postgres_schema_url)
    line = statusline_reader(store=postgres_schema_url)
    assert line is not None
    try:
        assert reader.query("show application_name") == [{"application_name": "agentguard"}]
        assert (
            line.execute("show application_name", []).fetchone()["application_name"] == "agentguard"
        )
    finally:
        reader.close()
        line.close()


# -- a whole guarded run ---------------------------------------------------------------------


def test_a_guarded_run_goes_on_when_its_backend_is_killed_mid_step(
    postgres_schema_url: str,
    monkeypatch: pytest.MonkeyPatch,
    fake: FakeProvider,
    guarded: Any,
) -> None:
    """The server kills the agent's backend while it writes the second step's attempt: the
    step goes on, and the run has two steps and two attempts, none twice."""
    monkeypatch.setenv("AGENTGUARD_STORE", postgres_schema_url)
    client = guarded(policy="public_chat")
    # its store waits for a lost server as long as one of its steps may take
    assert client.agentguard.store.reconnect_within == 30.0
    client.messages.create(model="claude-opus-4-7", max_tokens=16, messages=[user("one")])
    _kill_once_on(postgres_schema_url, "attempts")
    client.messages.create(model="claude-opus-4-7", max_tokens=16, messages=[user("two")])
    run_id = client.run_id
    store = client.agentguard.store
    assert store.reconnects >= 1
    client.agentguard.close()
    with pytest.raises(StoreError, match="was closed"):  # its pool ended with the run
        store.query("select 1")
    steps = _admin(postgres_schema_url, f"select number, status from steps where run_id='{run_id}'")
    assert sorted(steps) == [(1, "ok"), (2, "ok")]
    attempts = _admin(postgres_schema_url, "select step_id, outcome from attempts order by id")
    assert [o for _, o in attempts] == ["ok", "ok"] and len({s for s, _ in attempts}) == 2
    assert len(fake.requests) == 2  # no request was sent twice
