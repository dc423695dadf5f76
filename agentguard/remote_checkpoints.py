"""A run's checkpoints brought to this machine from its snapshot remote before a resume.

A fleet shares one store, so another machine knows the run's steps and their checkpoint
commits; the commits themselves are in the shadow store of the machine that ran it, and — with
a `snapshot_remote` — on that remote (see agentguard.shadow.remote). Resuming here fetches the
run's refs into this machine's shadow store of the project folder first.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from agentguard.config import load_config, snapshot_remote
from agentguard.home import project_key
from agentguard.shadow.remote import display_url, fetch_run
from agentguard.snapshots import ShadowRepo
from agentguard.store import Store


def known_remote(
    store: Store, run: dict[str, Any], folder: Path, explicit: str | None = None
) -> str | None:
    """The remote to fetch from: given, else $AGENTGUARD_SNAPSHOT_REMOTE, else the folder's
    config, else the one the run recorded (unless it held a password, which is never stored)."""
    url = snapshot_remote(explicit, load_config(folder)[0])
    if url:
        return url
    for event in reversed(store.events(run["id"])):
        if event["kind"] == "snapshot_remote":
            recorded = json.loads(event["detail"] or "{}").get("remote")
            return recorded if recorded and "***" not in recorded else None
    return None


def fetch_missing(
    store: Store, run: dict[str, Any], folder: Path, explicit: str | None = None
) -> bool:
    """Fetch the run's refs into `folder`'s shadow store on this machine when its latest
    checkpoint is not there and a remote is known; True when it fetched."""
    checkpoints = [s["checkpoint"] for s in store.steps(run["id"]) if s["checkpoint"]]
    where = store.home / "shadow" / project_key(folder.resolve())
    have_store = (where / "repo.git" / "HEAD").is_file()
    if checkpoints and have_store and ShadowRepo(folder, where).has_commit(checkpoints[-1]):
        return False
    url = known_remote(store, run, folder, explicit)
    if url is None:
        return False
    ShadowRepo(folder, where)  # this folder's shadow store, made if it has none
    fetch_run(where / "repo.git", url, run["id"])
    store.insert_event(
        run["id"],
        "snapshots_fetched",
        {"remote": display_url(url), "host": socket.gethostname(), "store": str(where)},
        at=time.time(),
        step_id=None,
    )
    return True
