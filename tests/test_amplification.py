"""Four agent processes against one overloaded route must not multiply its load.

The only test that runs in wall-clock time: the processes share the breaker and the retry
budget through the store, and that sharing is what is under test. Bounded: each agent runs a
fixed number of steps, and the healthy fallback answers at once.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from agentguard.testing import FakeProvider, overloaded

OPUS, SONNET = "claude-opus-4-7", "claude-sonnet-4-6"
AGENTS, STEPS, MAX_ATTEMPTS = 4, 12, 4
OPEN_AFTER, COOLDOWN = 0.3, 0.5

AGENT = textwrap.dedent(
    f"""
    import json, sys, time
    import anthropic, agentguard
    from agentguard.breaker import BreakerSettings

    base_url, project, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    client = agentguard.wrap(
        anthropic.Anthropic(base_url=base_url, api_key="sk-ant-test"),
        project=project,
        chain=["anthropic:{OPUS}", "anthropic:{SONNET}"],
        policy={{"max_attempts": {MAX_ATTEMPTS}, "base_delay": 0.02, "max_delay": 0.1}},
        breaker=BreakerSettings(open_after={OPEN_AFTER}, cooldown={COOLDOWN}),
        snapshots=False,
    )
    time.sleep(max(start_at - time.time(), 0))
    served = []
    for step in range({STEPS}):
        msg = client.messages.create(
            model="{OPUS}", max_tokens=8, messages=[{{"role": "user", "content": str(step)}}]
        )
        served.append(agentguard.info(msg).served_model)
        time.sleep(0.05)  # the agent runs its tools
    client.close()
    print(json.dumps(served))
    """
)


def test_four_agents_share_one_breaker_and_budget(tmp_path: Path, home: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    env = {**os.environ, "AGENTGUARD_HOME": str(home)}
    with FakeProvider() as fake:
        fake.script(*[overloaded() for _ in range(1000)], model=OPUS)
        start_at = time.time() + 3.0  # after every child has imported the SDKs
        children = [
            subprocess.Popen(
                [sys.executable, "-c", AGENT, fake.base_url, str(project), str(start_at)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(AGENTS)
        ]
        outputs = [child.communicate(timeout=60) for child in children]
        requests = fake.requests
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert json.loads(out.splitlines()[-1]) == [SONNET] * STEPS  # every step completed

    to_opus = sorted(r.received_at for r in requests if r.model == OPUS)
    to_sonnet = [r for r in requests if r.model == SONNET]
    assert len(to_sonnet) == AGENTS * STEPS
    naive = AGENTS * STEPS * MAX_ATTEMPTS  # a retry loop per step with no shared state
    assert len(to_opus) <= naive // 4, f"{len(to_opus)} requests reached the overloaded route"

    # Once the breaker has seen the outage, the route gets only probes, one per cooldown
    # from all processes together.
    opened = to_opus[0] + OPEN_AFTER + 0.3
    late = [t for t in to_opus if t > opened]
    duration = max(to_opus[-1] - opened, 0.0)
    assert len(late) <= math.ceil(duration / COOLDOWN) + 2, (len(late), duration)
