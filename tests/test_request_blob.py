"""A request's shape (tools, system, limits) is stored once per distinct shape; an agent sends
the same ~40 KB of it every turn, so the last few shapes' blobs are kept and found again by
exact bytes and equal values, never by a near match."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from agentguard import conversation
from agentguard.conversation import DROPPED_KEY, request_blob

FIXTURE = Path(__file__).parent / "fixtures" / "claude-code-2.1.330-requests.json"


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conversation, "_RECENT_BLOBS", conversation._Recent(8))


def claude_code_body() -> dict[str, Any]:
    body = json.loads(FIXTURE.read_text())["requests"][-1]["body"]
    return json.loads(body) if isinstance(body, str) else body


def test_the_next_turn_of_an_agent_finds_its_blob_again_unchanged() -> None:
    body = claude_code_body()
    first = request_blob(body)
    again = json.loads(json.dumps(body))  # the next request, parsed anew: equal, not the same
    again["messages"] = [*again["messages"], {"role": "user", "content": "and now?"}]
    second = request_blob(again)
    assert second is first  # found, not computed again
    stored = json.loads(first[1])
    assert stored["tools"] == body["tools"] and stored["system"] == body["system"]
    assert "messages" not in stored


def test_a_changed_tool_is_a_new_blob() -> None:
    body = claude_code_body()
    first = request_blob(body)
    changed = copy.deepcopy(body)
    changed["tools"][0]["description"] += " (changed)"
    second = request_blob(changed)
    assert second[0] != first[0] and "(changed)" in second[1]


@pytest.mark.parametrize(
    ("value", "written"),
    [(1, '"temperature":1'), (1.0, '"temperature":1.0'), (True, '"temperature":true')],
)
def test_numbers_and_booleans_that_compare_equal_are_not_mixed_up(value: Any, written: str):
    """1 == 1.0 == True in Python, but the stored JSON differs: each is found only by itself."""
    for other in (1, 1.0, True):  # the other spellings were seen just before
        request_blob({"model": "m", "messages": [], "temperature": other})
    _, text = request_blob({"model": "m", "messages": [], "temperature": value})
    assert written in text


def test_nan_and_none_are_not_mixed_up() -> None:
    """orjson writes NaN as null; the stored JSON keeps them apart, and so does the lookup."""
    _, with_nan = request_blob({"model": "m", "messages": [], "temperature": float("nan")})
    _, with_none = request_blob({"model": "m", "messages": [], "temperature": None})
    _, nan_again = request_blob({"model": "m", "messages": [], "temperature": float("nan")})
    assert '"temperature":NaN' in with_nan and '"temperature":null' in with_none
    assert '"temperature":NaN' in nan_again


def test_values_orjson_refuses_are_stored_all_the_same() -> None:
    big = {"model": "m", "messages": [], "max_tokens": 2**70, "metadata": {1: "x"}}
    sha, text = request_blob(big)
    assert request_blob(dict(big)) == (sha, text)
    assert json.loads(text)["max_tokens"] == 2**70


def test_unknown_parameters_are_named_never_kept() -> None:
    _, text = request_blob({"model": "m", "messages": [], "api_key_oops": "sk-secret"})
    assert "sk-secret" not in text and json.loads(text)[DROPPED_KEY] == ["api_key_oops"]
    _, again = request_blob({"model": "m", "messages": [], "api_key_oops": "sk-other"})
    assert again == text  # the same shape: the value was never part of it


def test_only_the_last_few_shapes_are_kept() -> None:
    for n in range(40):
        request_blob({"model": "m", "messages": [], "max_tokens": n})
    assert len(conversation._RECENT_BLOBS._blobs) == 8
