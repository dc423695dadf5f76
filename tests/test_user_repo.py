"""The user's own repository at each checkpoint (branch, HEAD, dirty), shown by `show`, and
checked before `restore` / `resume` rewrite a tree that has moved to another branch since.

Real git repositories, a real store, runs made through a wrapped client and the fake provider.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from anthropic import Anthropic

import agentguard
from agentguard.cli import main
from agentguard.store import Store
from agentguard.user_repo import BranchMoved, GitState, read_state
from tests.conftest import API_KEY, git, user

ROOT = Path(__file__).resolve().parents[1]
OPUS = "claude-opus-4-7"
ORIGINAL = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stdin is not a terminal unless a test says otherwise."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ask(client, turns: int = 1):
    messages = [user("fix the bug")]
    for i in range(turns - 1):
        messages += [{"role": "assistant", "content": f"step {i}"}, user("go on")]
    return client.messages.create(model=OPUS, max_tokens=16, messages=messages)


def client_in(fake, folder: Path):
    """A wrapped client on another folder than the `project` fixture's."""
    return agentguard.wrap(Anthropic(base_url=fake.base_url, api_key=API_KEY), project=folder)


def recorded(home: Path, run_id: str) -> list[dict]:
    """The git columns of each step's checkpoint row, in step order."""
    store = Store.open(home)
    try:
        return store.query(
            "select s.number, n.git_branch, n.git_head, n.git_dirty from steps s "
            "join snapshots n on n.step_id = s.id and n.kind = 'checkpoint' "
            "where s.run_id = ? order by s.number",
            [run_id],
        )
    finally:
        store.close()


def head(project: Path) -> str:
    return git(project, "rev-parse", "HEAD").strip()


def files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, .git included: what "untouched byte for byte" means."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def tree(project: Path) -> dict[str, bytes]:
    return {k: v for k, v in files(project).items() if not k.startswith(".git" + os.sep)}


# -- what a checkpoint records ---------------------------------------------------------------


def test_each_checkpoint_records_branch_head_and_dirty(guarded, project, home):
    client = guarded(run="states")
    commit = head(project)
    ask(client)  # 1: clean, on main
    (project / "app.py").write_text(FIXED)
    ask(client, 2)  # 2: a tracked file changed
    git(project, "stash", "-q")
    (project / "notes.txt").write_text("new\n")
    ask(client, 3)  # 3: only an untracked file
    (project / "notes.txt").unlink()
    (project / "debug.log").write_text("ignored by .gitignore\n")
    ask(client, 4)  # 4: only an ignored file: clean
    git(project, "checkout", "-q", "--detach")
    ask(client, 5)  # 5: detached HEAD
    client.agentguard.close()

    rows = recorded(home, client.run_id)
    assert [(r["git_branch"], r["git_head"], r["git_dirty"]) for r in rows] == [
        ("main", commit, 0),
        ("main", commit, 1),
        ("main", commit, 1),
        ("main", commit, 0),
        (None, commit, 0),
    ]


def test_a_branch_with_a_slash_and_no_commits_yet(fake, tmp_path, home):
    folder = tmp_path / "fresh"
    folder.mkdir()
    git(folder, "init", "-q", "-b", "feature/login")
    (folder / "a.txt").write_text("a\n")
    client = client_in(fake, folder)
    ask(client)
    client.agentguard.close()
    [row] = recorded(home, client.run_id)
    assert (row["git_branch"], row["git_head"], row["git_dirty"]) == ("feature/login", None, 1)


def test_a_project_that_is_not_a_git_repository_records_nothing(fake, tmp_path, home):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "a.txt").write_text("a\n")
    client = client_in(fake, folder)
    ask(client)
    client.agentguard.close()
    [row] = recorded(home, client.run_id)
    assert (row["git_branch"], row["git_head"], row["git_dirty"]) == (None, None, None)


def test_a_subfolder_project_is_dirty_only_by_its_own_files(tmp_path):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "sub" / "a.txt").write_text("a\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    (repo / "elsewhere.txt").write_text("outside the project folder\n")
    assert read_state(repo / "sub") == GitState("main", head(repo), dirty=False)
    assert read_state(repo) == GitState("main", head(repo), dirty=True)


def test_a_checkpoint_leaves_the_users_git_folder_byte_identical(guarded, project, home):
    """`git status` would refresh a stale index (app.py touched, same content) and rewrite it;
    with GIT_OPTIONAL_LOCKS=0 it neither takes index.lock nor writes."""
    os.utime(project / "app.py", (1_600_000_000, 1_600_000_000))
    before = files(project / ".git")
    stamp = (project / ".git" / "index").stat().st_mtime_ns
    client = guarded()
    ask(client)
    client.agentguard.close()
    [row] = recorded(home, client.run_id)
    assert row["git_branch"] == "main" and row["git_dirty"] == 0
    assert files(project / ".git") == before
    assert (project / ".git" / "index").stat().st_mtime_ns == stamp


# -- show ------------------------------------------------------------------------------------


def test_show_and_show_json_give_each_checkpoints_git_state(capsys, guarded, project):
    client = guarded(run="shown")
    ask(client)
    (project / "app.py").write_text(FIXED)
    ask(client, 2)
    client.agentguard.close()
    commit = head(project)

    code, out, err = cli(capsys, "show", client.run_id, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert [s["git"] for s in doc["steps"]] == [
        {"branch": "main", "head": commit, "dirty": False},
        {"branch": "main", "head": commit, "dirty": True},
    ]
    assert doc["run"]["git"] == {"branch": "main", "head": commit, "dirty": True}

    code, out, err = cli(capsys, "show", client.run_id)
    assert code == 0, err
    assert f"  git: main at {commit[:7]}, clean\n" in out
    assert f"  git: main at {commit[:7]}, uncommitted changes\n" in out
    assert f"git      main at {commit[:7]}, uncommitted changes (at the last checkpoint)" in out


def test_show_json_git_is_null_when_nothing_was_recorded(capsys, fake, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    client = client_in(fake, folder)
    ask(client)
    client.agentguard.close()
    code, out, err = cli(capsys, "show", client.run_id, "--json")
    assert code == 0, err
    assert json.loads(out)["steps"][0]["git"] is None


# -- no git, no GitPython ----------------------------------------------------------------------

BLOCK_GITPYTHON = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "git" or name.startswith("git."):
            raise ImportError("GitPython is not installed (blocked by the test)")
        return None
sys.meta_path.insert(0, Block())
"""

PROBE = """
import json, sys
import agentguard, agentguard.cli, agentguard.guard, agentguard.restoring, agentguard.resuming
import agentguard.commands.show, agentguard.commands.restore, agentguard.commands.resume
loaded = sorted(m for m in sys.modules if m == "git" or m.startswith("git."))
from agentguard.user_repo import read_state
print(json.dumps({"loaded": loaded, "state": repr(read_state(sys.argv[1]))}))
"""


def probe(project: Path, *, prelude: str = "", env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", prelude + PROBE, str(project)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_agentguard_never_imports_gitpython(project):
    result = probe(project)
    assert result["loaded"] == []
    assert result["state"].startswith("GitState(branch='main'")


def test_without_gitpython_agentguard_works_and_records_nothing(project):
    result = probe(project, prelude=BLOCK_GITPYTHON)
    assert result == {"loaded": [], "state": "None"}


def test_without_a_git_executable_agentguard_works_and_records_nothing(project, tmp_path):
    """GitPython raises ImportError at import when it finds no git: that is no state."""
    python_only = tmp_path / "bin"
    python_only.mkdir()
    (python_only / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_PYTHON")}
    env["PATH"] = str(python_only)
    assert shutil.which("git", path=env["PATH"]) is None
    result = probe(project, env=env)
    assert result == {"loaded": [], "state": "None"}


# -- restore / resume after the user switched branches -------------------------------------------


@pytest.fixture
def switched(guarded, project):
    """A run made on feature/login (step 2 after the agent's edit); the user then commits that
    work and goes back to main, so step 2's checkpoint was taken on another branch."""
    git(project, "checkout", "-q", "-b", "feature/login")
    client = guarded(run="login")
    ask(client)
    (project / "app.py").write_text(FIXED)
    (project / "notes.txt").write_text("fixed the sign\n")
    ask(client, 2)
    client.agentguard.close(status="interrupted")
    taken_at = head(project)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "login work")
    git(project, "checkout", "-q", "main")
    assert (project / "app.py").read_text() == ORIGINAL
    return client.run_id, taken_at


def moved_sentence(project: Path, taken_at: str) -> str:
    return (
        f"the project is now on branch main at {head(project)[:7]}, "
        f"the checkpoint was taken on feature/login at {taken_at[:7]}"
    )


def test_restore_after_a_branch_switch_is_refused_without_yes(capsys, switched, project):
    run_id, taken_at = switched
    before = files(project)
    code, out, err = cli(capsys, "restore", run_id, "--step", "2")
    assert code == 2 and out == ""
    assert err.startswith("agentguard: ") and err.count("\n") == 1 and "Traceback" not in err
    assert moved_sentence(project, taken_at) in err and "--yes" in err
    assert files(project) == before  # tree and .git untouched, byte for byte

    code, out, err = cli(capsys, "restore", run_id, "--step", "2", "--yes")
    assert code == 0, err
    assert (project / "app.py").read_text() == FIXED and (project / "notes.txt").exists()


def test_restore_after_a_branch_switch_says_so_at_the_prompt(
    capsys, monkeypatch, switched, project
):
    run_id, taken_at = switched
    before = files(project)
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, _, err = cli(capsys, "restore", run_id, "--step", "2")
    assert code == 1 and files(project) == before
    assert moved_sentence(project, taken_at).capitalize() in err and "[y/N]" in err

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    code, _, err = cli(capsys, "restore", run_id, "--step", "2")
    assert code == 0, err
    assert (project / "app.py").read_text() == FIXED


def test_resume_after_a_branch_switch_needs_yes(capsys, switched, project, home):
    run_id, taken_at = switched
    before = files(project)
    code, out, err = cli(capsys, "resume", run_id)
    assert code == 2 and out == ""
    assert err.startswith("agentguard: ") and err.count("\n") == 1 and "Traceback" not in err
    assert moved_sentence(project, taken_at) in err and "--yes" in err
    assert files(project) == before

    code, out, err = cli(capsys, "resume", run_id, "--no-restore")  # the tree is not rewritten
    assert code == 0, err
    assert files(project) == before

    code, out, err = cli(capsys, "resume", run_id, "--yes")
    assert code == 0, err
    assert (project / "app.py").read_text() == FIXED and (project / "notes.txt").exists()


def test_resume_after_a_branch_switch_asks_on_a_terminal(capsys, monkeypatch, switched, project):
    run_id, taken_at = switched
    before = files(project)
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, _, err = cli(capsys, "resume", run_id)
    assert code == 1 and files(project) == before
    assert moved_sentence(project, taken_at).capitalize() in err and "[y/N]" in err

    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    code, _, err = cli(capsys, "resume", run_id)
    assert code == 0, err
    assert (project / "app.py").read_text() == FIXED


def test_resume_due_after_a_branch_switch_is_reported_not_restored(capsys, switched, project):
    run_id, taken_at = switched
    store = Store.open()
    store.update_run(run_id, status="waiting", next_attempt_at=0)
    store.close()
    before = files(project)
    code, out, _ = cli(capsys, "resume", "--due", "--json")
    assert code == 1
    [failed] = json.loads(out)["failed"]
    assert failed["run_id"] == run_id and moved_sentence(project, taken_at) in failed["error"]
    assert files(project) == before


def test_the_library_resume_refuses_a_moved_project_unless_allowed(switched, project):
    run_id, taken_at = switched
    before = files(project)
    with pytest.raises(BranchMoved) as refused:
        agentguard.resume(run_id)
    message = str(refused.value)
    assert moved_sentence(project, taken_at) in message and "allow_moved=True" in message
    assert files(project) == before

    run = agentguard.resume(run_id, restore=False)  # nothing rewritten: nothing to refuse
    assert run.restored is None and files(project) == before

    run = agentguard.resume(run_id, allow_moved=True)
    assert run.restored is not None and (project / "app.py").read_text() == FIXED
    # once the tree is the checkpoint's, resuming again rewrites nothing and asks nothing
    assert agentguard.resume(run_id).restored.changes == ()


def test_a_commit_on_the_same_branch_is_a_move_too(capsys, guarded, project):
    client = guarded(run="committed")
    ask(client)
    client.agentguard.close(status="interrupted")
    taken_at = head(project)
    (project / "app.py").write_text(FIXED)
    git(project, "commit", "-q", "-am", "fixed by hand")
    code, _, err = cli(capsys, "resume", client.run_id)
    assert code == 2
    assert (
        f"the project is now on branch main at {head(project)[:7]}, "
        f"the checkpoint was taken on main at {taken_at[:7]}"
    ) in err


def test_an_unmoved_project_resumes_without_being_asked(capsys, guarded, project):
    client = guarded(run="unmoved")
    ask(client)
    client.agentguard.close(status="interrupted")
    (project / "app.py").write_text("half-written\n")
    code, _, err = cli(capsys, "resume", client.run_id)
    assert code == 0, err
    assert (project / "app.py").read_text() == ORIGINAL


def test_a_reader_kept_open_between_checkpoints_sees_every_move(project: Path) -> None:
    """The guard keeps one StateReader (GitPython's Repo and its git processes stay open); a
    commit, a branch switch, a detached HEAD and new files between readings are all seen."""
    from agentguard.user_repo import StateReader

    reader = StateReader(project)
    try:
        first = reader.read()
        assert first is not None and (first.branch, first.dirty) == ("main", False)
        (project / "app.py").write_text("def add(a, b):\n    return a + b\n")
        assert reader.read() == GitState("main", first.head, True)
        git(project, "commit", "-qam", "fix")
        git(project, "checkout", "-q", "-b", "feature/x")
        moved = reader.read()
        assert moved is not None and moved.branch == "feature/x" and moved.head != first.head
        assert not moved.dirty
        git(project, "checkout", "-q", "--detach", "HEAD")
        detached = reader.read()
        assert detached == GitState(None, moved.head, False)
        (project / "new.txt").write_text("untracked\n")
        assert reader.read() == GitState(None, moved.head, True)
    finally:
        reader.close()
    assert reader.read() is not None  # closed: the next reading opens it again
    reader.close()


def test_the_snapshot_thread_runs_at_a_lower_priority(project: Path, home: Path) -> None:
    """A snapshot runs beside the model call; on a busy machine the agent (and a proxy's event
    loop) go first: the snapshot thread, and the git it starts, are niced."""
    if not hasattr(os, "getpriority"):
        pytest.skip("no thread priorities on this platform")
    import threading

    guard = agentguard.Guard(project)
    try:
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        theirs = guard._executor.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        ).result()
        child = guard._executor.submit(
            lambda: subprocess.run(
                ["sh", "-c", "cut -d' ' -f19 /proc/self/stat"], capture_output=True, text=True
            ).stdout.strip()
        ).result()
    finally:
        guard.close()
    assert theirs == min(mine + 10, 19)
    if child:  # Linux: the git processes it starts inherit it
        assert int(child) == theirs
