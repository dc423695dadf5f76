"""Every store promise, tried on both engines (SQLite and PostgreSQL; see `engine` in conftest).

Each test tries to break one promise a caller relies on: a step number taken inside the write
(concurrent threads and processes continuing one run), an attempt written before it is sent,
a large compressed message kept byte for byte, the `?`-SQL the breaker and the budget send,
and errors that are one sentence a person can act on.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from anthropic import Anthropic

import agentguard
from agentguard import migrations, migrations_pg
from agentguard.breaker import Admission, Breaker, BreakerSettings
from agentguard.budget import BudgetSettings, RetryBudget
from agentguard.clock import FakeClock
from agentguard.errors import StoreError
from agentguard.resuming import mark_interrupted
from agentguard.store import Store, open_store, unpack
from agentguard.store_pg import PostgresStore, translate
from agentguard.testing import FakeProvider, ok
from agentguard.testing.script import Turn
from tests.conftest import API_KEY, Engine

ROOT = Path(__file__).resolve().parents[1]


def _run(store: Any, run_id: str = "run-1") -> str:
    store.insert_run({"id": run_id, "status": "running", "created_at": 1.0, "policy": {"p": 1}})
    return run_id


def _step(run_id: str, parent: int | None = None, base_len: int = 0) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "parent_id": parent,
        "base_len": base_len,
        "status": "pending",
        "stream": False,
        "started_at": 2.0,
    }


def _message(position: int, content: Any) -> dict[str, Any]:
    text = json.dumps({"role": "user", "content": content}, ensure_ascii=False)
    return {"position": position, "role": "user", "content": text, "sha": f"sha{position}"}


# -- the schema -----------------------------------------------------------------------------------


def test_postgres_migrations_are_the_sqlite_migrations_by_name() -> None:
    assert migrations_pg.KNOWN == migrations.KNOWN


def test_postgres_schema_has_the_sqlite_tables_columns_and_indexes(
    tmp_path: Path, postgres_schema_url: str
) -> None:
    Store(tmp_path / "s.db").close()
    lite = sqlite3.connect(tmp_path / "s.db")
    tables = [
        r[0]
        for r in lite.execute("select name from sqlite_master where type = 'table'")
        if not r[0].startswith(("_sqlite", "sqlite_"))
    ]
    sqlite_columns = {t: [r[1] for r in lite.execute(f'pragma table_info("{t}")')] for t in tables}
    sqlite_indexes = {
        r[0] for r in lite.execute("select name from sqlite_master where type = 'index'")
    }
    lite.close()
    PostgresStore(postgres_schema_url).close()
    import psycopg

    with psycopg.connect(postgres_schema_url) as conn:
        rows = conn.execute(
            "select table_name, column_name from information_schema.columns "
            "where table_schema = current_schema() order by table_name, ordinal_position"
        ).fetchall()
        pg_indexes = {
            r[0]
            for r in conn.execute(
                "select indexname from pg_indexes where schemaname = current_schema()"
            )
        }
    pg_columns: dict[str, list[str]] = {}
    for table, column in rows:
        pg_columns.setdefault(table, []).append(column)
    pg_columns.pop("agentguard_migrations")
    pg_messages = pg_columns.pop("messages")  # long JSON, compressed, in its own bytea column
    assert [c for c in pg_messages if c != "content_z"] == sqlite_columns.pop("messages")
    assert "content_z" in pg_messages
    assert pg_columns == sqlite_columns
    wanted = {name for name in sqlite_indexes if name.startswith("idx_") and "_sqlite" not in name}
    assert wanted <= pg_indexes


# -- every method, the same meaning ---------------------------------------------------------------


def test_runs_steps_attempts_events_and_snapshots_round_trip(any_store: Any) -> None:
    store = any_store
    run_id = _run(store)
    store.update_run(run_id, status="waiting", next_attempt_at=9.5)
    run = store.get_run(run_id)
    assert (run["status"], run["next_attempt_at"], run["policy"]) == ("waiting", 9.5, '{"p":1}')
    assert store.get_run("nope") is None

    first, n1 = store.begin_step(_step(run_id), [_message(0, "hi")], ("b1", '{"system":"s"}'))
    store.begin_step(_step(run_id), [], ("b1", '{"system":"s"}'))  # the same blob again is fine
    assert n1 == 1 and store.blob("b1") == {"system": "s"} and store.blob("none") is None
    store.update_step(first, status="ok", substituted=True, input_tokens=12)
    step = store.get_step(first)
    assert (step["status"], step["substituted"], step["input_tokens"], step["stream"]) == (
        "ok",
        1,
        12,
        0,
    )
    assert [s["number"] for s in store.steps(run_id)] == [1, 2]

    attempt = store.insert_attempt(
        {"run_id": run_id, "step_id": first, "number": 1, "outcome": "pending", "started_at": 3.0}
    )
    second = store.insert_attempt({"run_id": run_id, "step_id": first, "number": 2})
    assert isinstance(attempt, int) and second > attempt
    store.update_attempt(second, {"outcome": "retry", "status_code": 529})
    store.finish_step(
        first,
        {"status": "ok", "ended_at": 4.0, "latency_ms": 1.5},
        run_id,
        {"status": "running", "updated_at": 4.0},
        attempt=(attempt, {"outcome": "ok", "latency_ms": 1.25}),
    )
    assert [(a["number"], a["outcome"]) for a in store.attempts(first)] == [(1, "ok"), (2, "retry")]
    assert store.get_step(first)["latency_ms"] == 1.5
    assert store.get_run(run_id)["updated_at"] == 4.0

    store.insert_event(run_id, "substituted", {"to": "b", "why": "50% ?"}, at=5.0, step_id=first)
    store.insert_event(run_id, "ended", {}, at=6.0, step_id=None)
    events = store.events(run_id)
    assert [(e["kind"], json.loads(e["detail"])) for e in events] == [
        ("substituted", {"to": "b", "why": "50% ?"}),
        ("ended", {}),
    ]

    store.insert_snapshot({"commit_sha": "c1", "run_id": run_id, "kind": "checkpoint"})
    store.update_snapshot("c1", {"pruned_at": 7.0, "skipped": [{"path": "a"}]})
    snap = store.query("select * from snapshots where commit_sha = ?", ["c1"])[0]
    assert (snap["pruned_at"], snap["skipped"]) == (7.0, '[{"path":"a"}]')
    # insert_snapshot replaces the whole row, as SQLite's `insert or replace` does
    store.insert_snapshot({"commit_sha": "c1", "run_id": run_id, "kind": "backup"})
    snap = store.query("select * from snapshots where commit_sha = ?", ["c1"])[0]
    assert (snap["kind"], snap["pruned_at"], snap["skipped"]) == ("backup", None, None)


def test_a_large_compressed_conversation_round_trips_byte_for_byte(any_store: Any) -> None:
    store = any_store
    run_id = _run(store)
    big = "".join(f"line {i}: ünïcödé 50% done? 'quoted' \"x\" \\ ✓\n" for i in range(20_000))
    first, _ = store.begin_step(_step(run_id), [_message(0, "short"), _message(1, big)], None)
    # the child keeps the parent's first message, drops its second, adds two of its own
    child, _ = store.begin_step(
        _step(run_id, parent=first, base_len=1),
        [_message(1, big[::-1]), _message(2, "tail")],
        None,
    )
    rows = store.conversation_rows(child)
    assert [type(r["content"]) for r in rows] == [str, bytes, str]
    assert [r["sha"] for r in rows] == ["sha0", "sha1", "sha2"]
    assert unpack(rows[1]["content"]) == _message(1, big[::-1])["content"]
    assert store.conversation(child) == [
        {"role": "user", "content": "short"},
        {"role": "user", "content": big[::-1]},
        {"role": "user", "content": "tail"},
    ]
    assert store.conversation(first)[1]["content"] == big
    assert store.conversation(10**9) == []


# -- the step number is taken inside the transaction ----------------------------------------------


def test_threads_beginning_steps_on_one_run_get_numbers_1_to_n(engine: Engine) -> None:
    run_id = _run(engine.open())
    threads_n, steps_each = 8, 12
    start = threading.Barrier(threads_n)
    got: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        store = engine.open()  # PostgreSQL: its own pool; SQLite: the process's connection
        try:
            start.wait()
            for _ in range(steps_each):
                got.append(store.begin_step(_step(run_id), [_message(0, "x")], None)[1])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors[:2]
    assert sorted(got) == list(range(1, threads_n * steps_each + 1))
    numbers = [s["number"] for s in engine.open().steps(run_id)]
    assert numbers == list(range(1, threads_n * steps_each + 1))


CONTINUE = textwrap.dedent(
    """
    import sys
    from agentguard.store import Store, open_store

    engine, locator, home, run_id, count = sys.argv[1:6]
    store = Store(locator) if engine == "sqlite" else open_store(home, url=locator)
    print("ready", flush=True)
    sys.stdin.readline()  # every process is ready before the first begins a step
    step = {"run_id": run_id, "base_len": 0, "status": "pending"}
    for _ in range(int(count)):
        print(store.begin_step(step, [], None)[1], flush=True)
    store.close()
    """
)


def test_processes_continuing_one_run_never_write_the_same_number(engine: Engine) -> None:
    run_id = _run(engine.open())
    procs_n, steps_each = 4, 15
    args = [engine.name, engine.locator, str(engine.home), run_id, str(steps_each)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTINUE, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(procs_n)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", proc.communicate(timeout=30)[1]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outcomes = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outcomes, strict=True):
        assert proc.returncode == 0, err
    got = sorted(int(n) for out, _ in outcomes for n in out.split())
    assert got == list(range(1, procs_n * steps_each + 1))
    assert [s["number"] for s in engine.open().steps(run_id)] == got


# -- an attempt is written before it is sent ------------------------------------------------------


def test_an_attempt_is_visible_to_another_connection_while_the_call_is_in_flight(
    engine: Engine, fake: FakeProvider, project: Path, clock: FakeClock, monkeypatch
) -> None:
    """A real guarded call over the engine's store: while the fake provider holds the request,
    a separate connection (another process's view) already sees its attempt, pending."""
    store = engine.open()
    monkeypatch.setattr(Store, "open", classmethod(lambda cls, home=None: store))
    seen: list[list[tuple]] = []

    def model(request: Any) -> Turn:
        conn = engine.connect()
        try:
            rows = conn.execute("select number, outcome, model from attempts").fetchall()
            seen.append([tuple(r) for r in rows])
        finally:
            conn.close()
        return Turn(text="hello")

    fake.set_model(model)
    fake.script(ok())
    client = Anthropic(base_url=fake.base_url, api_key=API_KEY, max_retries=0)
    wrapped = agentguard.wrap(client, project=project, clock=clock, snapshots=False)
    try:
        reply = wrapped.messages.create(
            model="claude-opus-4-7",
            max_tokens=32,
            messages=[{"role": "user", "content": "hi"}],
        )
        run_id = wrapped.run_id
    finally:
        wrapped.agentguard.close()
    assert reply.content[0].text == "hello"
    assert seen == [[(1, "pending", "claude-opus-4-7")]]
    check = engine.open()
    [step] = check.steps(run_id)
    assert [a["outcome"] for a in check.attempts(step["id"])] == ["ok"]
    assert check.conversation(step["id"]) == [{"role": "user", "content": "hi"}]


# -- the callers' `?`-SQL -------------------------------------------------------------------------


def test_breaker_opens_probes_once_and_closes_on_every_engine(engine: Engine) -> None:
    clock = FakeClock()
    settings = BreakerSettings(open_after=2.0, min_failures=3, cooldown=5.0)
    breaker = Breaker(engine.open(), clock, settings)
    route = "anthropic/claude-opus-4-7"
    for _ in range(3):
        breaker.record_failure(route)
        clock.advance(1.0)
    assert breaker.health(route).state == "open"
    assert breaker.admit(route) is Admission.OPEN  # the first probe waits out the cooldown
    clock.advance(5.0)

    # Many agents (their own handles, threads) see the due probe at once: exactly one wins.
    contenders = [Breaker(engine.open(), clock, settings) for _ in range(6)]
    start = threading.Barrier(len(contenders))
    results: list[Admission] = []

    def admit(b: Breaker) -> None:
        start.wait()
        results.append(b.admit(route))

    threads = [threading.Thread(target=admit, args=(b,)) for b in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted([Admission.PROBE] + [Admission.OPEN] * 5)

    breaker.record_failure(route, retry_after=20.0)  # the probe failed: wait the server's word
    assert breaker.next_probe_at(route) == pytest.approx(clock.now() + 20.0)
    sent = clock.now()
    clock.advance(1.0)
    breaker.record_success(route, sent_at=sent - 100.0)  # an answer to an old request
    assert breaker.health(route).state == "open"
    breaker.record_success(route, sent_at=sent)
    assert breaker.health(route).state == "closed"
    assert breaker.recovered_since(route, sent - 1.0)
    breaker.record_success(route, sent_at=sent - 50.0)  # an older answer never moves it back
    clock.advance(2.0)
    breaker.record_success(route, sent_at=sent - 50.0)
    assert breaker.recovered_since(route, sent - 1.0)
    assert [h.route for h in breaker.all_health()] == [route]


def test_retry_budget_counts_prunes_and_acquires_on_every_engine(engine: Engine) -> None:
    clock = FakeClock()
    settings = BudgetSettings(ratio=0.5, min_retries=2, window=10.0, prune_every=3)
    budget = RetryBudget(engine.open(), clock, settings)
    route = "r"
    for _ in range(4):
        budget.note(route, retry=False)
    assert budget.usage(route) == (4, 0)
    granted = [budget.acquire_retry(route) for _ in range(6)]
    assert granted == [True] * 4 + [False] * 2  # 2 + 0.5 * 4 retries
    assert budget.usage(route) == (4, 4)
    assert not budget.allow_retry(route)
    clock.advance(11.0)  # the window has passed: the next pruning row deletes the old ones
    for _ in range(3):
        budget.note(route, retry=True)
    assert budget.usage(route) == (0, 3)
    [left] = engine.open().query("select count(*) as n from route_traffic")
    assert left["n"] < 11


def test_write_and_query_take_sqlite_style_sql_on_every_engine(any_store: Any) -> None:
    store = any_store
    _run(store)
    with store.write() as db:
        cur = db.conn.execute(
            "update runs set name = ? where id = ? and status like 'run%'", ["what? 100%", "run-1"]
        )
        assert cur.rowcount == 1
        db.conn.executemany(
            "insert into events (run_id, at, kind, detail) values (?, ?, ?, ?)",
            [("run-1", float(i), "tick", "{}") for i in range(3)],
        )
        rows = list(db.query("select name from runs where id = ?", ["run-1"]))
        assert rows == [{"name": "what? 100%"}]
        assert db.conn.execute("select count(*) from events").fetchone() == (3,)
        assert [tuple(r) for r in db.conn.execute("select kind from events order by at")] == [
            ("tick",)
        ] * 3
    assert store.query("select '?' as q, name from runs where id = ?", ["run-1"]) == [
        {"q": "?", "name": "what? 100%"}
    ]
    assert store.query("select id from runs where id = :id", {"id": "run-1"}) == [{"id": "run-1"}]
    with pytest.raises(RuntimeError), store.write() as db:  # a failed write leaves nothing
        db.conn.execute("update runs set name = 'lost' where id = ?", ["run-1"])
        raise RuntimeError("boom")
    assert store.get_run("run-1")["name"] == "what? 100%"


def test_a_dead_agents_run_is_marked_interrupted_on_every_engine(any_store: Any) -> None:
    """resuming.mark_interrupted: `db["runs"].update(...)` and `?`-SQL inside one write()."""
    from tests.conftest import dead_pid

    store = any_store
    store.insert_run(
        {"id": "gone", "status": "running", "pid": dead_pid(), "hostname": socket.gethostname()}
    )
    step_id, _ = store.begin_step(_step("gone"), [], None)
    store.insert_attempt({"run_id": "gone", "step_id": step_id, "number": 1, "outcome": "pending"})
    assert mark_interrupted(store) == ["gone"]
    assert store.get_run("gone")["status"] == "interrupted"
    assert store.get_step(step_id)["status"] == "interrupted"
    assert [a["outcome"] for a in store.attempts(step_id)] == ["interrupted"]


def test_translate_leaves_quoted_text_alone() -> None:
    sql, params = translate("select 'a?b' || \"c?\" from t where x = ? and y like '5%'", [True])
    assert sql == "select 'a?b' || \"c?\" from t where x = %s and y like '5%%'"
    assert params == [1]
    sql, _ = translate("select a::text from t where id = :id and 'x:y' = ?", {"id": 1})
    assert sql == "select a::text from t where id = %(id)s and 'x:y' = ?"


# -- choosing the engine, and errors in one sentence ----------------------------------------------


def test_open_store_picks_the_engine_from_the_url(
    home: Path, postgres_schema_url: str, monkeypatch
) -> None:
    monkeypatch.delenv("AGENTGUARD_STORE", raising=False)
    assert isinstance(open_store(home), Store)
    monkeypatch.setenv("AGENTGUARD_STORE", postgres_schema_url)
    chosen = open_store(home)
    try:
        assert isinstance(chosen, PostgresStore) and chosen.home == home
    finally:
        chosen.close()
    monkeypatch.setenv("AGENTGUARD_STORE", "mysql://me:hunter2@db/x")
    with pytest.raises(StoreError, match=r"must be a postgresql:// URL") as e:
        open_store(home)
    assert "hunter2" not in str(e.value)


def _one_sentence(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert message.rstrip().endswith(".")


def test_an_unreachable_server_is_one_sentence_without_the_password(home: Path) -> None:
    url = "postgresql://agent:hunter2-secret@127.0.0.1:1/fleet"
    with pytest.raises(StoreError) as e:
        open_store(home, url=url)
    message = str(e.value)
    _one_sentence(message)
    assert "cannot reach the PostgreSQL server at 127.0.0.1:1" in message
    assert "the store URL is right" in message and "hunter2" not in message


def test_a_missing_database_or_unknown_user_is_one_sentence(home: Path, postgres_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_url)
    where = f"{parts.hostname}:{parts.port or 5432}"
    missing = f"postgresql://{parts.username}@{where}/agentguard_no_such_db"
    with pytest.raises(StoreError, match=r"has no such database .*the store URL") as e:
        open_store(home, url=missing)
    _one_sentence(str(e.value))
    stranger = f"postgresql://agentguard_nobody:pw-s3cret@{where}/{parts.path.lstrip('/')}"
    with pytest.raises(StoreError, match=r"refused agentguard .*user and password") as e:
        open_store(home, url=stranger)
    _one_sentence(str(e.value))
    assert "pw-s3cret" not in str(e.value)


def test_without_psycopg_the_error_says_which_extra_to_install(home: Path, monkeypatch) -> None:
    import agentguard.store_pg as store_pg

    monkeypatch.setattr(store_pg, "psycopg", None)
    with pytest.raises(StoreError, match=r"install agentguard\[postgres\]") as e:
        open_store(home, url="postgresql://nobody@127.0.0.1:1/x")
    _one_sentence(str(e.value))


FRESH = textwrap.dedent(
    """
    import sys
    from agentguard.store import open_store
    from agentguard.errors import StoreError
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        open_store(sys.argv[2], url=sys.argv[1]).close()
    except StoreError as exc:
        print("ERROR", exc, flush=True)
        sys.exit(3)
    """
)


def test_processes_migrating_a_fresh_postgres_schema_at_once_all_succeed(
    postgres_schema_url: str, home: Path
) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FRESH, postgres_schema_url, str(home)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(8)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outcomes = [proc.communicate(timeout=120) for proc in procs]
    assert [p.returncode for p in procs] == [0] * 8, [o for o in outcomes if o[0] or o[1]][:2]
    import psycopg

    with psycopg.connect(postgres_schema_url) as conn:
        names = [r[0] for r in conn.execute("select name from agentguard_migrations")]
    assert sorted(names) == sorted(migrations.KNOWN)


def test_one_step_of_all_the_machines_takes_a_due_streaks_deciding_retry(engine: Engine) -> None:
    """`claim_decider` is a compare-and-set in the database: of eight handles (machines)
    asking at once exactly one wins, until its lease lapses or the route answers."""
    clock = FakeClock()
    breakers = [Breaker(engine.open(), clock) for _ in range(8)]
    breakers[0].record_failure("r")
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda b: b.claim_decider("r", lease=10.0), breakers))
    assert won.count(True) == 1
    assert not breakers[1].claim_decider("r", lease=10.0)
    clock.advance(10.0)  # the winner never came back: the claim lapses
    assert breakers[2].claim_decider("r", lease=10.0)
    breakers[3].record_success("r")  # the route answered: the next streak starts afresh
    breakers[3].record_failure("r")
    assert breakers[4].claim_decider("r", lease=10.0)
