"""The store on real SQLite files: private, WAL, migrated, and honest about bad files.

The engine-neutral promises (migrated once, a newer schema refused) run on every engine
(`engine` in tests/conftest.py: SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agentguard.errors import StoreError
from agentguard.migrations import KNOWN
from agentguard.store import DB_NAME, Store
from tests.conftest import Engine

TABLES = {"runs", "steps", "attempts", "messages", "events", "blobs", "snapshots"}
TABLES |= {"route_health", "route_traffic"}
NEWER = r"written by a newer agentguard .*upgrade agentguard"


def _tables(engine: Engine) -> set[str]:
    conn = engine.connect()
    try:
        if engine.name == "sqlite":
            sql = "select name from sqlite_master where type = 'table'"
        else:
            sql = "select table_name from information_schema.tables "
            sql += "where table_schema = current_schema()"
        return {row[0] for row in conn.execute(sql).fetchall()}
    finally:
        conn.close()


def _applied(engine: Engine) -> list[str]:
    conn = engine.connect()
    try:
        if engine.name == "sqlite":
            sql = "select name from _sqlite_migrations order by id"
        else:
            sql = "select name from agentguard_migrations order by applied_at, name"
        return [row[0] for row in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def _record_future_migration(engine: Engine) -> None:
    conn = engine.connect()
    try:
        if engine.name == "sqlite":
            conn.execute(
                "insert into _sqlite_migrations (migration_set, name, applied_at) "
                "values ('agentguard', 'm999_future', 'x')"
            )
        else:
            conn.execute(
                "insert into agentguard_migrations (name, applied_at) values ('m999_future', 0)"
            )
    finally:
        conn.close()


def test_a_new_store_is_migrated_once_on_every_engine(engine: Engine) -> None:
    engine.open().close()
    assert _tables(engine) >= TABLES
    engine.open().close()  # reopening applies nothing twice
    assert sorted(_applied(engine)) == sorted(KNOWN)
    assert len(_applied(engine)) == len(KNOWN)


def test_a_database_from_a_newer_agentguard_is_refused_on_every_engine(engine: Engine) -> None:
    engine.open().close()
    _record_future_migration(engine)
    with pytest.raises(
        StoreError, match=r"written by a newer agentguard .*upgrade agentguard"
    ) as e:
        engine.open()
    assert "\n" not in str(e.value)
    assert "m999_future" in str(e.value)


def test_a_new_store_is_private_wal_and_migrated(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "home")
    path = tmp_path / "home" / DB_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    assert store.query("pragma journal_mode")[0]["journal_mode"] == "wal"
    assert int(store.query("pragma busy_timeout")[0]["timeout"]) >= 10_000
    tables = set(store.db.table_names())
    assert {"runs", "steps", "attempts", "messages", "events", "blobs", "snapshots"} <= tables
    store.close()
    again = Store.open(tmp_path / "home")  # reopening applies nothing twice
    applied = [row["name"] for row in again.query("select name from _sqlite_migrations")]
    assert applied == KNOWN


def test_agentguard_home_env_var_is_honoured(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AGENTGUARD_HOME", str(tmp_path / "from-env"))
    store = Store.open()
    assert store.path == tmp_path / "from-env" / DB_NAME


def test_a_file_that_is_not_a_database_is_refused_and_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    bogus = home / DB_NAME
    bogus.write_bytes(b"this is my shopping list, not a database\n" * 20)
    advice = r"damaged or not a database \(SQLite.s integrity check: .*\); move it aside \(mv "
    with pytest.raises(StoreError, match=advice) as e:
        Store.open(home)
    assert "\n" not in str(e.value)
    assert bogus.read_bytes().startswith(b"this is my shopping list")


def test_a_corrupted_database_is_refused_and_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Store.open(home).close()
    path = home / DB_NAME
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # keep the header, trash the schema page
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(StoreError, match="damaged or not a database"):
        Store.open(home)
    assert path.read_bytes() == before


def test_an_unwritable_home_says_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match=r"cannot write to its data folder .*set AGENTGUARD_HOME"):
        Store.open(blocker / "home")
    assert blocker.read_text() == "not a folder"


def test_the_wal_is_checkpointed_at_step_ends_not_inside_a_commit(tmp_path: Path) -> None:
    """SQLite's automatic checkpoint is off (it landed on a step's first commit, 10–15 ms on
    its critical path); the store checkpoints every CHECKPOINT_EVERY_STEPS step ends instead,
    so the WAL stays about that many steps long (without it: ~29 MB after these 1,000)."""
    store = Store(tmp_path / "agentguard.db")
    assert store.query("PRAGMA wal_autocheckpoint")[0]["wal_autocheckpoint"] == 0
    store.insert_run({"id": "r", "status": "running", "created_at": 1.0, "updated_at": 1.0})
    big = [{"position": 0, "role": "user", "content": json.dumps("x" * 3000), "sha": "s"}]
    for i in range(1000):
        step = {"run_id": "r", "status": "running", "started_at": float(i), "request": "q"}
        step_id, _ = store.begin_step(step, big, None)
        store.finish_step(step_id, {"status": "ok"}, "r", {"updated_at": float(i)})
    assert (tmp_path / "agentguard.db-wal").stat().st_size < 4_000_000
    assert len(store.steps("r")) == 1000
    store.close()
