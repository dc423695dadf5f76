"""Small truths the README tells about the CLI: one-sentence errors, run prefixes, ISO times."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from agentguard.cli import main


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
