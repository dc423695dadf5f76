"""What a proxied step does between a request's arrival and its send, and between the answer
and its hand-over, is the latency the proxy adds: only what must come first is there.

Before the send: the step's checkpoint rows and its attempt, one commit (a crash after the send
still finds the attempt). After the send, while the provider works: the retry budget's row (load
accounting, not the record of the work), the tree snapshot and the snapshot's row, written by
the snapshot thread. Before the answer goes: the snapshot joined (the client must not act on the
answer before the tree is kept) and a substitution's rows. Right after it — a whole answer's as
a stream's after its first content — the attempt's outcome and the step's end, one commit,
which a reader in the proxy's process waits for.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx2
import pytest

from agentguard.budget import RetryBudget
from agentguard.proxy import http_client
from agentguard.store import Store
from agentguard.testing import FakeProvider, RecordedRequest, Turn
from agentguard.tree_keeping import TreeKeeping
from tests.conftest import API_KEY, storm

OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
BODY = {"model": OPUS, "max_tokens": 64, "messages": [{"role": "user", "content": "fix it"}]}


def _ask(proxy: Any) -> httpx2.Response:
    with httpx2.Client(timeout=30) as client:
        response = client.post(f"{proxy.url}/v1/messages", json=BODY, headers=HEADERS)
    assert response.status_code == 200, response.text
    return response


def test_a_proxied_request_leaves_before_its_budget_row_and_its_snapshot_start(
    fake: FakeProvider, start_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    begin, note, start = (
        http_client._Connection.begin,
        RetryBudget.note,
        TreeKeeping._start_snapshot,
    )

    def sent(self: Any, data: bytes, *, head_only: bool) -> None:
        begin(self, data, head_only=head_only)
        order.append("request sent")

    def noted(self: Any, route: str, *, retry: bool) -> None:
        order.append("budget row")
        note(self, route, retry=retry)

    def started(self: Any, state: Any, *, delay: float = 0.0) -> None:
        if state.snapshot_job is not None:
            order.append("snapshot submitted")
        start(self, state, delay=delay)

    monkeypatch.setattr(http_client._Connection, "begin", sent)
    monkeypatch.setattr(RetryBudget, "note", noted)
    monkeypatch.setattr(TreeKeeping, "_start_snapshot", started)
    fake.set_model(lambda _request: Turn(text="fixed"))
    proxy = start_proxy()
    _ask(proxy)  # its upstream connection made (the loop turns while it connects)
    order.clear()
    _ask(proxy)  # on the kept-alive connection: sent without a turn of the loop
    assert order[0] == "request sent", order
    assert sorted(order) == ["budget row", "request sent", "snapshot submitted"]


def test_the_snapshots_row_is_written_while_the_call_is_out_not_after_the_answer(
    fake: FakeProvider, start_proxy: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = threading.Event()
    insert = Store.insert_snapshot

    def insert_snapshot(self: Store, row: dict[str, Any]) -> None:
        insert(self, row)
        recorded.set()

    monkeypatch.setattr(Store, "insert_snapshot", insert_snapshot)

    def model(_request: RecordedRequest) -> Turn:
        assert recorded.wait(timeout=30)  # the provider answers once the row is there
        return Turn(text="fixed")

    fake.set_model(model)
    proxy = start_proxy()
    statements: list[tuple[str, str]] = []
    store = Store.open(home)  # the process's one connection: the proxy's
    store.db.conn.set_trace_callback(
        lambda sql: statements.append((threading.current_thread().name, sql))
    )
    response = _ask(proxy)
    step = _step(store, response)  # a read: it waits for the rows written after the answer
    store.db.conn.set_trace_callback(None)

    # the transaction on the proxy's loop that ends the step: no snapshot row in it
    on_loop = [sql for thread, sql in statements if thread == "agentguard-proxy"]
    last_begin = max(i for i, sql in enumerate(on_loop) if sql == "BEGIN IMMEDIATE")
    ending = on_loop[last_begin:]
    assert any(sql.startswith('update "steps" set "status" = \'ok\'') for sql in ending), ending
    assert not any("snapshots" in sql for sql in ending), ending
    written = [t for t, sql in statements if sql.startswith('insert or replace into "snapshots"')]
    assert written and "agentguard-proxy" not in written, written
    # and it is there, the step's checkpoint, when the client has the answer
    snapshots = store.query("select * from snapshots where step_id = ?", [step["id"]])
    assert step["status"] == "ok" and [s["commit_sha"] for s in snapshots] == [step["checkpoint"]]


def test_a_snapshot_row_the_snapshot_thread_could_not_write_is_written_by_the_step(
    fake: FakeProvider, start_proxy: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert = Store.insert_snapshot
    refused: list[str] = []

    def insert_snapshot(self: Store, row: dict[str, Any]) -> None:
        if threading.current_thread().name != "agentguard-proxy" and not refused:
            refused.append(row["commit_sha"])
            raise sqlite_busy()
        insert(self, row)

    monkeypatch.setattr(Store, "insert_snapshot", insert_snapshot)
    fake.set_model(lambda _request: Turn(text="fixed"))
    response = _ask(start_proxy())
    store = Store.open(home)
    step = _step(store, response)
    snapshots = store.query("select * from snapshots where step_id = ?", [step["id"]])
    assert refused == [step["checkpoint"]]
    assert [s["commit_sha"] for s in snapshots] == [step["checkpoint"]]


def _step(store: Store, response: httpx2.Response) -> dict[str, Any]:
    [step] = store.query(
        "select * from steps where run_id = ? and number = ?",
        [response.headers["x-agentguard-run"], int(response.headers["x-agentguard-step"])],
    )
    return step


def sqlite_busy() -> Exception:
    import sqlite3

    return sqlite3.OperationalError("database is locked")


def test_a_reader_in_the_proxys_process_waits_for_the_rows_of_an_answer_handed_over(
    fake: FakeProvider, start_proxy: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client has the answer before its rows are written; a reader in the proxy's process
    (the TUI, an in-process caller) waits for them rather than find the step pending."""
    from agentguard.guard import Guard

    store = Store.open(home)
    seen: list[str] = []
    readers: list[threading.Thread] = []
    record = Guard.record_handed_over

    def record_handed_over(self: Guard, step_id: int) -> None:
        if step_id in self._unwritten:  # the answer is out, its rows not yet written
            reader = threading.Thread(target=lambda: seen.append(store.get_step(step_id)["status"]))
            reader.start()
            readers.append(reader)
            reader.join(timeout=0.5)  # it returns at once unless it waits for the rows
        record(self, step_id)

    monkeypatch.setattr(Guard, "record_handed_over", record_handed_over)
    fake.set_model(lambda _request: Turn(text="fixed"))
    response = _ask(start_proxy())
    assert _step(store, response)["status"] == "ok"  # a read: it waits for the hand-over's end
    for reader in readers:
        reader.join(timeout=30)
    assert len(readers) == 1 and seen == ["ok"]


def test_a_substitution_is_written_before_its_answer_goes_an_answer_of_its_own_after(
    fake: FakeProvider, start_proxy: Any, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never hidden: a step served by another model than asked has its rows written (and
    announced) before the answer is handed over; an ordinary step's follow the answer."""
    from agentguard.guard import Guard

    unwritten_at_hand_over: dict[str, bool] = {}
    record = Guard.record_handed_over

    def record_handed_over(self: Guard, step_id: int) -> None:
        model = self.store.get_step(step_id)["requested_model"]
        unwritten_at_hand_over.setdefault(model, step_id in self._unwritten)
        record(self, step_id)

    monkeypatch.setattr(Guard, "record_handed_over", record_handed_over)
    proxy = start_proxy(chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"])
    fake.script(*storm(), model=OPUS)
    substituted = _ask(proxy)
    assert substituted.headers["x-agentguard-served-model"] == SONNET
    store = Store.open(home)
    _step(store, substituted)  # a read: it waits for the hand-over's end
    assert unwritten_at_hand_over == {OPUS: False}  # written before the hand-over
    unwritten_at_hand_over.clear()  # the next step is asked of sonnet: served as asked
    fake.set_model(lambda _request: Turn(text="fixed"))
    with httpx2.Client(timeout=30) as client:
        body = {**BODY, "model": SONNET}
        ordinary = client.post(f"{proxy.url}/v1/messages", json=body, headers=HEADERS)
    assert ordinary.headers["x-agentguard-served-model"] == SONNET
    _step(store, ordinary)
    assert unwritten_at_hand_over == {SONNET: True}  # its rows followed the answer


def test_a_large_answer_its_client_does_not_read_never_holds_the_store(
    fake: FakeProvider, start_proxy: Any, home: Path
) -> None:
    """An answer too large for the socket to take at once is written after its rows: its write
    may wait for the client, and the store's other readers must not wait with it."""
    import json
    import select
    import socket

    fake.set_model(lambda _request: Turn(text="x" * (24 * 1024 * 1024)))
    proxy = start_proxy()
    body = json.dumps(BODY).encode()
    head = (
        f"POST /v1/messages HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"x-api-key: {API_KEY}\r\nanthropic-version: 2023-06-01\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    store = Store.open(home)
    with socket.create_connection(("127.0.0.1", proxy.port)) as client:
        client.sendall(head + body)
        readable, _, _ = select.select([client], [], [], 60)
        assert readable  # the answer is being handed over; the client reads none of it
        seen: list[str] = []
        reader = threading.Thread(
            target=lambda: seen.extend(r["status"] for r in store.query("select status from steps"))
        )
        reader.start()
        reader.join(timeout=10)
        assert not reader.is_alive(), "a reader waited for a client that does not read"
        assert seen == ["ok"]


# A proxy in a process of its own that SIGKILLs itself in the moment after an answer is handed
# over and before the rows saying it was served are written.
_DIES_AFTER_HAND_OVER = """
import os, signal, sys, threading
from agentguard.guard import Guard
from agentguard.proxy import ProxyOptions, ProxyThread

record = Guard.record_handed_over

def record_handed_over(self, step_id):
    if step_id in self._unwritten:  # the answer is out, its rows not yet written
        os.kill(os.getpid(), signal.SIGKILL)
    record(self, step_id)

Guard.record_handed_over = record_handed_over
project, home, upstream = sys.argv[1:4]
proxy = ProxyThread(ProxyOptions.build(project, home=home, upstream=upstream)).start()
print(proxy.url, flush=True)
threading.Event().wait()
"""


def test_a_proxy_killed_between_an_answer_and_its_rows_leaves_the_step_as_a_kill_in_the_call(
    fake: FakeProvider, project: Path, home: Path
) -> None:
    """The client has its whole answer; the proxy dies (SIGKILL) before writing the rows that
    say it was served. The store is whole, the request's attempt is there with its step and
    snapshot, and the next agentguard process finds them `interrupted`, as it would a step
    whose call was cut."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    from agentguard.resuming import mark_interrupted
    from agentguard.store import DB_NAME

    fake.set_model(lambda _request: Turn(text="fixed"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", _DIES_AFTER_HAND_OVER, str(project), str(home), fake.base_url],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()
        with httpx2.Client(timeout=30) as client:
            response = client.post(f"{url}/v1/messages", json=BODY, headers=HEADERS)
        assert response.status_code == 200
        assert response.json()["content"][0]["text"] == "fixed"  # whole, before the kill
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    with sqlite3.connect(home / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = Store.open(home)
    assert len(fake.requests) == 1  # one request sent: its attempt row is the one below
    step = _step(store, response)
    assert step["status"] == "pending"  # what a kill during the call leaves, too
    assert [a["outcome"] for a in store.attempts(step["id"])] == ["pending"]
    snapshots = store.query("select * from snapshots where step_id = ?", [step["id"]])
    assert len(snapshots) == 1  # the tree was kept while the call was out
    assert mark_interrupted(store) == [response.headers["x-agentguard-run"]]
    step = _step(store, response)
    assert step["status"] == "interrupted"
    assert [a["outcome"] for a in store.attempts(step["id"])] == ["interrupted"]
