"""`agentguard statusline`: real stores built by guarded steps against the fake provider, fed the
JSON Claude Code writes to a status-line command's stdin — in-process through the CLI, as a
subprocess, and by the real Claude Code (interactive, under a pseudo-terminal: `-p` mode does
not run status-line commands at all).
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agentguard import cli
from agentguard.clock import FakeClock
from agentguard.commands import statusline
from agentguard.store import DB_NAME, Store
from agentguard.store_choice import STORE_ENV
from agentguard.testing import FakeProvider, Turn, ok, overloaded, stall
from tests import claude_cli
from tests.claude_cli import ClaudeCode
from tests.conftest import ATTEMPTS, Engine, storm, user

OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"
CHAIN = [f"anthropic:{OPUS}", f"anthropic:{SONNET}"]
SESSION = "5b7c2a7e-1f0d-4c47-9a43-2f1e3d4c5b6a"


def session(project: Path | None = None, session_id: str = SESSION) -> dict[str, Any]:
    """What Claude Code 2.1.330 writes to the command's stdin (fields as it sent them)."""
    folder = str(project or "/nowhere")
    return {
        "session_id": session_id,
        "transcript_path": f"/home/u/.claude/projects/x/{session_id}.jsonl",
        "cwd": folder,
        "model": {"id": "claude-opus-4-7", "display_name": "Opus 4.7"},
        "workspace": {"current_dir": folder, "project_dir": folder, "added_dirs": []},
        "version": "2.1.330",
        "cost": {"total_cost_usd": 0, "total_duration_ms": 752},
    }


def line(
    stdin: dict[str, Any] | str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> str:
    """`agentguard statusline` through the CLI's main, stdin as Claude Code gives it."""
    text = stdin if isinstance(stdin, str) else json.dumps(stdin)
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    assert cli.main(["statusline", *args]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.endswith("\n") and out.count("\n") == 1, (out, err)
    return out.removesuffix("\n")


@pytest.fixture
def on_engine(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """The test's store on each engine: SQLite under AGENTGUARD_HOME, or PostgreSQL (a fresh
    schema) named by $AGENTGUARD_STORE — what the guarded client writes and the line reads."""
    if engine.name == "postgresql":
        monkeypatch.setenv(STORE_ENV, engine.locator)
    else:
        monkeypatch.delenv(STORE_ENV, raising=False)
    return engine


def ask(client: Any) -> Any:
    return client.messages.create(model=OPUS, max_tokens=64, messages=[user("hi")])


def until(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)
    return value


# -- what the line says ---------------------------------------------------------------------------


def test_a_substituted_step_says_who_serves_and_why(
    on_engine: Engine,  # first: its schema is dropped after the clients close
    guarded: Callable[..., Any],
    fake: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = guarded(run=SESSION, chain=CHAIN)
    fake.script(*storm(), model=OPUS)
    assert ask(client).model == SONNET
    expected = f"agentguard ⚠ sonnet-4-6 serving — opus-4-7 529 ×{ATTEMPTS}"
    assert line(session(), monkeypatch, capsys) == expected


def test_a_clean_step_says_the_model_and_its_retries(
    on_engine: Engine,  # first: its schema is dropped after the clients close
    guarded: Callable[..., Any],
    fake: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = guarded(run="not-the-session-id")
    # A proxy that cannot name its run after the session records this event instead.
    client.agentguard.event(None, statusline.SESSION_EVENT, session_id=SESSION)
    ask(client)
    assert line(session(), monkeypatch, capsys) == "agentguard ✓ opus-4-7"
    fake.script(overloaded(), overloaded())
    ask(client)
    assert line(session(), monkeypatch, capsys) == "agentguard ✓ opus-4-7 · 2 retries"
    fake.script(overloaded())
    ask(client)
    assert line(session(), monkeypatch, capsys) == "agentguard ✓ opus-4-7 · 1 retry"


def test_a_step_in_flight_after_failures_says_what_it_waits_for(
    on_engine: Engine,  # first: its schema is dropped after the clients close
    guarded: Callable[..., Any],
    fake: FakeProvider,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = guarded(run=SESSION, clock=FakeClock(start=time.time()), timeout=30.0)
    ask(client)  # a first turn, served cleanly
    fake.script(overloaded(), overloaded(), stall(before_headers=True), ok(Turn(text="late")))
    answers: list[Any] = []
    worker = threading.Thread(target=lambda: answers.append(ask(client)), daemon=True)
    worker.start()
    try:
        until(lambda: len(fake.requests) == 4)  # the first turn, two 529s, the stalled try
        waiting = line(session(), monkeypatch, capsys)
        assert re.fullmatch(r"agentguard ⏳ waiting for opus-4-7 — 529 storm, \d+s", waiting)
    finally:
        fake.release_stalls()  # the stalled connection closes: the step retries and is served
        worker.join(30)
    assert answers and answers[0].content[0].text == "late"
    assert line(session(), monkeypatch, capsys) == "agentguard ✓ opus-4-7 · 3 retries"


def test_a_step_not_served_says_so(
    on_engine: Engine,  # first: its schema is dropped after the clients close
    guarded: Callable[..., Any],
    fake: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import agentguard

    client = guarded(run=SESSION)
    fake.script(*storm())
    with pytest.raises(agentguard.RetriesExhausted):
        ask(client)
    assert line(session(), monkeypatch, capsys) == f"agentguard ✗ opus-4-7 failed — 529 ×{ATTEMPTS}"


def test_an_unknown_session_falls_back_to_the_newest_run_of_its_folder(
    on_engine: Engine,  # first: its schema is dropped after the clients close
    guarded: Callable[..., Any],
    fake: FakeProvider,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.script(overloaded())
    ask(guarded(run="some-earlier-run"))
    unknown = session(project, session_id=str(uuid.uuid4()))
    assert line(unknown, monkeypatch, capsys) == "agentguard ✓ opus-4-7 · 1 retry"
    assert line(session(), monkeypatch, capsys) == "agentguard"  # another folder, another id
    only_cwd = {"session_id": "x", "cwd": str(project / "." / "")}  # no workspace object
    assert line(only_cwd, monkeypatch, capsys) == "agentguard ✓ opus-4-7 · 1 retry"


# -- never loud -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stdin", ["", "not json", "[1, 2]", "null", '{"session_id": 42, "workspace": "x"}']
)
def test_bad_input_prints_agentguard_and_exits_0(
    stdin: str,
    on_engine: Engine,  # first: its schema is dropped after the clients close
    guarded: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ask(guarded(run=SESSION))
    assert line(stdin, monkeypatch, capsys) == "agentguard"


def test_no_store_or_a_broken_one_prints_agentguard(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert line(session(), monkeypatch, capsys) == "agentguard"
    assert not home.exists()  # nothing created: the status line only reads
    home.mkdir()
    (home / DB_NAME).write_bytes(b"this is not a database" * 100)
    assert line(session(), monkeypatch, capsys) == "agentguard"
    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / DB_NAME).execute("create table unrelated (x)").connection.commit()
    assert line(session(), monkeypatch, capsys, "--home", str(other)) == "agentguard"


def test_an_unreachable_postgresql_server_prints_agentguard_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that refuses the connection is the line `agentguard`, as a missing SQLite
    file is: nothing on stderr, exit 0, no wait."""
    url = "postgresql://agent:pw-s3cret@127.0.0.1:1/fleet"
    started = time.monotonic()
    assert line(session(), monkeypatch, capsys, "--store", url) == "agentguard"
    monkeypatch.setenv(STORE_ENV, url)
    assert line(session(), monkeypatch, capsys) == "agentguard"
    assert time.monotonic() - started < statusline.CONNECT_TIMEOUT_S


def test_a_postgresql_server_that_never_answers_costs_the_connect_timeout_at_most(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that takes the connection and then says nothing (overloaded, a dead proxy in
    between) must not hold Claude Code's prompt: the line gives up after CONNECT_TIMEOUT_S."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepted by the kernel, never answered
        url = f"postgresql://agent@127.0.0.1:{silent.getsockname()[1]}/fleet"
        started = time.monotonic()
        assert line(session(), monkeypatch, capsys, "--store", url) == "agentguard"
        waited = time.monotonic() - started
    assert waited < statusline.CONNECT_TIMEOUT_S + 2.0, waited


def test_a_postgresql_store_without_agentguards_tables_prints_agentguard_and_creates_nothing(
    postgres_schema_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert line(session(), monkeypatch, capsys, "--store", postgres_schema_url) == "agentguard"
    with psycopg.connect(postgres_schema_url) as conn:
        tables = conn.execute(
            "select count(*) from information_schema.tables where table_schema = current_schema()"
        ).fetchone()
    assert tables == (0,)  # read only: no migration, as no SQLite file is created


def test_store_and_the_config_file_choose_the_store_the_line_reads(
    postgres_schema_url: str,  # first: its schema is dropped after the client closes
    guarded: Callable[..., Any],
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    ask(guarded(run=SESSION, store_url=postgres_schema_url))
    expected = "agentguard ✓ opus-4-7"
    assert line(session(), monkeypatch, capsys) == "agentguard"  # not in the SQLite file
    assert line(session(), monkeypatch, capsys, "--store", postgres_schema_url) == expected
    direct = [sys.executable, "-m", "agentguard.commands.statusline", "--home", str(home)]
    out, _ = run_command([*direct, "--store", postgres_schema_url], json.dumps(session()))
    assert out == expected + "\n"
    folder = tmp_path / "configured"
    folder.mkdir()
    (folder / "agentguard.toml").write_text(f'store = "{postgres_schema_url}"\n')
    monkeypatch.chdir(folder)  # where Claude Code runs the command: the session's folder
    assert line(session(), monkeypatch, capsys) == expected
    monkeypatch.setenv(STORE_ENV, "sqlite")  # the environment goes over the file
    assert line(session(), monkeypatch, capsys) == "agentguard"
    assert line(session(), monkeypatch, capsys, "--store", postgres_schema_url) == expected


def test_an_event_whose_detail_is_not_json_does_not_hide_the_session(
    on_engine: Engine,  # first: its schema is dropped after the clients close
    guarded: Callable[..., Any],
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only client_session events' details are read as JSON (PostgreSQL casts the text)."""
    other = guarded(run="another-run")
    other.agentguard.event(None, "note", text="x")
    client = guarded(run="not-the-session-id")
    client.agentguard.event(None, statusline.SESSION_EVENT, session_id=SESSION)
    ask(client)
    sql = "update events set detail = 'not json' where kind = 'note'"
    if on_engine.name == "sqlite":
        with sqlite3.connect(home / DB_NAME) as conn:
            conn.execute(sql)
    else:
        with psycopg.connect(on_engine.locator, autocommit=True) as pg:
            pg.execute(sql)
    assert line(session(), monkeypatch, capsys) == "agentguard ✓ opus-4-7"


def test_the_store_module_names_the_same_database_file() -> None:
    assert statusline.DB_NAME == DB_NAME  # duplicated so the status line need not load the store


# -- as Claude Code runs it -----------------------------------------------------------------------


def run_command(command: list[str], stdin: str) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stderr == "", done
    return done.stdout, (time.perf_counter() - started) * 1000


def test_the_command_as_a_process_prints_one_line_quickly(
    on_engine: Engine,  # first: its schema is dropped after the clients close
    guarded: Callable[..., Any],
    fake: FakeProvider,
    home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = guarded(run=SESSION, chain=CHAIN)
    fake.script(*storm(), model=OPUS)
    ask(client)
    stdin = json.dumps(session())
    agentguard = [sys.executable, "-m", "agentguard.cli", "statusline", "--home", str(home)]
    direct = [sys.executable, "-m", "agentguard.commands.statusline", "--home", str(home)]
    expected = f"agentguard ⚠ sonnet-4-6 serving — opus-4-7 529 ×{ATTEMPTS}\n"
    timings = {}
    for name, command in (("agentguard statusline", agentguard), ("python -m", direct)):
        out, ms = run_command(command, stdin)
        assert out == expected
        timings[name] = ms
    started = time.perf_counter()
    for _ in range(20):
        assert statusline.status_line(session(), str(home)) == expected.strip()
    timings["query"] = (time.perf_counter() - started) * 1000 / 20
    with capsys.disabled():
        shown = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        print(f"\nstatusline ms ({on_engine.name}): {shown}")


def test_the_lookup_finds_the_run_in_a_big_store(
    guarded: Callable[..., Any], fake: FakeProvider, home: Path
) -> None:
    """2,000 other runs and 60,000 events besides the session's: its run is still the one found
    (how long the lookup takes there is a benchmark figure: benchmarks/statusline.py)."""
    client = guarded(run="the-proxy-run")
    client.agentguard.event(None, statusline.SESSION_EVENT, session_id=SESSION)
    fake.script(overloaded())
    ask(client)
    store = Store.open(home)
    with store.write() as db:
        db["runs"].insert_all(
            {"id": f"r{i:05d}", "name": f"run {i}", "project": f"/p/{i}", "created_at": i}
            for i in range(2000)
        )
        db["events"].insert_all(
            {"run_id": f"r{i % 2000:05d}", "at": i, "kind": "attempt", "detail": "{}"}
            for i in range(60000)
        )
    store.close()
    assert statusline.status_line(session(), str(home)) == "agentguard ✓ opus-4-7 · 1 retry"


def test_claude_code_shows_the_line_for_its_session(
    claude_code: ClaudeCode,
    guarded: Callable[..., Any],
    fake: FakeProvider,
    home: Path,
    tmp_path: Path,
) -> None:
    """The real thing: interactive Claude Code (under a pseudo-terminal) runs the configured
    `statusLine` command with its session JSON and draws what it prints. Started with
    `--session-id` so the run named after that session is found (in another folder than the
    run's project, so the folder fallback cannot be what found it)."""
    fake.script(*storm(), model=OPUS)
    ask(guarded(run=SESSION, chain=CHAIN))
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    cc_home = tmp_path / "claude-home"
    cc_home.mkdir()
    seen = tmp_path / "statusline-stdin"  # one file per run of the command: what it was given
    seen.mkdir()
    command = (
        f'tee "$(mktemp -p {shlex.quote(str(seen))})" | {shlex.quote(sys.executable)} '
        f"-m agentguard.cli statusline --home {shlex.quote(str(home))}"
    )
    settings = {"statusLine": {"type": "command", "command": command}}
    screen = interactive(
        claude_code,
        ["--session-id", SESSION, "--settings", json.dumps(settings)],
        cwd=folder,
        home=cc_home,
        base_url=fake.base_url,
        until_text=f"opus-4-7 529 ×{ATTEMPTS}",
    )
    assert f"agentguard ⚠ sonnet-4-6 serving — opus-4-7 529 ×{ATTEMPTS}" in screen
    given = [
        json.loads(text) for f in seen.iterdir() if (text := f.read_text()).rstrip().endswith("}")
    ]
    assert given, "Claude Code gave the command no JSON"
    for doc in given:
        assert doc["session_id"] == SESSION
        assert doc["workspace"]["current_dir"] == str(folder) == doc["cwd"]
        assert {"transcript_path", "model", "version"} <= set(doc)
    assert len(fake.requests) == ATTEMPTS + 1  # the guarded step's; Claude Code sent none


def test_claude_code_in_print_mode_runs_no_status_line(
    claude_code: ClaudeCode, fake: FakeProvider, project: Path, tmp_path: Path
) -> None:
    """`claude -p` never runs the statusLine command: only the interactive TUI draws it."""
    ran = tmp_path / "statusline-ran"
    settings = {"statusLine": {"type": "command", "command": f"touch {shlex.quote(str(ran))}"}}
    cc_home = tmp_path / "claude-home"
    cc_home.mkdir()
    result = claude_code.run(
        "hi",
        "--settings",
        json.dumps(settings),
        cwd=project,
        home=cc_home,
        base_url=fake.base_url,
    )
    assert result.returncode == 0 and result.json()["result"] == "ok"
    assert not ran.exists()


ANSI = re.compile(r"\x1b\[[0-9;?>=]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][0-9A-B]")


def interactive(
    claude_code: ClaudeCode,
    args: list[str],
    *,
    cwd: Path,
    home: Path,
    base_url: str,
    until_text: str,
    timeout: float = 30.0,
) -> str:
    """Start interactive Claude Code on a pseudo-terminal until `until_text` is on its screen;
    return the screen's text (escape sequences removed). Onboarding, the folder trust dialog
    and the custom-key question are answered in its config beforehand."""
    import pty

    key = claude_cli.FAKE_KEY
    config = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "customApiKeyResponses": {"approved": [key[-20:]], "rejected": []},
        "projects": {str(cwd): {"hasTrustDialogAccepted": True}},
    }
    (home / ".claude.json").write_text(json.dumps(config))
    env = claude_code.env(home, base_url, TERM="xterm-256color", COLUMNS="120", LINES="30")
    pid, fd = pty.fork()
    if pid == 0:  # the child: become Claude Code
        os.chdir(cwd)
        os.execve(str(claude_code.binary), [str(claude_code.binary), *args], env)
    raw = b""
    try:
        deadline = time.monotonic() + timeout
        while until_text not in (text := _plain(raw)):
            assert time.monotonic() < deadline, f"not on Claude Code's screen: {text[-2000:]}"
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    raw += os.read(fd, 65536)
                except OSError:
                    break
        return _plain(raw)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


def _plain(raw: bytes) -> str:
    """The text drawn, escape sequences (cursor moves, colours) as spaces, runs of blanks as one."""
    return re.sub(r"[ \t]+", " ", ANSI.sub(" ", raw.decode("utf-8", errors="replace")))
