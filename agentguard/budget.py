"""Retry budget: client-side throttling of retries, shared through the store.

Why: under a partial overload every failed request that is retried adds load exactly when the
service has least to spare; with many agents retrying, retries alone can keep it overloaded.
As in the SRE book's adaptive throttling, Finagle's RetryBudget and gRPC's retry throttling,
retries on a route may be at most `ratio` of its recent first tries, plus `min_retries` per
window so a quiet route can still retry a lone failure.

Every request sent is one small INSERT into `route_traffic` (route, at, retry); the budget is a
COUNT over the last `window` seconds, read from a covering index. Every `prune_every`-th row
(by its id, so across all processes together) also deletes the rows that have left the window,
which keeps the table at about one window of traffic.

Races: `allow_retry` followed by `note` is check-then-act, so processes asking at the same
moment may all see the last unit of budget and all retry. The overshoot is bounded by the
number of processes asking at once (a handful on one machine) and is gone from the next count
on; `acquire_retry` does check-and-note in one IMMEDIATE transaction when that matters.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from agentguard.clock import Clock
from agentguard.store import Store


@dataclass(frozen=True)
class BudgetSettings:
    """How many retries a route may take, relative to its recent traffic."""

    ratio: float = 0.2  # retries may be at most this fraction of the window's first tries ...
    min_retries: int = 15  # ... plus this many per window, so a short blip can be ridden out
    window: float = 10.0  # seconds of history that count
    prune_every: int = 100  # every n-th row written also deletes rows older than the window


class RetryBudget:
    """The retry budget of every route, backed by the shared store."""

    def __init__(self, store: Store, clock: Clock, settings: BudgetSettings | None = None) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings or BudgetSettings()

    def note(self, route: str, *, retry: bool) -> None:
        """Record one request sent on `route`: before sending, or (a step on an event loop,
        `Guard._when_sent`) just after the request is on its way — either way before its
        answer can ask for a retry."""
        now = self.clock.now()
        prune = self.store.transact(
            lambda db: self._insert(db.conn, route, now, retry), one_statement=True
        )
        if prune:  # a transaction of its own: the insert's needs no savepoint
            self.store.transact(lambda db: self._prune(db.conn, now), one_statement=True)

    def allow_retry(self, route: str) -> bool:
        """May one more retry be sent on `route` now? (Check-then-act: see the module doc.)"""
        first, retries = self.usage(route)
        return self._allows(first, retries)

    def acquire_retry(self, route: str) -> bool:
        """Check the budget and, if it allows, note the retry, in one transaction (no overshoot)."""
        now = self.clock.now()

        def take(db: Any) -> bool:
            first, retries = self._usage(route, now)
            if not self._allows(first, retries):
                return False
            if self._insert(db.conn, route, now, True):
                self._prune(db.conn, now)
            return True

        return self.store.transact(take)

    def usage(self, route: str) -> tuple[int, int]:
        """(first tries, retries) sent on `route` within the window."""
        return self._usage(route, self.clock.now())

    # -- internals ---------------------------------------------------------------------------

    def _allows(self, first: int, retries: int) -> bool:
        return retries < self.settings.min_retries + self.settings.ratio * first

    def _usage(self, route: str, now: float) -> tuple[int, int]:
        [row] = self.store.query(
            "select count(*) as total, coalesce(sum(retry), 0) as retries from route_traffic "
            "where route = ? and at > ?",
            [route, now - self.settings.window],
        )
        return int(row["total"]) - int(row["retries"]), int(row["retries"])

    def _insert(self, conn: sqlite3.Connection, route: str, now: float, retry: bool) -> bool:
        """One row, one statement; True when rows past the window are due to be pruned."""
        # `returning id`, not `lastrowid`: one round trip on PostgreSQL, where lastrowid is a
        # second query
        (row_id,) = conn.execute(
            "insert into route_traffic (route, at, retry) values (?, ?, ?) returning id",
            [route, now, int(retry)],
        ).fetchone()
        return (row_id or 0) % max(1, self.settings.prune_every) == 0

    def _prune(self, conn: sqlite3.Connection, now: float) -> None:
        conn.execute("delete from route_traffic where at <= ?", [now - self.settings.window])
