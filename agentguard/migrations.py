"""The store's schema, grown one small migration at a time (never edit an applied one)."""

from __future__ import annotations

from collections.abc import Callable

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATION_SET = "agentguard"
migrations = Migrations(MIGRATION_SET)
KNOWN: list[str] = []


def migration(fn: Callable[[Database], None]) -> Callable[[Database], None]:
    """Register a migration and remember its name, to recognise a database from a newer version."""
    KNOWN.append(fn.__name__)
    return migrations()(fn)


@migration
def m001_initial(db: Database) -> None:
    db["runs"].create(
        {
            "id": str,
            "name": str,
            "project": str,
            "status": str,  # running | completed | failed | waiting | interrupted
            "policy": str,  # JSON of the Policy in force
            "primary_provider": str,
            "primary_model": str,
            "created_at": float,
            "updated_at": float,
            "ended_at": float,
            "next_attempt_at": float,
            "last_error": str,
            "pid": int,
            "hostname": str,
        },
        pk="id",
    )
    db["runs"].create_index(["status"])
    db["steps"].create(
        {
            "id": int,
            "run_id": str,
            "number": int,
            "parent_id": int,
            "base_len": int,  # messages kept from the parent's conversation
            "total_len": int,  # messages in this step's conversation
            "request": str,  # sha of the request blob (system, tools, params)
            "stream": int,
            "status": str,  # pending | ok | failed | waiting | interrupted
            "requested_provider": str,
            "requested_model": str,
            "served_provider": str,
            "served_model": str,
            "substituted": int,
            "reason": str,
            "checkpoint": str,  # shadow git commit of the working tree
            "snapshot_ms": float,
            "started_at": float,
            "ended_at": float,
            "latency_ms": float,
            "input_tokens": int,
            "output_tokens": int,
            "stop_reason": str,
            "response": str,  # JSON of the response as served
            "error": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["steps"].create_index(["run_id", "number"], unique=True)
    db["attempts"].create(
        {
            "id": int,
            "run_id": str,
            "step_id": int,
            "number": int,
            "provider": str,
            "model": str,
            "base_url": str,
            "started_at": float,
            "slept_before_ms": float,
            "latency_ms": float,
            "status_code": int,
            "error_type": str,
            "error_code": str,
            "request_id": str,
            "outcome": str,  # ok | retry | wait | give_up | fatal | skip_route | route_unusable
            "message": str,
            "input_tokens": int,
            "output_tokens": int,
        },
        pk="id",
        foreign_keys=[("step_id", "steps", "id")],
    )
    db["attempts"].create_index(["step_id"])
    db["attempts"].create_index(["model", "started_at"])
    db["messages"].create(
        {
            "id": int,
            "run_id": str,
            "step_id": int,
            "position": int,
            "role": str,
            "content": str,  # JSON
            "sha": str,
        },
        pk="id",
        foreign_keys=[("step_id", "steps", "id")],
    )
    db["messages"].create_index(["step_id", "position"])
    db["blobs"].create({"sha": str, "body": str}, pk="sha")
    db["events"].create(
        {
            "id": int,
            "run_id": str,
            "step_id": int,
            "at": float,
            "kind": str,
            "detail": str,  # JSON
        },
        pk="id",
    )
    db["events"].create_index(["run_id", "at"])
    db["snapshots"].create(
        {
            "commit_sha": str,
            "project": str,
            "run_id": str,
            "step_id": int,
            "kind": str,  # checkpoint | backup | drift
            "created_at": float,
            "tree": str,
            "changed": int,
            "skipped": str,  # JSON list of {path, reason, size}
            "duration_ms": float,
        },
        pk="commit_sha",
    )
    db["snapshots"].create_index(["run_id"])


@migration
def m002_breaker_and_budget(db: Database) -> None:
    # One row per route: the shared overload breaker (agentguard.breaker).
    db["route_health"].create(
        {
            "route": str,
            "state": str,  # closed | open
            "failures": int,  # overload failures in the current streak
            "first_failure_at": float,  # start of the streak (no success since)
            "last_failure_at": float,
            "open_since": float,
            "next_probe_at": float,  # while open: when the next probe slot opens
            "last_success_at": float,
            "updated_at": float,
        },
        pk="route",
        not_null={"state", "failures"},
        defaults={"state": "closed", "failures": 0},
    )
    # One row per request sent: the retry budget's sliding window (agentguard.budget).
    db["route_traffic"].create(
        {"id": int, "route": str, "at": float, "retry": int},
        pk="id",
        not_null={"route", "at", "retry"},
    )
    # Covering index: the budget's count reads only the index.
    db["route_traffic"].create_index(["route", "at", "retry"])


@migration
def m003_retention(db: Database) -> None:
    # When gc removed a snapshot's commit from the shadow store (agentguard.retention), so that
    # `show` can say "snapshot pruned by gc on <date>" instead of failing to find it.
    if "pruned_at" not in db["snapshots"].columns_dict:
        db["snapshots"].add_column("pruned_at", float)


@migration
def m004_tui_indexes(db: Database) -> None:
    # `agentguard watch` and metrics read by time: the newest runs first, and the attempts and
    # steps of a window (metrics.compute's `started_at between ? and ?`).
    db["runs"].create_index(["created_at"], if_not_exists=True)
    db["steps"].create_index(["started_at"], if_not_exists=True)
    db["attempts"].create_index(["started_at"], if_not_exists=True)


@migration
def m005_success_sent_at(db: Database) -> None:
    # When the request behind a route's last success was sent: a step backing off wakes early
    # only for an answer to a request sent after its own failed one (agentguard.breaker).
    if "last_success_sent_at" not in db["route_health"].columns_dict:
        db["route_health"].add_column("last_success_sent_at", float)


@migration
def m006_user_git_state(db: Database) -> None:
    # The user's own repository when a snapshot was taken (agentguard.user_repo): its branch
    # (null: detached HEAD), HEAD commit (null: no commits yet) and whether `git status` showed
    # changes. All null: not recorded (not a git repository, no git, or an older version), so
    # `restore` / `resume` can say when the project has moved to another branch since.
    columns = db["snapshots"].columns_dict
    for name, kind in (("git_branch", str), ("git_head", str), ("git_dirty", int)):
        if name not in columns:
            db["snapshots"].add_column(name, kind)


@migration
def m007_change_notifications(db: Database) -> None:
    # On PostgreSQL this migration adds triggers that NOTIFY each commit to the run log (see
    # agentguard.migrations_pg). SQLite needs none: `PRAGMA data_version` tells a reader when
    # another connection committed. Kept so both engines record the same history by name.
    del db


@migration
def m008_streak_decider(db: Database) -> None:
    # Until when one backing-off step has the retry whose answer decides a due failure streak
    # (back, or breaker open), so the other waiting steps — on every machine — hold theirs
    # instead of all sending at once (agentguard.breaker.claim_decider).
    if "decider_until" not in db["route_health"].columns_dict:
        db["route_health"].add_column("decider_until", float)
