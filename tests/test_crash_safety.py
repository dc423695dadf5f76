"""A run killed at any instant resumes to a consistent (conversation, tree) pair.

A real agent loop (tests/agent_child.py) runs in a forked process against the fake provider,
on a real git repository with a commit, a second branch, a staged change, an untracked file,
ignored files, a stash entry and a `.gitattributes` that would rewrite line endings. Each turn
the scripted model asks for one tool call (write, append or delete a file); the agent runs it
and sends the result back, with 529s and a mid-stream overload scripted so retries happen and
some steps streamed. The agent is SIGKILLed (with its process group, so git dies with it) at
a named point — by wrapping agentguard's own functions in the agent process, or from the fake
server as a request arrives — or at a random time. After every kill:

* the store passes `PRAGMA integrity_check`;
* every request the fake received from that agent has its attempt row, in order and with its
  request-id; the only row without an outcome is the one in flight when the process died;
* `agentguard.resume` picks the newest step with a tree snapshot, and what it returns is a
  consistent pair: the conversation is the one that step sent (plus its recorded response),
  and the working tree is exactly that step's snapshot, which is exactly the scripted model's
  tool calls so far — no more, no less, byte for byte;
* the user's git state is untouched: `.git` byte for byte (HEAD, refs, stash, index), the
  `git status` of every path the agent never writes, and the ignored files.

A third of the trials then continue the run in new agent processes (themselves killed at
random now and then) until it completes, and check that steps continue without duplicates,
no request lost its attempt row, and the final tree is what the model intended.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

import agentguard
from agentguard.home import project_key
from agentguard.snapshots import ShadowRepo
from agentguard.store import Store
from agentguard.testing import FakeProvider, RecordedRequest, error, midstream_error, ok, overloaded
from tests.agent_child import (
    MARKER_HEADER,
    PID_HEADER,
    SYSTEM,
    TASK,
    TOOLS,
    Zygote,
    op,
    scripted_turn,
    tree_after,
)
from tests.conftest import GIT_ENV

# Seeds are fixed so a failure replays exactly; set AGENTGUARD_CRASH_SEEDS=N to explore others.
SEEDS = int(os.environ.get("AGENTGUARD_CRASH_SEEDS", "0"))
TOTAL = 5  # tool calls the model asks for; the run is TOTAL + 1 steps
AGENT_PATHS = ("app.py", "scratch.txt", "notes/")  # everything the agent's tools may write


# -- the trials -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    name: str
    seed: int
    kill: dict[str, Any] | None = None  # a named point inside the agent (see agent_child)
    mid_call: int | None = None  # the fake kills the agent as its nth answered request arrives
    at_random: bool = False  # the zygote kills it after a random delay
    carry_on: bool = False  # then continue the run to completion
    then: dict[str, Any] | None = None  # a named point for the second process to die at
    # What the first kill must leave, where the point tells: the attempt in flight ("none": no
    # attempt row is pending; "unsent": the pending row's request never left; "sent": it
    # reached the fake) and the step resume returns ("answered": the killed step with its
    # recorded response; "unanswered": the killed step, to be sent again).
    in_flight: str | None = None
    resumes: str | None = None
    two_clients: bool = False  # a second wrap() in the agent, and a reader process each step

    def __str__(self) -> str:
        return f"{self.name} (seed {self.seed})"


def _trials() -> list[Trial]:
    named: list[dict[str, Any]] = []

    def at(name: str, kill: dict[str, Any] | None, **expect: Any) -> None:
        named.append({"name": name, "kill": kill, **expect})

    # between the checkpoint and the call
    for n in (1, 3, 6):
        at(f"checkpoint-{n}", {"point": "checkpoint", "n": n}, in_flight="none")
    for n in (1, 2, 4, 7):
        at(f"attempt-row-{n}", {"point": "open_attempt", "n": n}, in_flight="unsent")
    # mid-call: the request has arrived, no answer yet
    for n in (1, 2, 3, 5, 6):
        at(f"mid-call-{n}", None, mid_call=n, in_flight="sent")
    # mid-stream: part of the SSE stream read
    for n, e in ((1, 1), (2, 4), (3, 2), (4, 7)):
        at(f"mid-stream-{n}-{e}", {"point": "midstream", "n": n, "events": e}, in_flight="sent")
    # after the response, before it is recorded (and just after)
    for n in (1, 4, 6):
        at(f"before-record-{n}", {"point": "record", "n": n}, in_flight="sent")
    for n in (1, 5):
        # the attempt's outcome commits with the step's end, unless the step waited for its
        # snapshot between them (Guard._batched): either pending or recorded, never checked
        kill = {"point": "finish", "n": n}
        at(f"before-finish-{n}", kill, resumes="unanswered")
    for n in (2, 5):
        kill = {"point": "after_finish", "n": n}
        at(f"after-finish-{n}", kill, in_flight="none", resumes="answered")
    # during a snapshot: around and during its git commands, before and after its refs
    git_points = [
        ("init", "after", 1),
        ("update-index", "during", 2),
        ("update-index", "after", 4),
        ("write-tree", "before", 3),
        ("write-tree", "during", 5),
        ("commit-tree", "during", 2),
        ("commit-tree", "after", 5),
    ]
    for cmd, when, n in git_points:
        at(f"git-{cmd}-{when}-{n}", {"point": "git", "command": cmd, "when": when, "n": n})
    for when, n in (("before", 1), ("during", 3)):  # diff-files and ls-files, side by side
        at(f"scan-{when}-{n}", {"point": "scan", "when": when, "n": n})
    for when, n in (("before", 2), ("after", 3), ("before", 6)):
        at(f"set-refs-{when}-{n}", {"point": "set_refs", "when": when, "n": n})
    for n in (1, 4):  # a step's ref (odd n) or the head ref (even n) left as a lock file
        at(f"ref-lock-{n}", {"point": "ref_lock", "n": n})
    # while the agent's tool is halfway through writing a file
    for n in (2, 5):
        at(f"tool-{n}", {"point": "tool", "n": n}, in_flight="none", resumes="answered")
    trials = [
        Trial(seed=SEEDS + 1000 + i, carry_on=i % 3 == 0, **spec) for i, spec in enumerate(named)
    ]
    # Killed while agentguard creates its shadow store, before the run exists: the user starts
    # the agent again, and a restore in that store must still write the bytes it snapshotted
    # (scratch.txt is rewritten halfway, then restored, despite `*.txt text eol=crlf`).
    trials = [
        replace(t, carry_on=True, then={"point": "tool", "n": 5})
        if t.name.startswith("git-init")
        else t
        for t in trials
    ]
    trials += [
        Trial(f"random-{i}", seed=SEEDS + 2000 + i, at_random=True, carry_on=i % 3 == 1)
        for i in range(16)
    ]
    # Two guarded clients in one agent process (two store handles), and another process that
    # opens, reads and closes the store after every step: killed, nothing committed is lost.
    two = {"two_clients": True}
    trials += [
        Trial(
            "two-clients-after-finish-3",
            seed=SEEDS + 3000,
            carry_on=True,
            **two,
            kill={"point": "after_finish", "n": 3},
            in_flight="none",
            resumes="answered",
        ),
        Trial("two-clients-mid-call-4", seed=SEEDS + 3001, mid_call=4, in_flight="sent", **two),
        *(
            Trial(
                f"two-clients-random-{i}",
                seed=SEEDS + 3100 + i,
                at_random=True,
                carry_on=i == 0,
                **two,
            )
            for i in range(3)
        ),
    ]
    return trials


TRIALS = _trials()


# -- the user's repository --------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_ENV
    env["GIT_OPTIONAL_LOCKS"] = "0"  # reading state must not refresh the user's index
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def make_user_repo(path: Path) -> None:
    """A repository in the middle of someone's work."""
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "app.py").write_text("def add(a, b):\n    return a + b\n")
    (path / "README.md").write_text("# demo\n")
    (path / "notes.txt").write_text("committed notes\n")
    (path / ".gitignore").write_text("*.log\nbuild/\n")
    # The user's attributes would rewrite line endings; snapshots must keep bytes as they are.
    (path / ".gitattributes").write_text("*.txt text eol=crlf\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    git(path, "branch", "feature")
    (path / "app.py").write_text("def add(a, b):\n    return a + b  # stashed idea\n")
    git(path, "stash", "push", "-q", "-m", "an idea for later")
    (path / "README.md").write_text("# demo\n\nstaged change\n")
    (path / "staged.txt").write_text("a new staged file\n")
    git(path, "add", "README.md", "staged.txt")
    (path / "scratch.txt").write_text("the user's untracked scratch\n")
    (path / "debug.log").write_text("ignored log\n")
    (path / "build").mkdir()
    (path / "build" / "out.bin").write_bytes(bytes(range(256)))


def ignored(path: str) -> bool:
    return path.endswith(".log") or path.startswith("build/")


def files_of(project: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The project's files outside .git: (what a snapshot should hold, the ignored ones)."""
    kept: dict[str, bytes] = {}
    skipped: dict[str, bytes] = {}
    for dirpath, dirs, files in os.walk(project):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            full = Path(dirpath, name)
            rel = full.relative_to(project).as_posix()
            (skipped if ignored(rel) else kept)[rel] = full.read_bytes()
    return kept, skipped


def work_files(project: Path) -> dict[str, bytes]:
    return files_of(project)[0]


@dataclass(frozen=True)
class GitState:
    """The user's repository as the agent must leave it."""

    dot_git: str  # every file under .git, path and bytes: HEAD, refs, stash, index, objects
    status: tuple[str, ...]  # `git status` entries of the paths the agent never writes


def git_state(project: Path) -> GitState:
    digest = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(project / ".git")):
        dirs.sort()
        for name in sorted(files):
            path = Path(dirpath, name)
            digest.update(path.relative_to(project).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    status: list[str] = []
    records = iter(git(project, "status", "--porcelain=v2", "-z", "-uall", "--ignored").split("\0"))
    for record in records:
        if not record:
            continue
        kind = record[0]
        if kind == "1":
            path = record.split(" ", 8)[8]
        elif kind == "2":
            path = record.split(" ", 9)[9]
            next(records)  # the original path of a rename
        elif kind == "u":
            path = record.split(" ", 10)[10]
        else:
            path = record[2:]
        if not path.startswith(AGENT_PATHS):
            status.append(record)
    return GitState(dot_git=digest.hexdigest(), status=tuple(sorted(status)))


def describe_git(project: Path) -> str:
    """HEAD, branch, refs, stash and index, to explain a changed fingerprint."""
    return "\n".join(
        [
            git(project, "rev-parse", "HEAD").strip(),
            git(project, "symbolic-ref", "HEAD").strip(),
            git(project, "for-each-ref", "--format=%(refname) %(objectname)").strip(),
            git(project, "stash", "list", "--format=%H %gs").strip(),
            hashlib.sha256((project / ".git" / "index").read_bytes()).hexdigest(),
        ]
    )


# -- the fake provider and the zygote, shared by every trial ----------------------------------


@dataclass(frozen=True)
class UserRepo:
    """The template repository as every trial's copy starts out."""

    files: dict[str, bytes]
    ignored: dict[str, bytes]
    git: GitState
    described: str


@dataclass
class World:
    fake: FakeProvider
    template: Path
    user: UserRepo
    zygote: Zygote | None = None
    run_seconds: float = 0.5  # how long an uninterrupted run takes here (measured)
    mid_call: dict[str, list[int]] = field(default_factory=dict)  # marker -> [n, seen]

    def agent(self, job: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Run one agent process to its end (or its death): how it ended."""
        assert self.zygote is not None
        self.zygote.start(job)
        return self.zygote.wait(job["id"], timeout=timeout)


def model(world: World, request: RecordedRequest) -> Any:
    """The scripted model; for a mid-call trial it also kills the agent as its request lands."""
    marker = request.headers.get(MARKER_HEADER, "")
    plan = world.mid_call.get(marker)
    if plan is not None:
        plan[1] += 1
        if plan[1] == plan[0]:
            os.killpg(int(request.headers[PID_HEADER]), signal.SIGKILL)
    return scripted_turn(request.messages, TOTAL)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    template = tmp_path_factory.mktemp("template") / "project"
    make_user_repo(template)
    copy = tmp_path_factory.mktemp("copy") / "project"  # what a trial starts from
    shutil.copytree(template, copy, symlinks=True)
    files, skipped = files_of(copy)
    user = UserRepo(files, skipped, git_state(copy), describe_git(copy))
    with FakeProvider() as fake:
        w = World(fake=fake, template=template, user=user)
        fake.set_model(lambda request: model(w, request))
        w.zygote = Zygote(warm_up_url=fake.base_url)
        try:
            # One uninterrupted run, to know what "a random instant" spans on this machine.
            root = tmp_path_factory.mktemp("calibration")
            project = root / "project"
            shutil.copytree(template, project, symlinks=True)
            job = _job(w, "calibration", project, root / "home", "claude-calibration", root)
            started = time.monotonic()
            end = w.agent(job)
            w.run_seconds = time.monotonic() - started
            assert end["code"] == 0, (root / "agent.log").read_text()
            yield w
        finally:
            w.zygote.close()


def _job(world: World, job_id: str, project: Path, home: Path, model_name: str, root: Path):
    return {
        "id": job_id,
        "base_url": world.fake.base_url,
        "project": str(project),
        "home": str(home),
        "marker": root.name + "/" + job_id.split("#")[0],
        "model": model_name,
        "result": str(root / f"{job_id.replace('#', '-')}.json"),
        "log": str(root / "agent.log"),
    }


def fault_script(rng: random.Random) -> list[Any]:
    """Per step: maybe a 529, a 503, two 529s or a mid-stream overload, then an answer (the
    first step always retries once, so every run has more attempts than steps)."""
    replies: list[Any] = [overloaded()]
    for _ in range(TOTAL + 1):
        faults = rng.choice(
            [
                [],
                [],
                [overloaded()],
                [error(503)],
                [overloaded(), overloaded()],
                [midstream_error(2)],
            ]
        )
        replies += [*faults, ok(latency=rng.uniform(0.0, 0.005))]
    return replies


# -- what the store says, read without agentguard ---------------------------------------------


def read_store(home: Path) -> dict[str, Any]:
    path = home / "agentguard.db"
    if not path.exists():  # killed before agentguard created its store
        return {"integrity": "ok", "runs": [], "steps": [], "attempts": []}
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        integrity = "\n".join(row[0] for row in db.execute("pragma integrity_check"))
        if not db.execute("select 1 from sqlite_master where name = 'attempts'").fetchall():
            return {"integrity": integrity, "runs": [], "steps": [], "attempts": []}
        runs = [dict(r) for r in db.execute("select * from runs")]
        steps = [dict(r) for r in db.execute("select * from steps order by run_id, number")]
        attempts = [dict(r) for r in db.execute("select * from attempts order by id")]
    finally:
        db.close()
    return {"integrity": integrity, "runs": runs, "steps": steps, "attempts": attempts}


# A row whose process was killed: 'pending' until a later process marks it 'interrupted'.
CUT_SHORT = ("pending", "interrupted")


def check_attempts(attempts: list[dict], requests: list[RecordedRequest], kills: int) -> None:
    """Every request that reached the fake has its attempt row, in order, with its request-id;
    a row left 'pending' (or marked 'interrupted' once a later process found its owner gone) is
    one whose process died, whether or not its request got out."""
    j = 0
    pending = 0
    for i, row in enumerate(attempts):
        if row["outcome"] in CUT_SHORT:
            pending += 1
            later = next((r for r in attempts[i + 1 :] if r["outcome"] not in CUT_SHORT), None)
            if j < len(requests) and (
                later is None or later["request_id"] != requests[j].request_id
            ):
                j += 1  # its request arrived; the process died before the outcome was written
            continue
        assert j < len(requests), f"attempt row {row} has no request at the fake"
        request = requests[j]
        assert row["request_id"] == request.request_id, (row, request.reply)
        if request.reply == "ok":
            assert (row["outcome"], row["status_code"]) == ("ok", 200), row
        else:
            assert row["outcome"] == "retry", (row, request.reply)
            code = 200 if request.reply == "midstream_error" else int(request.reply.split(":")[1])
            assert row["status_code"] == code, (row, request.reply)
        j += 1
    assert j == len(requests), (
        f"{len(requests) - j} request(s) reached the fake with no attempt row"
    )
    assert pending <= kills, f"{pending} attempt rows pending after {kills} kill(s)"


def newest_checkpoint(steps: list[dict], shadow_git: Path, run_id: str) -> tuple[dict, str] | None:
    """The newest step with a tree snapshot: recorded in the store, or only its ref written."""
    for step in reversed(steps):
        if step["checkpoint"]:
            return step, step["checkpoint"]
        ref = f"refs/agentguard/runs/{run_id}/steps/{step['number']}^{{commit}}"
        found = subprocess.run(
            ["git", "--git-dir", str(shadow_git), "rev-parse", "--verify", "--quiet", ref],
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        )
        if found.returncode == 0:
            return step, found.stdout.strip()
    return None


def snapshot_files(shadow: ShadowRepo, shadow_git: Path, commit: str) -> dict[str, bytes]:
    """Every file a snapshot holds: its paths from the shadow store, its bytes read with git
    itself (one `cat-file --batch` rather than a process per file)."""
    paths = shadow.files(commit)
    out = subprocess.run(
        ["git", "--git-dir", str(shadow_git), "cat-file", "--batch"],
        input="".join(f"{commit}:{path}\n" for path in paths).encode(),
        capture_output=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    ).stdout
    held: dict[str, bytes] = {}
    for path in paths:
        header, out = out.split(b"\n", 1)
        size = int(header.split()[2])
        held[path], out = out[:size], out[size + 1 :]
    return held


def conversation_progress(messages: list[Any]) -> tuple[int, bool]:
    """Check the conversation is the scripted one; (tool calls answered, finished)."""
    assert messages[0] == {"role": "user", "content": TASK}, messages[0]
    answered = 0
    rest = messages[1:]
    while rest:
        assistant = rest[0]
        assert assistant["role"] == "assistant", assistant
        calls = [b for b in assistant["content"] if b.get("type") == "tool_use"]
        if not calls:
            assert answered == TOTAL and len(rest) == 1, messages
            return answered, True
        name, args = op(answered)
        assert [(c["name"], c["input"]) for c in calls] == [(name, args)], (answered, calls)
        if len(rest) == 1:  # the recorded response whose tool call is still to run
            return answered, False
        results = rest[1]["content"]
        assert rest[1]["role"] == "user" and [r["tool_use_id"] for r in results] == [
            c["id"] for c in calls
        ], rest[1]
        answered += 1
        rest = rest[2:]
    return answered, False


# -- one trial --------------------------------------------------------------------------------


@dataclass
class Run:
    trial: Trial
    world: World
    root: Path
    project: Path
    home: Path
    model: str
    initial: dict[str, bytes]
    marker: str = ""
    kills: int = 0
    generation: int = 0
    run_id: str | None = None
    attempt_ids: set[int] = field(default_factory=set)

    def requests(self) -> list[RecordedRequest]:
        mine = [r for r in self.world.fake.requests if r.headers.get(MARKER_HEADER) == self.marker]
        return sorted(mine, key=lambda r: r.received_at)

    def launch(self, rng: random.Random, *, resume: str | None, kill_random: bool) -> dict:
        self.generation += 1
        job = _job(
            self.world,
            f"{self.trial.name}#{self.generation}",
            self.project,
            self.home,
            self.model,
            self.root,
        )
        self.marker = job["marker"]
        job["resume"] = resume
        job["two_clients"] = self.trial.two_clients
        if self.generation == 1 and self.trial.kill:
            job["kill"] = self.trial.kill
        if self.generation == 2 and self.trial.then:
            job["kill"] = self.trial.then
        if self.generation == 1 and self.trial.mid_call:
            self.world.mid_call[self.marker] = [self.trial.mid_call, 0]
        if kill_random:
            job["kill_after"] = rng.uniform(0.0, 1.1) * self.world.run_seconds
        end = self.world.agent(job)
        self.world.mid_call.pop(self.marker, None)
        if end["signal"] is not None:
            assert end["signal"] == signal.SIGKILL, end
            self.kills += 1
        else:
            assert end["code"] == 0, f"agent failed: {end}\n{self.log()}"
        log = self.log(whole=True)
        for trouble in ("Traceback", "snapshot failed", "OperationalError"):
            assert trouble not in log, log
        return end

    def log(self, whole: bool = False) -> str:
        path = self.root / "agent.log"
        text = path.read_text() if path.exists() else ""
        return text if whole else text[-4000:]

    def check_store(self) -> dict[str, Any]:
        store = read_store(self.home)
        assert store["integrity"] == "ok", store["integrity"]
        if store["runs"]:  # the newest with steps; any other is a run killed before its steps
            # (or the idle second client of a two-clients trial)
            stepped = {s["run_id"] for s in store["steps"]}
            runs = sorted(store["runs"], key=lambda r: (r["id"] in stepped, r["created_at"]))
            self.run_id = runs[-1]["id"]
            assert not [s for s in store["steps"] if s["run_id"] != self.run_id], runs
        ids = {row["id"] for row in store["attempts"]}
        assert self.attempt_ids <= ids, "attempt rows vanished"
        self.attempt_ids = ids
        check_attempts(store["attempts"], self.requests(), self.kills)
        steps = store["steps"]
        assert [s["number"] for s in steps] == list(range(1, len(steps) + 1)), steps
        for step in steps:
            if step["status"] == "ok":  # a recorded response always has its tree
                assert step["checkpoint"] and step["response"], step
            else:
                assert step["status"] in CUT_SHORT, step  # only a killed process leaves one
        assert sum(s["status"] in CUT_SHORT for s in steps) <= self.kills
        return store

    def check_sent_conversations(self, store: dict[str, Any]) -> None:
        """Each step's stored conversation is exactly what its requests carried."""
        by_id = {r.request_id: r for r in self.requests()}
        with _store(self.home) as lib:
            for step in store["steps"]:
                sent = [
                    by_id[a["request_id"]]
                    for a in store["attempts"]
                    if a["step_id"] == step["id"] and a["request_id"] in by_id
                ]
                if not sent:
                    continue
                stored = lib.conversation(step["id"])
                for request in sent:
                    assert request.body["messages"] == stored, step["number"]
                    assert request.body["system"] == SYSTEM and request.body["tools"] == TOOLS

    def check_resume(self, store: dict[str, Any]) -> agentguard.ResumedRun | None:
        """The pair resume gives back after a kill is consistent, and nothing else moved."""
        if not store["steps"]:
            assert work_files(self.project) == self.initial
            if self.run_id is not None:
                with (
                    _store(self.home) as lib,
                    pytest.raises(agentguard.RunNotFound, match="no steps"),
                ):
                    agentguard.resume(self.run_id, home=self.home, store=lib)
            self.check_user_state()
            return None
        assert self.run_id is not None
        shadow_git = self.home / "shadow" / project_key(self.project) / "repo.git"
        expected = newest_checkpoint(store["steps"], shadow_git, self.run_id)
        with _store(self.home) as lib:
            run = agentguard.resume(self.run_id, home=self.home, store=lib)
        if expected is None:  # no snapshot finished yet: no tool has run, nothing to restore
            step = store["steps"][-1]
            assert (run.step, run.checkpoint) == (step["number"], None)
        else:
            step, checkpoint = expected
            assert (run.step, run.checkpoint) == (step["number"], checkpoint)
        # the conversation: what that step sent, plus its recorded response when it has one
        if step["status"] == "ok":
            response = json.loads(step["response"])
            assert run.response == response
            assert run.messages[-1] == {"role": "assistant", "content": response["content"]}
            sent = run.messages[:-1]
        else:
            assert run.response is None
            sent = run.messages
        with _store(self.home) as lib:  # ... which check_sent_conversations holds to the wire
            assert sent == lib.conversation(step["id"])
        answered, finished = conversation_progress(run.messages)
        assert not finished or step["number"] == len(store["steps"])
        # the tree: exactly that snapshot, which is exactly the tool calls answered so far
        files = work_files(self.project)
        assert files == tree_after(self.initial, answered), sorted(files)
        if run.checkpoint is not None:
            shadow = ShadowRepo(self.project, shadow_git.parent)
            assert snapshot_files(shadow, shadow_git, run.checkpoint) == files
        self.check_user_state()
        return run

    def check_user_state(self) -> None:
        assert files_of(self.project)[1] == self.world.user.ignored
        state = git_state(self.project)
        assert state.status == self.world.user.git.status
        assert state.dot_git == self.world.user.git.dot_git, (
            f"the user's .git changed:\n{describe_git(self.project)}\n"
            f"was:\n{self.world.user.described}"
        )

    def check_completed(self, store: dict[str, Any]) -> None:
        assert self.run_id is not None
        [run_row] = [r for r in store["runs"] if r["id"] == self.run_id]
        assert run_row["status"] == "completed", run_row
        steps = store["steps"]
        last = steps[-1]
        assert last["status"] == "ok"
        response = json.loads(last["response"])
        with _store(self.home) as lib:
            final = [
                *lib.conversation(last["id"]),
                {"role": "assistant", "content": response["content"]},
            ]
        assert conversation_progress(final) == (TOTAL, True)
        # the conversation is a chain of steps, each continuing the one before it
        chain, step_id = [], last["id"]
        by_id = {s["id"]: s for s in steps}
        while step_id is not None:
            chain.append(by_id[step_id]["number"])
            step_id = by_id[step_id]["parent_id"]
        assert chain == sorted(chain, reverse=True) and chain[-1] == 1, chain
        # a recorded response is never paid for again: once a step's answer is in the store,
        # no later request carries that step's conversation
        requests = self.requests()
        by_request_id = {r.request_id: r for r in requests}
        with _store(self.home) as lib:
            for step in steps:
                if step["status"] != "ok":
                    continue
                [served] = [
                    a
                    for a in store["attempts"]
                    if a["step_id"] == step["id"] and a["outcome"] == "ok"
                ]
                answered_at = by_request_id[served["request_id"]].received_at
                conversation = lib.conversation(step["id"])
                again = [
                    r.request_id
                    for r in requests
                    if r.received_at > answered_at and r.body.get("messages") == conversation
                ]
                assert not again, f"step {step['number']} was asked again: {again}"
        assert work_files(self.project) == tree_after(self.initial, TOTAL)
        self.check_user_state()


class _store:
    def __init__(self, home: Path) -> None:
        self.store = Store.open(home)

    def __enter__(self) -> Store:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


@pytest.mark.parametrize("trial", TRIALS, ids=str)
def test_a_killed_run_resumes_to_a_consistent_pair(
    trial: Trial, world: World, tmp_path: Path
) -> None:
    print(f"trial {trial}: {trial.kill or trial.mid_call or 'random time'}")
    rng = random.Random(trial.seed)
    project = tmp_path / "project"
    shutil.copytree(world.template, project, symlinks=True)
    model_name = f"claude-crash-{trial.name}"
    world.fake.script(*fault_script(rng), model=model_name)
    run = Run(
        trial=trial,
        world=world,
        root=tmp_path,
        project=project,
        home=tmp_path / "home",
        model=model_name,
        initial=world.user.files,
    )
    end = run.launch(rng, resume=None, kill_random=trial.at_random)
    if not trial.at_random:  # a named point must really be reached
        assert end["signal"] == signal.SIGKILL, f"{trial} was not killed: {end}\n{run.log()}"
    store = run.check_store()
    if end["signal"] is None:  # a random delay longer than the run
        run.check_completed(store)
        print(f"trial {trial}: completed before its kill")
        return
    if trial.in_flight is not None:
        attempts, sent = store["attempts"], run.requests()
        pending = [a["id"] for a in attempts if a["outcome"] == "pending"]
        assert pending == ([] if trial.in_flight == "none" else [attempts[-1]["id"]]), attempts
        assert len(attempts) - len(sent) == (trial.in_flight == "unsent"), (attempts, sent)
    run.check_sent_conversations(store)
    resumed = run.check_resume(store)
    if trial.resumes is not None:
        assert resumed is not None
        assert resumed.step == store["steps"][-1]["number"]
        assert (resumed.response is not None) == (trial.resumes == "answered")
    if not trial.carry_on:
        return
    # Go on in new processes, killed at random now and then, until the run completes (a run
    # killed before its first step cannot be resumed: the user starts a new one).
    for generation in range(2, 8):
        kill_random = generation < 7 and not trial.then and rng.random() < 0.5
        end = run.launch(rng, resume=resumed and resumed.run_id, kill_random=kill_random)
        if generation == 2 and trial.then:
            assert end["signal"] == signal.SIGKILL, f"{trial}: not killed again\n{run.log()}"
        store = run.check_store()
        if end["signal"] is None:
            break
        resumed = run.check_resume(store)
    else:
        pytest.fail(f"{trial}: the run did not complete")
    run.check_sent_conversations(store)
    run.check_completed(store)
    print(f"trial {trial}: completed after {run.kills} kill(s) in {run.generation} processes")
    assert run.kills >= 1
