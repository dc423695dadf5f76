"""How a run ends is recorded as it happened: never `completed` for a crash, never `pending`
for a cancelled call, and a failing substitution callback never loses a paid response."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import agentguard
from agentguard.store import DB_NAME
from agentguard.testing import FakeProvider, ok, stall
from tests.conftest import API_KEY, storm, user

ROOT = Path(__file__).resolve().parents[1]
OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"

PRELUDE = textwrap.dedent(
    """
    import sys
    from anthropic import Anthropic
    import agentguard

    base_url, project = sys.argv[1], sys.argv[2]
    raw = Anthropic(base_url=base_url, api_key={key!r}, max_retries=0)
    """
).format(key=API_KEY)

STEP = (
    'client.messages.create(model="claude-opus-4-7", max_tokens=64, '
    'messages=[{"role": "user", "content": "hi"}])\n'
)


def _script(body: str) -> str:
    return PRELUDE + textwrap.dedent(body)


def _run_script(
    body: str, fake: FakeProvider, project: Path, home: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _script(body), fake.base_url, str(project)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENTGUARD_HOME": str(home)},
        timeout=60,
        check=False,
    )


def _db(home: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(home / DB_NAME)
    conn.row_factory = sqlite3.Row
    return conn


def _only_run(home: Path) -> dict[str, Any]:
    with _db(home) as conn:
        [run] = [dict(r) for r in conn.execute("select * from runs")]
        run["events"] = [
            {"kind": e["kind"], **json.loads(e["detail"])}
            for e in conn.execute("select * from events where run_id = ? order by id", [run["id"]])
        ]
        run["steps"] = [dict(r) for r in conn.execute("select * from steps order by number")]
        run["attempts"] = [dict(r) for r in conn.execute("select * from attempts order by id")]
    return run


# -- how the process ended ----------------------------------------------------------------------


def test_an_uncaught_exception_after_a_step_records_the_run_failed(fake, project, home):
    fake.script(ok())
    body = "client = agentguard.wrap(raw, project=project)\n" + STEP
    body += "raise RuntimeError('the tool crashed on line 3')\n"
    done = _run_script(body, fake, project, home)
    assert done.returncode == 1 and "RuntimeError" in done.stderr
    run = _only_run(home)
    assert run["status"] == "failed" and run["ended_at"]
    [crash] = [e for e in run["events"] if e["kind"] == "crashed"]
    assert crash["error_type"] == "RuntimeError"
    assert crash["error"] == "the tool crashed on line 3"
    assert run["last_error"] == "RuntimeError: the tool crashed on line 3"
    assert [s["status"] for s in run["steps"]] == ["ok"]


def test_an_uncaught_keyboard_interrupt_records_the_run_interrupted(fake, project, home):
    fake.script(ok())
    body = "client = agentguard.wrap(raw, project=project)\n" + STEP + "raise KeyboardInterrupt\n"
    done = _run_script(body, fake, project, home)
    assert done.returncode != 0
    run = _only_run(home)
    assert run["status"] == "interrupted"
    assert [e["error_type"] for e in run["events"] if e["kind"] == "interrupted"] == [
        "KeyboardInterrupt"
    ]


def test_sys_exit_with_a_failure_status_records_the_run_failed(fake, project, home):
    fake.script(ok())
    body = "client = agentguard.wrap(raw, project=project)\n" + STEP + "sys.exit(3)\n"
    done = _run_script(body, fake, project, home)
    assert done.returncode == 3
    run = _only_run(home)
    assert run["status"] == "failed"
    assert "exited with status 3" in run["last_error"]


@pytest.mark.parametrize(
    "ending", ["client.close()\n", "", "sys.exit(0)\n"], ids=["close", "end", "exit0"]
)
def test_a_script_that_finishes_records_the_run_completed(fake, project, home, ending):
    fake.script(ok())
    body = "client = agentguard.wrap(raw, project=project)\n" + STEP + ending
    done = _run_script(body, fake, project, home)
    assert done.returncode == 0, done.stderr
    assert _only_run(home)["status"] == "completed"


def test_a_with_block_ended_by_an_exception_records_the_run_failed(fake, project, home):
    fake.script(ok())
    body = "with agentguard.wrap(raw, project=project) as client:\n"
    body += "    " + STEP + "    raise ValueError('bad plan')\n"
    done = _run_script(body, fake, project, home)
    assert done.returncode == 1
    run = _only_run(home)
    assert run["status"] == "failed"
    assert [e["error"] for e in run["events"] if e["kind"] == "crashed"] == ["bad plan"]


def test_a_with_block_ending_normally_records_the_run_completed(fake, guarded, home):
    fake.script(ok())
    with guarded() as client:
        client.messages.create(model=OPUS, max_tokens=64, messages=[user("hi")])
    assert _only_run(home)["status"] == "completed"


def test_a_queued_run_stays_waiting_when_its_process_dies_of_run_queued(fake, project, home):
    fake.script(*storm(), model=OPUS)
    body = "client = agentguard.wrap(raw, project=project, policy={'substitution': 'forbid'})\n"
    body += STEP
    done = _run_script(body, fake, project, home)
    assert done.returncode == 1 and "RunQueued" in done.stderr
    run = _only_run(home)
    assert run["status"] == "waiting" and run["next_attempt_at"]


def test_a_run_killed_by_a_signal_is_interrupted(fake, project, home):
    fake.script(ok())
    body = "client = agentguard.wrap(raw, project=project)\n" + STEP
    body += "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n"
    done = _run_script(body, fake, project, home)
    assert done.returncode == -signal.SIGTERM
    assert _only_run(home)["status"] == "running"  # no handler ran: nothing could say
    listed = subprocess.run(
        [sys.executable, "-m", "agentguard.cli", "runs", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENTGUARD_HOME": str(home)},
        timeout=60,
        check=True,
    )
    [shown] = json.loads(listed.stdout)["runs"]
    assert shown["status"] == "interrupted"
    assert _only_run(home)["status"] == "interrupted"


# -- cancelling a call ----------------------------------------------------------------------------


async def _until_stalled(fake: FakeProvider) -> None:
    for _ in range(2000):  # bounded: the request is in the fake within a few event-loop turns
        if fake.requests:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the request never reached the fake provider")


def _cancelled_rows(home: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    run = _only_run(home)
    [step] = run["steps"]
    [attempt] = run["attempts"]
    return step, attempt


def test_task_cancel_raises_the_callers_cancelled_error_and_records_cancelled(
    fake, guarded, home, recwarn
):
    fake.script(stall(before_headers=True))
    client = guarded(asynchronous=True)

    async def scenario() -> None:
        task = asyncio.create_task(
            client.messages.create(model=OPUS, max_tokens=64, messages=[user("hi")])
        )
        await _until_stalled(fake)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        step, attempt = _cancelled_rows(home)  # at once: before anything else runs
        assert step["status"] == "cancelled" and "CancelledError" in step["error"]
        assert attempt["outcome"] == "cancelled"

    try:
        asyncio.run(scenario())
    finally:
        fake.release_stalls()
    assert not [w for w in recwarn if "GeneratorExit" in str(w.message)]
    run = _only_run(home)
    assert [e["kind"] for e in run["events"]].count("step_cancelled") == 1
    assert run["status"] == "running"  # the run goes on: only the call was cancelled


def test_wait_for_timeout_raises_timeout_error_and_records_cancelled(fake, guarded, home):
    fake.script(stall(before_headers=True))
    client = guarded(asynchronous=True)

    async def scenario() -> None:
        call = client.messages.create(model=OPUS, max_tokens=64, messages=[user("hi")])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call, timeout=0.2)

    try:
        asyncio.run(scenario())
    finally:
        fake.release_stalls()
    step, attempt = _cancelled_rows(home)
    assert step["status"] == "cancelled" and attempt["outcome"] == "cancelled"


def test_ctrl_c_in_a_sync_loop_propagates_and_records_cancelled(fake, project, home):
    fake.script(stall(before_headers=True))
    body = """
        client = agentguard.wrap(raw, project=project)
        print("calling", flush=True)
        try:
            client.messages.create(model="claude-opus-4-7", max_tokens=64,
                                   messages=[{"role": "user", "content": "hi"}])
        except KeyboardInterrupt:
            print("KeyboardInterrupt reached the caller", flush=True)
            raise
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", _script(body), fake.base_url, str(project)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENTGUARD_HOME": str(home)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "calling\n"
        for _ in range(6000):  # wait for the request to be held by the fake (bounded: 30 s)
            if fake.requests:
                break
            try:
                proc.wait(timeout=0.005)
                break  # it died before sending: the assertions below say so
            except subprocess.TimeoutExpired:
                pass
        assert fake.requests
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        fake.release_stalls()
        if proc.poll() is None:
            proc.kill()
    assert "KeyboardInterrupt reached the caller" in out, err
    assert "GeneratorExit" not in err and "RuntimeError" not in err, err
    step, attempt = _cancelled_rows(home)
    assert step["status"] == "cancelled" and "KeyboardInterrupt" in step["error"], (step, err)
    assert attempt["outcome"] == "cancelled", (attempt, err)
    assert _only_run(home)["status"] == "interrupted"


# -- the substitution callback ------------------------------------------------------------------


def test_a_failing_on_substitution_callback_never_loses_the_response(fake, guarded, home, caplog):
    fake.script(*storm(), model=OPUS)

    def callback(info: agentguard.StepInfo) -> None:
        raise ValueError("the pager is down")

    client = guarded(chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"], on_substitution=callback)
    message = client.messages.create(model=OPUS, max_tokens=64, messages=[user("hi")])
    info = agentguard.info(message)
    assert info.substituted and info.served_model == SONNET
    run = _only_run(home)
    [failed] = [e for e in run["events"] if e["kind"] == "callback_failed"]
    assert failed["error_type"] == "ValueError" and failed["error"] == "the pager is down"
    assert [s["status"] for s in run["steps"]] == ["ok"] and run["steps"][0]["response"]
    assert "the pager is down" in caplog.text
