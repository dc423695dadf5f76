"""Small truths the README tells about the CLI: one-sentence errors, run prefixes, ISO times."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from agentguard.cli import main
from agentguard.store import Store


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

    def __init__(self, db: Any, *, open_run: str | None = None) -> None:
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
