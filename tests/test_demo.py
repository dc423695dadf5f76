"""The offline demo, headless: the story it tells is in the store, and the bug gets fixed."""

from __future__ import annotations

import json
from pathlib import Path

from agentguard.demo import GATEWAY, PRIMARY, TIER, run_demo, summary
from agentguard.store import Store
from tests.conftest import git


def test_the_demo_fixes_the_bug_through_the_storm(tmp_path: Path, home: Path) -> None:
    lines: list[str] = []
    result = run_demo(home=home, workdir=tmp_path, echo=lines.append)
    store = Store.open(home)
    steps = store.steps(result.run_id)
    served = [s["served_model"] for s in steps]
    assert served == [PRIMARY, PRIMARY, TIER, GATEWAY, PRIMARY, PRIMARY]

    attempts = {s["number"]: store.attempts(s["id"]) for s in steps}
    # step 2: the primary's 529s were retried, not substituted
    assert [a["status_code"] for a in attempts[2]] == [529, 529, 200]
    assert not steps[1]["substituted"]
    # step 3: tier fallback; step 4: provider fallback; both recorded with their reasons
    assert steps[2]["substituted"] and "529 overloaded_error ×3" in steps[2]["reason"]
    assert [a["model"] for a in attempts[4]][-1] == GATEWAY and steps[3]["substituted"]
    substitutions = [
        json.loads(e["detail"]) for e in store.events(result.run_id) if e["kind"] == "substitution"
    ]
    assert [s["served"] for s in substitutions] == [
        f"anthropic:{TIER}",
        f"deepseek:{GATEWAY}",
    ]
    # every attempt carries its request-id
    assert all(a["request_id"] for rows in attempts.values() for a in rows)
    # the tree was verified before each route change
    verified = [e for e in store.events(result.run_id) if e["kind"] == "tree_verified"]
    assert {e["step_id"] for e in verified} == {steps[2]["id"], steps[3]["id"]}
    # back on the primary once the storm passed
    assert not steps[4]["substituted"] and not steps[5]["substituted"]

    assert result.tests_pass, result.test_output
    assert "return a + b" in (result.project / "calc.py").read_text()
    # the project's git state is clean apart from the agent's edit
    assert git(result.project, "status", "--porcelain").splitlines() == [" M calc.py"]
    assert git(result.project, "log", "--oneline").count("\n") == 1
    assert git(result.project, "for-each-ref", "--format=%(refname)").split() == ["refs/heads/main"]

    text = summary(result)
    assert "project test: PASS" in text and f"served by {GATEWAY}" in text
    assert any("served by claude-sonnet-4-6 instead of claude-opus-4-7" in line for line in lines)
