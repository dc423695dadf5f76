"""One SQLite connection per database file per process: nothing committed is ever lost.

On Linux and macOS, closing *any* descriptor of a file drops every POSIX lock the process holds
on it. A second store in one process that opened the database file with its own descriptor
silently cancelled the first connection's locks; another process then believed it was the last
connection, checkpointed and deleted the -wal file the first still wrote into, and a SIGKILL
lost every step committed afterwards. These tests replay that through the public API.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from agentguard.errors import StoreError
from agentguard.store import DB_NAME, Store
from agentguard.testing import FakeProvider, ok
from tests.conftest import API_KEY

ROOT = Path(__file__).resolve().parents[1]

# An agent process with two guarded clients (two `wrap()` calls: two stores in one process).
# It takes its orders on stdin: "step N" makes one guarded call with the first client.
AGENT = textwrap.dedent(
    """
    import sys
    from anthropic import Anthropic
    import agentguard

    base_url, project = sys.argv[1], sys.argv[2]

    def client():
        raw = Anthropic(base_url=base_url, api_key={key!r}, max_retries=0)
        return agentguard.wrap(raw, project=project, snapshots=False)

    first = client()
    first.messages.create(
        model="claude-opus-4-7", max_tokens=64,
        messages=[{{"role": "user", "content": "step 1"}}],
    )
    second = client()  # the second store in this process
    print(first.run_id, flush=True)
    for line in sys.stdin:
        number = line.split()[1]
        first.messages.create(
            model="claude-opus-4-7", max_tokens=64,
            messages=[{{"role": "user", "content": "step " + number}}],
        )
        print("done", number, flush=True)
    """
).format(key=API_KEY)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTGUARD_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "agentguard.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_two_clients_in_one_process_then_a_reader_then_sigkill_loses_nothing(
    fake: FakeProvider, home: Path, project: Path
) -> None:
    fake.script(*(ok() for _ in range(4)))
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, fake.base_url, str(project)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENTGUARD_HOME": str(home)},
    )
    assert agent.stdin is not None and agent.stdout is not None
    try:
        run_id = agent.stdout.readline().strip()
        assert run_id, agent.communicate(timeout=30)[1]
        db = home / DB_NAME
        wal = db.with_name(DB_NAME + "-wal")
        inode = wal.stat().st_ino

        # Another process lists the runs (opens, reads, closes the store) while A is alive.
        listed = _cli(home, "runs", "--json")
        assert listed.returncode == 0, listed.stderr
        assert run_id in listed.stdout
        assert wal.exists() and wal.stat().st_ino == inode, "the -wal file was unlinked"

        agent.stdin.write("step 2\n")
        agent.stdin.flush()
        assert agent.stdout.readline().split() == ["done", "2"]

        # A third process must see step 2 while A is still alive …
        shown = _cli(home, "show", run_id, "--json")
        assert shown.returncode == 0, shown.stderr
        assert len(json.loads(shown.stdout)["steps"]) == 2
        assert wal.exists() and wal.stat().st_ino == inode, "the -wal file was unlinked"
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.communicate(timeout=30)

    # … and after A is killed, every step it committed is in the file.
    steps = _rows(
        db, "select number, status from steps where run_id = ? order by number", (run_id,)
    )
    assert steps == [(1, "ok"), (2, "ok")]
    attempts = _rows(
        db,
        "select count(*) from attempts where step_id in (select id from steps where run_id = ?)",
        (run_id,),
    )
    assert attempts == [(2,)]
    assert _rows(db, "pragma integrity_check") == [("ok",)]


def test_every_store_in_a_process_shares_one_connection(home: Path) -> None:
    first = Store.open(home)
    second = Store.open(home)
    third = Store(str(home / ".." / home.name / DB_NAME))  # another spelling, the same file
    assert first.db.conn is second.db.conn is third.db.conn
    second.close()
    third.close()
    first.insert_event("r", "kind", {}, at=1.0, step_id=None)  # still open for the first
    assert first.query("select count(*) as n from events")[0]["n"] == 1
    first.close()
    with pytest.raises(StoreError, match="closed"):
        first.query("select 1")
    fresh = Store.open(home)  # opening again after the last close makes a new connection
    assert fresh.query("select count(*) as n from events")[0]["n"] == 1


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], str | bytes | os.PathLike):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.mark.parametrize("exists", [False, True])
def test_the_store_never_opens_the_database_file_itself(home: Path, exists: bool) -> None:
    """Only SQLite opens the file once it exists: no descriptor of ours whose close would drop
    the locks of a connection; a new file is created (0600) before any connection exists."""
    global _OPENED
    if exists:
        Store.open(home).close()
    _OPENED = []
    try:
        Store.open(home).query("select 1")
        opened, _OPENED = _OPENED, None
    finally:
        _OPENED = None
    ours = [p for p in opened if Path(p).name.startswith(DB_NAME)]
    assert ours == ([] if exists else [str(home / DB_NAME)])


def test_threads_opening_stores_concurrently_share_and_commit(home: Path) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            store = Store.open(home)
            for i in range(20):
                store.insert_event(f"run{n}", "tick", {"i": i}, at=float(i), step_id=None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _rows(home / DB_NAME, "select count(*) from events") == [(160,)]


FRESH = textwrap.dedent(
    """
    import sys
    from agentguard.store import Store
    from agentguard.errors import StoreError
    print("ready", flush=True)
    sys.stdin.readline()  # every process is started before the first one opens
    try:
        store = Store(sys.argv[1])
        store.insert_event("r", "hello", {}, at=0.0, step_id=None)
    except StoreError as exc:
        print("ERROR", exc, flush=True)
        sys.exit(3)
    print("ok", flush=True)
    """
)


def test_many_processes_opening_a_fresh_store_at_once_are_never_told_it_is_damaged(
    tmp_path: Path,
) -> None:
    db = tmp_path / "fresh" / DB_NAME
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FRESH, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(48)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outcomes = [p.communicate(timeout=120) for p in procs]
    failures = [(p.returncode, out, err) for p, (out, err) in zip(procs, outcomes, strict=True)]
    failures = [f for f in failures if f[0] != 0]
    assert not failures, failures[:3]
    assert _rows(db, "select count(*) from events") == [(48,)]
    assert _rows(db, "pragma journal_mode") == [("wal",)]
