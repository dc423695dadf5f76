"""Announcements between machines on a PostgreSQL store: LISTEN/NOTIFY.

A step backing off an overloaded route waits for any agent's answer from it (see
`Guard._back_off`); on one machine it asks the store every poll, across a fleet that would be
every agent on every machine querying the server 20 times a second. Instead a writer that
changes a route's health NOTIFYs (in its transaction: delivered on commit), and each process
keeps one LISTEN connection whose counter the waits watch in memory (`clock.Changes`); they
query the store only when it moves.

The run log announces itself the same way: triggers (migration m007) NOTIFY `CHANGES_CHANNEL`
from every transaction that writes runs, steps, attempts, events or snapshots while a watcher
is connected, with the schema's name as payload, so `agentguard watch` follows every machine's
agents by listening instead of querying the server every half second.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("agentguard")

ROUTES_CHANNEL = "agentguard_routes"
RECONNECT_S = 1.0

# The run log's channel, and the name prefix of a watcher's LISTEN connection ("agentguard
# watch SCHEMA"): writers notify only while a watcher of their schema is connected (NOTIFY
# serialises commits, not worth it when nobody listens). Both are written into migration m007's
# trigger: changing either needs a new migration.
CHANGES_CHANNEL = "agentguard_changes"
WATCHER_APPLICATION = "agentguard watch"


def watcher_application(schema: str) -> str:
    """The application_name of a watcher of `schema`, cut as PostgreSQL keeps it (63 bytes;
    m007's trigger cuts to 63 characters, the same for the ASCII names schemas have)."""
    return f"{WATCHER_APPLICATION} {schema}"[:63]


class Listener:
    """One LISTEN connection per store handle, on a daemon thread; `mark()` counts what it
    heard (and each reconnection, after which anything may have changed).

    With `payload`, only notifications carrying it count: a channel is database-wide, and
    stores in other schemas of the same database (another team's, a test's) announce on it
    too."""

    def __init__(
        self, connect: Any, channel: str = ROUTES_CHANNEL, payload: str | None = None
    ) -> None:
        self._connect, self._channel, self._payload = connect, channel, payload
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agentguard-listen", daemon=True)
        self._thread.start()
        self._ready.wait(10)  # listening before the first wait starts, or given up on

    def mark(self) -> int:
        with self._lock:
            return self._count

    def close(self) -> None:
        self._stop.set()

    def _heard(self) -> None:
        with self._lock:
            self._count += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f'listen "{self._channel}"')
                    self._heard()  # (re)connected: whatever happened meanwhile is unknown
                    self._ready.set()
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=1.0):
                            if self._payload is None or notify.payload == self._payload:
                                self._heard()
            except Exception as exc:  # the server restarted, the network dropped: reconnect
                log.debug("agentguard: LISTEN %s lost (%s); reconnecting", self._channel, exc)
                self._ready.set()
                self._stop.wait(RECONNECT_S)
