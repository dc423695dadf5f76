"""SQLite-style SQL on a psycopg connection, so the callers that write through the store's
`write()` (the breaker, the budget, resume) send the same SQL to either engine: `?`
placeholders, `db.conn.execute(...)`, `db.query(...)`, `db[table].update(pk, fields)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

from agentguard.store import dumps

try:
    from psycopg.rows import dict_row
except ImportError:  # pragma: no cover - exercised only without the extra
    dict_row = None  # type: ignore[assignment]


class Transaction:
    """What `write()` yields: `.conn` takes the `?`-SQL the callers already send, `.query`
    gives dict rows (as sqlite-utils' Database does)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.conn = Connection(raw)
        self.locked = False

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Iterator[dict]:
        text, values = translate(sql, params)
        with self.raw.cursor(row_factory=dict_row) as cur:
            cur.execute(text, values)
            rows = cur.fetchall() if cur.description else []
        yield from rows

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        return self.conn.execute(sql, params)

    def __getitem__(self, table: str) -> Table:
        return Table(self.raw, table)


# Each table's primary key, for sqlite-utils' `db[table].update(pk, fields)` that callers use.
_KEYS = {"snapshots": "commit_sha", "blobs": "sha", "route_health": "route"}


class Table:
    """The one sqlite-utils table call the callers make inside `write()`: `update(pk, {...})`."""

    def __init__(self, raw: Any, name: str) -> None:
        self.raw = raw
        self.name = name

    def update(self, pk: Any, updates: dict[str, Any]) -> Table:
        update_row(self.raw, self.name, _KEYS.get(self.name, "id"), pk, updates)
        return self


class Connection:
    """A DB-API-like face over a psycopg connection for SQLite-style SQL."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        text, values = translate(sql, params)
        cur = self.raw.cursor()
        cur.execute(text, values)
        return Cursor(cur, text)

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> Cursor:
        text, _ = translate(sql, ())
        cur = self.raw.cursor()
        cur.executemany(text, [_params(p) for p in seq])
        return Cursor(cur, text)


class Cursor:
    """fetchone / fetchall / rowcount / iteration, and `lastrowid` after an INSERT (the id
    the insert drew from its identity sequence, asked for only when read)."""

    def __init__(self, cur: Any, sql: str) -> None:
        self._cur = cur
        self._sql = sql

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    @property
    def description(self) -> Any:
        return self._cur.description

    @property
    def lastrowid(self) -> int | None:
        if not self._sql.lstrip().lower().startswith("insert"):
            return None
        (value,) = self._cur.connection.execute("select lastval()").fetchone()
        return int(value)

    def fetchone(self) -> tuple | None:
        return self._cur.fetchone() if self._cur.description else None

    def fetchall(self) -> list[tuple]:
        return self._cur.fetchall() if self._cur.description else []

    def __iter__(self) -> Iterator[tuple]:
        return iter(self.fetchall())

    def close(self) -> None:
        self._cur.close()


# -- SQL translation ------------------------------------------------------------------------------

_NAMED = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")


def translate(
    sql: str, params: Sequence[Any] | dict[str, Any] = ()
) -> tuple[str, list[Any] | dict[str, Any]]:
    """SQLite-style SQL and parameters → psycopg's: `?` → `%s` (`:name` → `%(name)s` when the
    parameters are a dict), a literal `%` doubled; quoted strings and names left alone."""
    if isinstance(params, dict):
        return _translate(sql, True), {k: _param(v) for k, v in params.items()}
    return _translate(sql, False), _params(params)


@lru_cache(maxsize=512)
def _translate(sql: str, named: bool) -> str:
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":  # a quoted string or name: copy it through its closing quote
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # a doubled quote inside
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
        elif ch == "?" and not named:
            out.append("%s")
            i += 1
        elif ch == ":" and named and (m := _NAMED.match(sql, i)) and sql[i - 1 : i] != ":":
            out.append(f"%({m.group(1)})s")
            i = m.end()
        elif ch == "%":
            out.append("%%")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _param(value: Any) -> Any:
    """A parameter as SQLite would bind it: a bool is the integer 0 or 1."""
    return int(value) if isinstance(value, bool) else value


def _params(params: Iterable[Any]) -> list[Any]:
    return [_param(v) for v in params]


def row_values(values: Iterable[Any]) -> list[Any]:
    """A row's values as store.py's `_value` writes them: lists and dicts as JSON text."""
    return [dumps(v) if isinstance(v, dict | list | tuple) else _param(v) for v in values]


def take_write_lock(tx: Transaction, key: int) -> Transaction:
    """Take the fleet-wide writers' lock for `tx` once (see the module: SQLite's one writer)."""
    if not tx.locked:
        tx.raw.execute("select pg_advisory_xact_lock(%s)", [key])
        tx.locked = True
    return tx


def exists(tx: Transaction, sql: str, params: Sequence[Any]) -> bool | None:
    """True if `sql` finds a row, None if not (`_run`'s "already there?" answer)."""
    return True if tx.raw.execute(sql, list(params)).fetchone() else None


def insert_row(conn: Any, table: str, row: dict[str, Any], *, returning: bool = False) -> int:
    names = ", ".join(f'"{name}"' for name in row)
    sql = f'insert into "{table}" ({names}) values ({", ".join(["%s"] * len(row))})'
    cur = conn.execute(sql + (" returning id" if returning else ""), row_values(row.values()))
    return int(cur.fetchone()[0]) if returning else 0


def update_row(conn: Any, table: str, key: str, value: Any, fields: dict[str, Any]) -> None:
    if not fields:
        return
    assignments = ", ".join(f'"{name}" = %s' for name in fields)
    conn.execute(
        f'update "{table}" set {assignments} where "{key}" = %s',
        [*row_values(fields.values()), value],
    )
