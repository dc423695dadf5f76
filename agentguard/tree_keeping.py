"""The working tree around a step: its checkpoint snapshot, and putting the tree back to that
checkpoint before another route takes over (keeping any drift as a snapshot of its own)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from agentguard.clock import Clock
from agentguard.plan import ON_LOOP, Join
from agentguard.plan import Action as PlanAction
from agentguard.routes import Route
from agentguard.shadow.remote import Pusher, display_url
from agentguard.snapshots import ShadowRepo, Snapshot
from agentguard.step_types import StepState
from agentguard.store import Store, dumps
from agentguard.user_repo import GitState, StateReader, columns

log = logging.getLogger("agentguard")

# A step's snapshot starts this long after the step's call is on its way (`_start_snapshot`):
# its git processes then take the CPUs once the request has left — or, when the provider (a
# gateway, a local model server) runs on this machine, once it has read the request. Measured
# beside a provider on a 2-core machine (`benchmarks/proxy.py`): started at once, the
# snapshot's start-up delayed every answer by about 0.35 ms at the median; 2 ms later, not.
SNAPSHOT_START_DELAY_S = 0.002


@dataclass(frozen=True)
class Checkpoint(Snapshot):
    """A step's snapshot with the user's own git state read right after it; `recorded`: its
    row is in the store already (written by the snapshot thread)."""

    git: GitState | None = None
    recorded: bool = False


class TreeKeeping:
    """Mixed into `Guard`: snapshots joined into the step, and the tree verified on a route
    change."""

    store: Store
    clock: Clock
    run_id: str
    project: Path
    shadow: ShadowRepo | None
    _executor: ThreadPoolExecutor
    _closed: bool
    _git_reader: StateReader  # the user's repository, read on the snapshot thread only
    event: Callable[..., None]  # StepRecording.event
    _pusher: Pusher | None  # the checkpoints' way to the run's snapshot_remote, if it has one

    def _start_pushing(self, url: str | None) -> Pusher | None:
        """Push the run's checkpoints to `url` in the background from now on (see
        agentguard.shadow.remote); the remote is recorded without any password in it."""
        if self.shadow is None or not url:
            return None
        shown = display_url(url)
        self.event(None, "snapshot_remote", remote=shown)
        return Pusher(
            self.shadow.store_dir / "repo.git",
            url,
            self.run_id,
            on_failure=lambda error: self.event(
                None, "snapshot_push_failed", remote=shown, error=error
            ),
            on_recovery=lambda: self.event(None, "snapshot_push_recovered", remote=shown),
        )

    _write_held_back: Callable[[StepState], None]  # Guard._write_held_back

    def _snapshot_step(
        self, message: str, ref: str, step_id: int, not_before: float = 0.0
    ) -> Checkpoint:
        """Run in the snapshot thread: the tree, then the user's branch/HEAD/dirty (a `git
        status` that can take a while in a large tree, so never on the caller's path), then
        the snapshot's row — while the call is out, not between its answer and the hand-over
        (the step's join writes the row if this could not); not before `not_before`
        (time.monotonic)."""
        assert self.shadow is not None
        wait = not_before - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # the snapshot thread's own wait (SNAPSHOT_START_DELAY_S)
        snap = self.shadow.snapshot(message, ref=ref)
        kept = {f.name: getattr(snap, f.name) for f in fields(Snapshot)}
        git = self._git_reader.read(snapshot_tree=snap.tree, complete=not snap.skipped)
        checkpoint = Checkpoint(**kept, git=git)
        try:
            self._store_snapshot(step_id, checkpoint, "checkpoint")
        except Exception:  # the store busy or closing: the step's join writes the row
            log.debug("agentguard: the snapshot thread could not record %s", ref, exc_info=True)
            return checkpoint
        return replace(checkpoint, recorded=True)

    _starting: list[StepState]  # snapshots to start once the stretch's writes are committed
    _when_sent: list[Callable[[], Any]]  # writes that wait until the call is on its way

    def _snapshot_before_next_action(self, state: StepState) -> None:
        """Start the step's snapshot just before its next action (a call, a wait), after the
        writes before it are committed (`Guard._batched`): the snapshot thread and its git
        processes then never compete with that commit on the request's critical path."""
        if state.snapshot_job is not None:
            self._starting.append(state)

    def _after_stretch(self) -> None:
        """Once a stretch's writes are committed: driven on an event loop (`adrive`), at the
        loop's next turn — the call about to be made has then written its request — so the
        snapshot thread's start and the writes that may wait (`_when_sent`: the retry
        budget's row) are off the request's way out; driven by blocking calls, now."""
        if not self._starting and not self._when_sent:
            return
        if ON_LOOP.get():
            asyncio.get_running_loop().call_soon(self._request_sent)
        else:
            self._request_sent()

    def _request_sent(self) -> None:
        writes, self._when_sent = self._when_sent, []
        for write in writes:
            try:
                write()
            except Exception as exc:  # a lost budget row must not fail a step already sent
                log.warning("agentguard: a write after the request was sent failed: %s", exc)
        while self._starting and not self._closed:
            self._start_snapshot(self._starting.pop(), delay=SNAPSHOT_START_DELAY_S)

    def _start_snapshot(self, state: StepState, *, delay: float = 0.0) -> None:
        """Submit the step's checkpoint snapshot, once (see `Guard._checkpoint`): `delay`
        seconds from now when it runs beside the action about to be taken, at once when it is
        wanted now."""
        job, state.snapshot_job = state.snapshot_job, None
        if job is not None:
            message, ref = job
            not_before = time.monotonic() + delay
            state.snapshot = self._executor.submit(
                self._snapshot_step, message, ref=ref, step_id=state.step_id, not_before=not_before
            )

    def _join_snapshot(self, state: StepState) -> Generator[PlanAction, Any, None]:
        self._start_snapshot(state)
        if state.snapshot is None:
            return
        future, state.snapshot = state.snapshot, None
        try:
            # done already (the provider took longer than the snapshot): no action to yield,
            # so the step's writes after its answer stay one commit (Guard._batched)
            snap: Snapshot = future.result() if future.done() else (yield Join(future))
        except Exception as exc:  # a failed snapshot must not fail the model call, but is shown
            log.warning("agentguard: working-tree snapshot failed: %s", exc)
            self.event(state.step_id, "snapshot_failed", error=str(exc))
            return
        self._took_checkpoint(state, snap)

    def _took_checkpoint(self, state: StepState, snap: Snapshot) -> None:
        if state.ended:  # its `ok` row held back: written first, the checkpoint goes onto it
            self._write_held_back(state)
        state.checkpoint = snap.commit
        if not (isinstance(snap, Checkpoint) and snap.recorded):
            self._store_snapshot(state.step_id, snap, "checkpoint")
        if state.ended:
            self.store.update_step(state.step_id, checkpoint=snap.commit)
        if snap.skipped:
            self.event(
                state.step_id,
                "snapshot_skipped",
                paths=[{"path": s.path, "reason": s.reason, "size": s.size} for s in snap.skipped],
            )

    def _verify_tree(self, state: StepState, route: Route) -> Generator[PlanAction, Any, None]:
        """Before a route change: the tree must match the checkpoint; drift is kept, then undone."""
        yield from self._join_snapshot(state)
        if self.shadow is None or state.checkpoint is None:
            return
        checkpoint, shadow = state.checkpoint, self.shadow

        def verify() -> tuple[Snapshot, Any]:
            same, current = shadow.matches(checkpoint)
            return current, (None if same else shadow.restore(checkpoint))

        current, restored = yield Join(self._executor.submit(verify))
        if restored is None:
            self.event(state.step_id, "tree_verified", route=route.key, checkpoint=checkpoint)
            return
        self._store_snapshot(state.step_id, current, "drift")
        changes = [{"status": c.status, "path": c.path} for c in restored.changes]
        self.event(
            state.step_id,
            "drift_restored",
            route=route.key,
            checkpoint=checkpoint,
            drift_snapshot=current.commit,
            changes=changes,
            preserved=list(restored.preserved),
        )
        log.warning(
            "agentguard: the working tree changed during step %s; kept it as %s and restored "
            "checkpoint %s before switching to %s",
            state.number,
            current.commit[:12],
            checkpoint[:12],
            route.key,
        )

    def _store_snapshot(self, step_id: int, snap: Snapshot, kind: str) -> None:
        if self._pusher is not None:
            self._pusher.request()
        self.store.insert_snapshot(
            {
                "commit_sha": snap.commit,
                "project": str(self.project),
                "run_id": self.run_id,
                "step_id": step_id,
                "kind": kind,
                "created_at": self.clock.now(),
                "tree": snap.tree,
                "changed": snap.changed,
                "skipped": dumps([s.__dict__ for s in snap.skipped]),
                "duration_ms": snap.duration_ms,
                **columns(snap.git if isinstance(snap, Checkpoint) else None),
            }
        )
