"""Resume a run after overload or a crash: the conversation and the tree of one checkpoint.

The pair must be consistent. A step row and its new messages are written in one transaction
before its model call; its tree snapshot finishes later. So the run resumes from its last step
whose snapshot exists (recorded in the store, or found by its ref in the shadow store when the
process died before recording it), with that step's conversation — plus the step's recorded
response when it has one, so a response that was paid for is never requested again.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentguard.conversation import stored_params
from agentguard.errors import ProjectError, RunBusy, RunNotFound, SnapshotError
from agentguard.snapshots import RestoreResult, ShadowRepo
from agentguard.store import Store, open_store
from agentguard.store_choice import choose_store, configured_store


@dataclass
class ResumedRun:
    """Everything an agent loop needs to go on from where the run stopped."""

    run_id: str
    name: str
    project: Path
    status: str  # the run's status before resuming
    provider: str
    model: str
    messages: list[dict[str, Any]]  # the conversation to continue from
    params: dict[str, Any]  # system, tools, max_tokens … as the last step sent them
    step: int  # the step the run resumes from
    checkpoint: str | None  # its working-tree snapshot
    response: dict[str, Any] | None  # its recorded response, already in `messages`
    restored: RestoreResult | None = None
    home: Path | None = field(default=None, repr=False)
    # the store it was found in ("" the local SQLite file, else a URL: never shown, it may hold
    # a password); None when resume() was handed a store
    store_url: str | None = field(default=None, repr=False)

    @property
    def system(self) -> Any:
        return self.params.get("system")

    @property
    def tools(self) -> list[Any]:
        return list(self.params.get("tools") or [])

    @property
    def pending_tool_calls(self) -> list[dict[str, Any]]:
        """tool_use blocks of the recorded response: run them, then send their results."""
        if self.response is None:
            return []
        return [b for b in self.response.get("content") or [] if b.get("type") == "tool_use"]

    def request(self) -> dict[str, Any]:
        """Keyword arguments for the next `messages.create` call."""
        return {**self.params, "model": self.model, "messages": self.messages}

    def wrap(self, client: Any, **options: Any) -> Any:
        """A guarded client that records into this same run (same id, steps continue)."""
        from agentguard.wrapping import wrap

        options.setdefault("project", self.project)
        if self.home is not None:
            options.setdefault("home", self.home)
        if self.store_url is not None:  # the run goes on in the store it was found in
            options.setdefault("store_url", self.store_url)
        return wrap(client, resume=self.run_id, **options)


def resume(
    run_id: str,
    *,
    home: str | os.PathLike[str] | None = None,
    project: str | os.PathLike[str] | None = None,
    restore: bool = True,
    store: Store | None = None,
    accept: bool = False,
    allow_moved: bool = False,
    snapshot_remote: str | None = None,
    store_url: str | None = None,
) -> ResumedRun:
    """Bring back a run's last consistent (conversation, tree) pair.

    A step whose substitution was refused (by `on_substitution` or by `forbid`) kept the other
    model's answer: `accept=True` hands that answer over (it is in `messages` and `response`)
    instead of asking again; without it, the step's request is to be sent to the primary again.

    Refuses (RunBusy) a run another live process still drives, before touching anything. The
    working tree is restored to that checkpoint (after snapshotting the current tree, recorded
    as the run's `backup`, so `agentguard restore RUN --undo` undoes it); `restore=False`
    leaves the tree alone. `project=NEW`: the run moved there — from now on it is the run's
    folder (its snapshots are copied into that folder's shadow store).

    When the project's branch or HEAD moved since the checkpoint (a branch switch, a commit)
    and restoring it would rewrite files, raises `BranchMoved` naming both, before touching
    the tree: a library call cannot ask, so `allow_moved=True` restores it anyway.

    A run from another machine (a fleet's shared store): its checkpoints are fetched first from
    `snapshot_remote` (else $AGENTGUARD_SNAPSHOT_REMOTE, the folder's config, or the remote the
    run recorded) when this machine's shadow store lacks them.

    The store is chosen as `wrap()` chooses it: `store_url` (a postgresql:// URL, or "sqlite"),
    else $AGENTGUARD_STORE, else the `store` of the config file in `project` (default: the
    current folder); `ResumedRun.wrap` goes on in the same one.
    """
    if store is not None:
        return _prepare(store, run_id, project, restore, accept, allow_moved, snapshot_remote)
    location = choose_store(
        store_url, lambda: configured_store(project), given_as="resume(store_url=)"
    )
    own = open_store(home, url=location)  # closed here: a PostgreSQL pool must not outlive it
    try:
        found = _prepare(own, run_id, project, restore, accept, allow_moved, snapshot_remote)
    finally:
        own.close()
    found.store_url = location
    return found


def _prepare(
    store: Store,
    run_id: str,
    project: str | os.PathLike[str] | None,
    restore: bool,
    accept: bool,
    allow_moved: bool,
    snapshot_remote: str | None,
) -> ResumedRun:
    """`resume` on an open store."""
    from agentguard.remote_checkpoints import fetch_missing
    from agentguard.restoring import move_project, moved_before_rewind, rewind, shadow_dir
    from agentguard.user_repo import BranchMoved

    run = ensure_not_live(store, run_id, "resuming it")  # before anything is touched
    folder = Path(project) if project is not None else Path(run["project"])
    if not folder.is_dir():
        raise ProjectError(
            f"Run {run_id}'s project folder {folder} no longer exists; move it back, or resume "
            "it in its new place with --project / project=..."
        )
    steps = store.steps(run_id)
    if not steps:
        raise RunNotFound(f"Run {run_id} has no steps yet, so there is nothing to resume.")
    if project is not None:  # the run lives there now: diff, restore, show and its next steps
        run = move_project(store, run, folder)
    if restore:
        fetch_missing(store, run, folder, snapshot_remote)
    shadow = ShadowRepo(folder, shadow_dir(store, run))
    step, checkpoint = _last_consistent(steps, run_id, shadow)
    if restore and checkpoint is not None and not allow_moved and shadow.has_commit(checkpoint):
        moved = moved_before_rewind(store, shadow, checkpoint)
        if moved is not None:
            raise BranchMoved(
                f"Not restoring run {run_id}'s checkpoint of step {step['number']}: {moved}; "
                "pass allow_moved=True to restore it anyway, or restore=False to keep the tree."
            )
    if accept:
        step = accept_refused(store, run_id, step)
    messages = store.conversation(step["id"])
    response = _recorded_response(step)
    if response is not None:
        messages.append(_assistant_message(step["requested_provider"], response))
    restored = None
    now = time.time()
    if restore and checkpoint is not None:
        if not shadow.has_commit(checkpoint):
            raise SnapshotError(
                f"The checkpoint {checkpoint[:12]} of run {run_id} step {step['number']} is "
                "missing from the shadow store (pruned by gc?); resume with --no-restore to "
                "keep the working tree as it is."
            )
        restored = rewind(store, run, shadow, checkpoint, step_id=step["id"], now=now)
    store.insert_event(
        run_id,
        "resume_prepared",
        {
            "step": step["number"],
            "checkpoint": checkpoint,
            "restored": bool(restored),
            "backup": restored.backup.commit if restored else None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        },
        at=now,
        step_id=step["id"],
    )
    return ResumedRun(
        run_id=run_id,
        name=run["name"],
        project=folder.resolve(),
        status=run["status"],
        provider=step["requested_provider"],
        model=step["requested_model"],
        messages=messages,
        params=stored_params(store.blob(step["request"])),
        step=step["number"],
        checkpoint=checkpoint,
        response=response,
        restored=restored,
        home=store.home,
    )


def _last_consistent(
    steps: list[dict[str, Any]], run_id: str, shadow: ShadowRepo
) -> tuple[dict[str, Any], str | None]:
    """The newest step with a tree snapshot; a run without any snapshots resumes its last step."""
    for step in reversed(steps):
        checkpoint = step["checkpoint"] or _snapshot_ref(shadow, run_id, step["number"])
        if checkpoint:
            return step, checkpoint
    return steps[-1], None


def accept_refused(store: Store, run_id: str, step: dict[str, Any] | None = None) -> dict[str, Any]:
    """A person accepts the refused substitution of the run's newest step (or `step`): its
    kept answer becomes the step's recorded response, handed over by the next resume."""
    if step is None:
        rows = store.query(
            "select * from steps where run_id = ? order by number desc limit 1", [run_id]
        )
        step = rows[0] if rows else None
    if step is None or step["status"] != "refused" or not step["response"]:
        raise RunNotFound(
            f"Run {run_id} has no refused substitution to accept; resume it without --accept."
        )
    with store.write():  # the decision and its record in one transaction
        store.update_step(step["id"], status="ok")
        store.insert_event(
            run_id,
            "substitution_accepted",
            {"served": step["served_model"], "refused": step["error"]},
            at=time.time(),
            step_id=step["id"],
        )
    return {**step, "status": "ok"}


def _snapshot_ref(shadow: ShadowRepo, run_id: str, number: int) -> str | None:
    """A snapshot that finished after its process died, before the store heard of it."""
    return shadow.resolve_ref(f"refs/agentguard/runs/{run_id}/steps/{number}")


def _recorded_response(step: dict[str, Any]) -> dict[str, Any] | None:
    if step["status"] != "ok" or not step["response"]:
        return None
    return json.loads(step["response"])


def _assistant_message(provider: str, response: dict[str, Any]) -> dict[str, Any]:
    """The recorded response as the next message of the conversation, in the caller's format."""
    if "choices" in response:  # an OpenAI caller
        message = dict(response["choices"][0]["message"])
        return {k: v for k, v in message.items() if v is not None}
    return {"role": "assistant", "content": response.get("content") or []}


def due_runs(store: Store, now: float | None = None) -> list[dict[str, Any]]:
    """Queued (`waiting`) runs whose next attempt time has come, the longest due first (one
    without a time is due at once: first, on either engine, which sort NULL apart)."""
    moment = time.time() if now is None else now
    return store.query(
        "select * from runs where status = 'waiting' and coalesce(next_attempt_at, 0) <= ? "
        "order by coalesce(next_attempt_at, 0), id",
        [moment],
    )


# What an in-flight row says once its process is known to be gone: nothing is left pending.
STEP_CUT = "the agent process ended during this step"
ATTEMPT_CUT = (
    "the agent process ended while this attempt was in flight; the request may or may not "
    "have reached the provider"
)


def mark_interrupted(store: Store) -> list[str]:
    """Runs still `running` whose process on this machine is gone become `interrupted`, and
    so do their steps and attempts left `pending` (no answer will ever be recorded for them)."""
    host = socket.gethostname()
    gone = [
        row["id"]
        for row in store.query(
            "select id, pid from runs where status = 'running' and hostname = ?", [host]
        )
        if row["pid"] and not _alive(row["pid"])
    ]
    for run_id in gone:
        with store.write() as db:
            db["runs"].update(run_id, {"status": "interrupted"})
            db.conn.execute(
                "update attempts set outcome = 'interrupted', message = ? "
                "where step_id in (select id from steps where run_id = ?) "
                "and outcome = 'pending'",
                [ATTEMPT_CUT, run_id],
            )
            db.conn.execute(
                "update steps set status = 'interrupted', error = ? "
                "where run_id = ? and status = 'pending'",
                [STEP_CUT, run_id],
            )
    return gone


def ensure_not_live(store: Store, run_id: str, doing: str = "touching it") -> dict[str, Any]:
    """The run's row, once it is known that no other live process drives it (else RunBusy).

    The one check before anything rewrites a run's tree or takes it over (`resume()`, the CLI's
    `resume` and `restore`, the TUI's restore): runs whose process on this machine is gone are
    marked `interrupted` first; a run still `running` in another process — alive here, or on
    another machine, where it cannot be checked — is refused.
    """
    mark_interrupted(store)
    run = store.get_run(run_id)
    if run is None:
        raise RunNotFound(
            f"No run {run_id!r} in {store.path}; list the runs with `agentguard runs`."
        )
    ours = run["pid"] == os.getpid() and run["hostname"] in (None, socket.gethostname())
    if run["status"] == "running" and not ours:
        raise _busy(run_id, run["pid"], run["hostname"], doing)
    return run


def _busy(run_id: str, pid: int | None, host: str | None, doing: str) -> RunBusy:
    return RunBusy(
        f"Run {run_id} is still running in process {pid} on {host}; stop that agent before {doing}."
    )


def claim_run(store: Store, run_id: str, doing: str = "resuming the run") -> dict[str, Any]:
    """Take a run over for this process: `ensure_not_live`'s check and the run marked ours
    (running, our pid and host) in one write transaction, so of two processes — or two
    machines on one shared store — taking the same run at once, one wins and the other gets
    RunBusy."""
    run = ensure_not_live(store, run_id, doing)  # a clear error before the transaction
    host, pid = socket.gethostname(), os.getpid()
    with store.write() as db:
        status, owner, where = db.conn.execute(
            "select status, pid, hostname from runs where id = ?", [run_id]
        ).fetchone()
        if status == "running" and not (owner == pid and where in (None, host)):
            raise _busy(run_id, owner, where, doing)
        db.conn.execute(
            "update runs set status = 'running', pid = ?, hostname = ? where id = ?",
            [pid, host, run_id],
        )
    return {**run, "status": status}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
