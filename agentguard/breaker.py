"""Per-route overload breaker, shared through the store by every agent process on the machine.

Why: when a provider answers 529 for minutes, every step of every agent retrying it multiplies
the load on an already overloaded service (a plain tier chain sends it a request per step).
Once a route has answered *only* overload/server errors for `open_after` seconds (and at least
`min_failures` times), the breaker opens: steps skip the route, and one probe per `cooldown`
— from all processes together — finds out when it recovers. A successful probe closes it at once.

A short blip (shorter than `open_after`) never opens it, so steps keep retrying the primary
through blips instead of substituting a different model. While a step backs off, the breaker
row is also how agents hear from each other: an answer to a request sent after the step's own
failure means the route is back (retry now, `recovered_since`), and a newer failure
(`last_failure_at`) means it is still down: one more request would only add load.

State lives in the `route_health` table (one row per route). Reads are plain SELECTs (WAL:
they never wait for a writer); every change is one IMMEDIATE transaction, so concurrent
processes see each other's failures and never lose an update.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agentguard.clock import Clock
from agentguard.store import Store
from agentguard.store_pg_changes import ROUTES_CHANNEL

# A success on a clean route refreshes `last_success_at` at most this often, so the hot path
# of a healthy route is a read, not a write transaction.
_SUCCESS_REFRESH_S = 1.0


@dataclass(frozen=True)
class BreakerSettings:
    """When a route counts as down, and how often it is probed while down."""

    open_after: float = 2.0  # seconds of only overload/server errors (no success) before opening
    min_failures: int = 3  # ... and at least this many such failures (from any process)
    cooldown: float = 2.0  # while open, one probe every `cooldown` s across all processes
    forget_after: float = 30.0  # a streak with no new failure for this long is forgotten
    max_retry_after: float = 60.0  # a server's retry-after delays probes by at most this much


class Admission(StrEnum):
    CLOSED = "closed"  # send normally
    PROBE = "probe"  # the route is open, and this caller won the probe slot: send one request
    OPEN = "open"  # the route is open: skip it


@dataclass(frozen=True)
class RouteHealth:
    """A route's breaker as the TUI and error messages show it."""

    route: str
    state: str  # closed | open
    failures: int
    first_failure_at: float | None
    last_failure_at: float | None
    open_since: float | None
    next_probe_at: float | None
    last_success_at: float | None


class Breaker:
    """The breaker of every route, backed by the shared store."""

    def __init__(self, store: Store, clock: Clock, settings: BreakerSettings | None = None) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings or BreakerSettings()

    # -- the hot path ------------------------------------------------------------------------

    def admit(self, route: str) -> Admission:
        """May a request go to `route` now? One read; a write only to claim a due probe."""
        row = self._row(route)
        if row is None or row["state"] != "open":
            return Admission.CLOSED
        now = self.clock.now()
        due = row["next_probe_at"]
        if due is not None and now < due:
            return Admission.OPEN
        return Admission.PROBE if self._claim(route, due, now) else Admission.OPEN

    def _claim(self, route: str, seen: float | None, now: float) -> bool:
        """Take the due probe slot: a compare-and-set on `next_probe_at`.

        The UPDATE only matches while `next_probe_at` still holds the value this caller read,
        and the winner moves it to `now + cooldown`; the store serialises writers, so of all the
        callers (threads or processes) that saw the same due slot exactly one gets rowcount 1.
        (`is not distinct from`: SQLite's `is` for a value that may be null, in portable SQL.)
        """

        def claim(db: Any) -> bool:
            cursor = db.conn.execute(
                "update route_health set next_probe_at = ?, updated_at = ? "
                "where route = ? and state = 'open' and next_probe_at is not distinct from ? "
                "and coalesce(next_probe_at, 0) <= ?",
                [now + self.settings.cooldown, now, route, seen, now],
            )
            return cursor.rowcount == 1

        return self.store.transact(claim)

    def claim_decider(self, route: str, *, lease: float) -> bool:
        """Take the one retry that decides a due failure streak (see `Guard._back_off`): a
        compare-and-set on `decider_until`, as `_claim` does for probes, so of all the steps on
        all the machines backing off this route, one sends and the others hold. The claim
        lapses after `lease` seconds, in case its step never comes back."""
        now = self.clock.now()

        def claim(db: Any) -> bool:
            cursor = db.conn.execute(
                "update route_health set decider_until = ? where route = ? and state = 'closed' "
                "and coalesce(decider_until, 0) <= ?",
                [now + lease, route, now],
            )
            return cursor.rowcount == 1

        return self.store.transact(claim)

    def record_success(self, route: str, *, sent_at: float | None = None) -> None:
        """The route answered: close the breaker and end the failure streak.

        `sent_at` (when the request was sent) keeps a straggler sent before the breaker opened
        from closing it: an answer to an old request does not prove the route has recovered.
        """
        now = self.clock.now()
        sent = now if sent_at is None else sent_at
        row = self._row(route)
        if (
            row is not None
            and row["state"] == "closed"
            and not row["failures"]
            and row["last_success_at"] is not None
            and now - row["last_success_at"] < _SUCCESS_REFRESH_S
        ):
            return  # already clean and recently stamped: no write on a healthy route

        def close(db: Any) -> None:
            # other machines' steps backing off this route wake on it (sent on commit)
            self.store.announce(ROUTES_CHANNEL, route)
            if sent_at is not None:
                cursor = db.conn.execute(
                    "update route_health set last_success_at = ?, updated_at = ? "
                    "where route = ? and state = 'open' and open_since > ?",
                    [now, now, route, sent_at],
                )
                if cursor.rowcount:
                    return
            db.conn.execute(
                "insert into route_health (route, state, failures, last_success_at, "
                "last_success_sent_at, updated_at) values (?, 'closed', 0, ?, ?, ?) "
                "on conflict (route) do update set "
                "state = 'closed', failures = 0, first_failure_at = null, open_since = null, "
                "next_probe_at = null, decider_until = null, "
                "last_success_at = excluded.last_success_at, "
                "last_success_sent_at = case "
                "when coalesce(route_health.last_success_sent_at, 0) "
                "> excluded.last_success_sent_at "
                "then coalesce(route_health.last_success_sent_at, 0) "
                "else excluded.last_success_sent_at end, updated_at = excluded.updated_at",
                [route, now, sent, now],
            )

        self.store.transact(close)

    def record_failure(self, route: str, *, retry_after: float | None = None) -> None:
        """An overload-type failure (529, 5xx, network): extend the streak, maybe open.

        While open (a failed probe, or a request that was already in flight), the breaker stays
        open and the next probe waits at least `cooldown` — longer if the server sent
        retry-after (capped at `max_retry_after`).
        """
        s = self.settings
        wait = s.cooldown
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, s.max_retry_after))

        def record(db: Any) -> None:
            now = self.clock.now()
            rows = list(db.query("select * from route_health where route = ?", [route]))
            row: dict[str, Any] = rows[0] if rows else {"state": "closed", "failures": 0}
            failures = row.get("failures") or 0
            first = row.get("first_failure_at")
            last = row.get("last_failure_at")
            open_since = row.get("open_since")
            next_probe = row.get("next_probe_at")
            state = row.get("state") or "closed"
            if state == "open":
                failures += 1
                next_probe = max(next_probe or now, now + wait)
            else:
                if not failures or first is None or last is None or now - last > s.forget_after:
                    failures, first = 1, now  # a new streak
                else:
                    failures += 1
                if now - first >= s.open_after and failures >= s.min_failures:
                    state, open_since, next_probe = "open", now, now + wait
                    # every machine's steps about to send to it look again (sent on commit)
                    self.store.announce(ROUTES_CHANNEL, route)
            db.conn.execute(
                "insert into route_health (route, state, failures, first_failure_at, "
                "last_failure_at, open_since, next_probe_at, last_success_at, updated_at) "
                "values (?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict (route) do update set "
                "state = excluded.state, failures = excluded.failures, "
                "first_failure_at = excluded.first_failure_at, "
                "last_failure_at = excluded.last_failure_at, open_since = excluded.open_since, "
                "next_probe_at = excluded.next_probe_at, updated_at = excluded.updated_at",
                [
                    route,
                    state,
                    failures,
                    first,
                    now,
                    open_since,
                    next_probe,
                    row.get("last_success_at"),
                    now,
                ],
            )

        self.store.transact(record)

    # -- what a step backing off hears from the other agents -----------------------------------

    def recovered_since(self, route: str, sent_at: float) -> bool:
        """Has the route answered a request sent after `sent_at` (by any agent)?"""
        row = self._row(route)
        return bool(row and (row["last_success_sent_at"] or 0) > sent_at)

    # -- what the TUI and errors show --------------------------------------------------------

    def health(self, route: str) -> RouteHealth:
        row = self._row(route)
        if row is None:
            return RouteHealth(route, "closed", 0, None, None, None, None, None)
        return self._health(row)

    def all_health(self) -> list[RouteHealth]:
        rows = self.store.query("select * from route_health order by route")
        return [self._health(row) for row in rows]

    def next_probe_at(self, route: str) -> float | None:
        """When an open route will next be probed (None when it is closed)."""
        row = self._row(route)
        if row is None or row["state"] != "open":
            return None
        return row["next_probe_at"]

    # -- internals ---------------------------------------------------------------------------

    def _row(self, route: str) -> dict[str, Any] | None:
        rows = self.store.query("select * from route_health where route = ?", [route])
        return rows[0] if rows else None

    def _health(self, row: dict[str, Any]) -> RouteHealth:
        failures, first = row["failures"] or 0, row["first_failure_at"]
        last = row["last_failure_at"]
        if (
            row["state"] != "open"
            and last is not None
            and self.clock.now() - last > self.settings.forget_after
        ):
            failures, first = 0, None  # a forgotten streak: the next failure starts anew
        return RouteHealth(
            route=row["route"],
            state=row["state"],
            failures=failures,
            first_failure_at=first,
            last_failure_at=last,
            open_since=row["open_since"],
            next_probe_at=row["next_probe_at"] if row["state"] == "open" else None,
            last_success_at=row["last_success_at"],
        )
