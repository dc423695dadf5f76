"""Small truths the README tells about the CLI: one-sentence errors, run prefixes, ISO times."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agentguard.cli import main
from agentguard.clock import FakeClock
from agentguard.store import Store
from agentguard.testing import overloaded
from tests.conftest import user


def one_sentence(err: str) -> str:
    """An error is one line on stderr, `agentguard: ...`, with no traceback."""
    assert err.startswith("agentguard: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# -- metrics --port ----------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another program is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_metrics_on_a_port_in_use_is_one_sentence(home, capsys, busy_port: int) -> None:
    assert main(["metrics", "--port", str(busy_port)]) == 2
    err = one_sentence(capsys.readouterr().err)
    assert f"Port {busy_port} on 127.0.0.1 is already in use" in err
    assert "--port" in err


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_metrics_on_a_port_out_of_range_is_one_sentence(home, capsys, port: str) -> None:
    assert main(["metrics", "--port", port]) == 2
    err = one_sentence(capsys.readouterr().err)
    assert f"--port {port} is not a TCP port; give one from 1 to 65535" in err


def test_metrics_on_a_host_that_is_not_here_is_one_sentence(home, capsys) -> None:
    assert main(["metrics", "--port", "9464", "--host", "no-such-host.invalid"]) == 2
    err = one_sentence(capsys.readouterr().err)
    assert "'no-such-host.invalid' is not an address of this machine" in err


# -- watch -------------------------------------------------------------------------------------


@pytest.fixture
def two_runs(home) -> Store:
    store = Store.open(home)
    for run_id in ("3f2a1b9c0d1e", "3f2b00000000"):
        store.insert_run(
            {
                "id": run_id,
                "name": "fix-add",
                "project": str(home),
                "status": "completed",
                "created_at": 1_800_000_000.0,
                "updated_at": 1_800_000_000.0,
            }
        )
    return store


class FakeApp:
    """Stands in for the Textual app: records the run it was asked to open."""

    opened: list[str | None] = []
    return_code = 0

    def __init__(self, db: Any, *, home: Any = None, open_run: str | None = None) -> None:
        FakeApp.opened.append(open_run)

    def run(self) -> None:
        pass


@pytest.fixture
def terminal(monkeypatch) -> list[str | None]:
    """stdout is a terminal, and the app records what it would open instead of drawing."""
    import agentguard.tui.app
    import agentguard.tui.watch

    FakeApp.opened = []
    monkeypatch.setattr(agentguard.tui.watch, "stdout_is_terminal", lambda: True, raising=False)
    monkeypatch.setattr(agentguard.tui.app, "WatchApp", FakeApp)
    return FakeApp.opened


def test_watch_run_takes_a_prefix_like_the_other_commands(two_runs, capsys, terminal) -> None:
    assert main(["watch", "--run", "3f2a"]) == 0
    assert terminal == ["3f2a1b9c0d1e"]


def test_watch_run_unknown_or_ambiguous_is_the_clis_sentence(two_runs, capsys, terminal) -> None:
    assert main(["watch", "--run", "zz"]) == 2
    err = one_sentence(capsys.readouterr().err)
    assert "No run 'zz' in" in err and "agentguard runs" in err
    assert main(["watch", "--run", "3f2"]) == 2
    assert "matches several runs" in one_sentence(capsys.readouterr().err)
    assert terminal == []


def test_watch_refuses_when_its_output_is_not_a_terminal(two_runs, capsys, monkeypatch) -> None:
    import agentguard.tui.app

    FakeApp.opened = []
    monkeypatch.setattr(agentguard.tui.app, "WatchApp", FakeApp)
    assert main(["watch"]) == 2  # under pytest, stdout is captured: not a terminal
    out, err = capsys.readouterr()
    assert out == ""
    assert "not one; run it in a terminal" in one_sentence(err)
    assert FakeApp.opened == []


# -- --json times ------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    """Steps happen a minute ago, so `stats` (up to now) sees them."""
    return FakeClock(start=time.time() - 60)


ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
OPUS = "claude-opus-4-7"


def times_in(doc: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(where, value) of every value under a time key: `at`, `*_at`, `since`, `until`."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("at", "since", "until") or key.endswith(("_at", "_since")):
                yield f"{path}.{key}", value
            yield from times_in(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from times_in(value, f"{path}[{i}]")


def epochs_in(doc: Any, path: str = "") -> Iterator[str]:
    """Where a number that reads as epoch seconds (2001–5138) hides, whatever its key."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from epochs_in(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from epochs_in(value, f"{path}[{i}]")
    elif isinstance(doc, int | float) and not isinstance(doc, bool) and 1e9 <= doc < 1e11:
        yield path


def json_of(capsys, *argv: str) -> Any:
    capsys.readouterr()
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_every_json_output_gives_times_as_iso_8601_utc(fake, guarded, project, capsys) -> None:
    fake.script(overloaded(), model=OPUS)  # a failed attempt: stats lists it with its time
    client = guarded(run="fix-add")
    client.messages.create(model=OPUS, max_tokens=16, messages=[user("fix the bug")])
    (project / "app.py").write_text("def add(a, b):\n    return a + b\n")
    client.messages.create(model=OPUS, max_tokens=16, messages=[user("go on")])
    client.agentguard.close()
    run_id = client.run_id

    docs = {
        "runs": json_of(capsys, "runs"),
        "show": json_of(capsys, "show", run_id[:6]),
        "diff": json_of(capsys, "diff", run_id, "--step", "1"),
        "stats": json_of(capsys, "stats", "--since", "all"),
        "restore": json_of(capsys, "restore", run_id, "--step", "1", "--yes"),
        "resume": json_of(capsys, "resume", run_id, "--no-restore"),
        "resume --due": json_of(capsys, "resume", "--due"),
        "gc": json_of(capsys, "gc", "--max-age-days", "0", "--keep-runs", "0"),
    }
    seen = {}
    for command, doc in docs.items():
        assert list(epochs_in(doc)) == [], f"{command} --json prints epoch seconds"
        for where, value in times_in(doc):
            assert value is None or ISO_UTC.fullmatch(value), f"{command} {where} = {value!r}"
            seen[f"{command} {where}"] = value
    assert (
        docs["stats"]["failed_attempts"][0]["at"]
        == docs["show"]["steps"][0]["attempts"][0]["started_at"]
    )
    assert docs["stats"]["since"] is None and ISO_UTC.fullmatch(docs["stats"]["until"])
    assert docs["stats"]["window"] == "all"
    assert ISO_UTC.fullmatch(docs["runs"]["runs"][0]["created_at"])


def test_json_times_helper_converts_epochs_and_datetimes_under_time_keys() -> None:
    from datetime import UTC, datetime

    from agentguard.commands.common import json_times

    doc = {
        "at": 1_796_229_033.0895886,
        "open_since": 0,
        "checkpoint_at": None,
        "rows": [{"last_success_at": 1_800_000_000}],
        "when": datetime(2026, 12, 2, 16, 27, 30, 123000, tzinfo=UTC),
        "steps": 1_800_000_000,  # not a time key: a count stays a count
        "ended_at": "2026-12-02T16:27:30.123Z",
    }
    assert json_times(doc) == {
        "at": "2026-12-02T16:30:33.089Z",
        "open_since": "1970-01-01T00:00:00.000Z",
        "checkpoint_at": None,
        "rows": [{"last_success_at": "2027-01-15T08:00:00.000Z"}],
        "when": "2026-12-02T16:27:30.123Z",
        "steps": 1_800_000_000,
        "ended_at": "2026-12-02T16:27:30.123Z",
    }
