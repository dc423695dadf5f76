"""`agentguard stats`, `metrics`, `watch` and `demo` from the command line."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest

from agentguard.cli import main
from agentguard.commands.metrics import serve
from agentguard.commands.stats import parse_since
from agentguard.errors import AgentGuardError
from agentguard.store import Store
from agentguard.testing import overloaded
from tests.conftest import ATTEMPTS, storm, user

OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"


@pytest.fixture
def busy_store(fake, guarded, home) -> Path:
    """A run with retries and a substitution, written now (so it falls in the window)."""
    import time

    from agentguard.clock import FakeClock

    fake.script(overloaded(), model=OPUS)
    client = guarded(
        clock=FakeClock(start=time.time() - 60), chain=[f"anthropic:{OPUS}", f"anthropic:{SONNET}"]
    )
    client.messages.create(model=OPUS, max_tokens=8, messages=[user("a")])
    fake.script(*storm(), model=OPUS)
    client.messages.create(model=OPUS, max_tokens=8, messages=[user("b")])
    client.agentguard.close()
    return home


def test_stats_prints_the_checklist(busy_store, capsys) -> None:
    assert main(["stats", "--since", "1h"]) == 0
    out = capsys.readouterr().out
    for label in ("retry success rate", "429 vs 529", "p50/p95/p99", "cost after fallback"):
        assert label in out
    assert OPUS in out and re.search(r"fallback activations\s+1\b", out)


def test_stats_json_has_every_figure(busy_store, capsys) -> None:
    assert main(["stats", "--since", "all", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["steps"], doc["fallback_activations"], doc["overloaded"]) == (2, 1, 1 + ATTEMPTS)
    assert doc["retry_success_rate"] == 0.5  # step 1 recovered on Opus, step 2 did not
    assert {m["model"] for m in doc["by_model"]} == {OPUS, SONNET}
    assert doc["prices_as_of"]


def test_a_bad_since_is_one_sentence(home, capsys) -> None:
    assert main(["stats", "--since", "yesterday"]) == 2
    assert "is not a duration" in capsys.readouterr().err
    assert parse_since("all") is None and parse_since("15m") == 900
    with pytest.raises(AgentGuardError):
        parse_since("5 parsecs")


def test_metrics_are_served_for_prometheus(busy_store) -> None:
    server, thread = serve(Store.open(busy_store), "127.0.0.1", 0, None)
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        server.shutdown()
        thread.join(timeout=5)
    text = body.decode()
    assert f'agentguard_overloaded_attempts{{model="{OPUS}"}} {1 + ATTEMPTS:.1f}' in text
    assert "agentguard_fallback_activations 1.0" in text
    assert 'agentguard_step_latency_seconds{quantile="0.95"}' in text


def test_demo_without_tui_prints_the_summary(home, tmp_path, capsys) -> None:
    assert main(["demo", "--no-tui", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "project test: PASS" in out and "substituted" in out
    assert len(Store.open(home).query("select id from runs")) == 1


def test_watch_refuses_a_missing_database_file(home, tmp_path, capsys) -> None:
    assert main(["watch", "--db", str(tmp_path / "nope.db")]) == 2
    assert "nope.db" in capsys.readouterr().err


def test_stats_uses_the_price_overrides_in_home(busy_store, capsys) -> None:
    (busy_store / "prices.toml").write_text('["claude-"]\ninput = 1000000.0\noutput = 0.0\n')
    assert main(["stats", "--since", "all", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    tokens = sum(
        row["input_tokens"]
        for row in Store.open(busy_store).query(
            "select input_tokens from attempts where outcome = 'ok'"
        )
    )
    assert doc["cost_usd"] == pytest.approx(tokens)  # $1 per input token, as overridden
    (busy_store / "prices.toml").write_text('["claude-"]\ninput = -1\noutput = 0\n')
    assert main(["stats", "--json"]) == 2
    assert "input must be greater than or equal to 0" in capsys.readouterr().err
