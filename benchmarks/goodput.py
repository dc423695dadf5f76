"""Goodput under overload: 4 agents against a primary that fails, beside the tools people use.

Three scenarios on the fake provider (primary claude-opus-4-7, fallback claude-sonnet-4-6,
both answering in 0.2 s when healthy): a 20 s full outage of the primary; 1.5 s blips of 529s
at t = 3, 9, 15 and 21 s; a 20 s partial overload where each primary request fails with
probability 0.5. Each agent runs 25 steps: a model call, then 0.8 s of "tools" in which it
edits its project (3 files modified, 1 created, the one it created last step deleted).

Each agent works in its own project folder, a git checkout of this repository's tracked files
(as agents on one machine each get their own worktree), and agentguard runs as users run it:
snapshots on, each step checkpointing that tree. Every client does the same edits; only
agentguard snapshots.

Clients: agentguard; the seed article's retry loop; its tier-fallback chain; the anthropic
SDK's built-in retries; tenacity's `wait_random_exponential`; LiteLLM's Router with fallbacks
(bench-only dependency; reported as missing if it is not installed).

Per client: steps completed, p50/p95 step latency, requests per second to the primary during
the fault, substituted steps, and seconds until steps are back on the primary after recovery.
Latency percentiles are over every step: a failed step counts as never finishing (+∞), so a
client that fails more than 5 % of its steps has an infinite p95.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic

import agentguard
from agentguard.testing import FakeProvider, ok, overloaded
from benchmarks.common import Report, git

PRIMARY, FALLBACK = "claude-opus-4-7", "claude-sonnet-4-6"
AGENTS, STEPS, TOOL_TIME, LATENCY = 4, 25, 0.8, 0.2
START = 1.0  # agents start this long after the fake's clock starts
SETTLE = 3.0  # seconds into a fault after which a breaker should have seen it


@dataclass(frozen=True)
class Scenario:
    name: str
    windows: tuple[tuple[float, float], ...]  # fault windows, seconds since start
    probability: float = 1.0

    def faulty(self, t: float, rng: random.Random) -> bool:
        inside = any(a <= t < b for a, b in self.windows)
        return inside and (self.probability >= 1.0 or rng.random() < self.probability)

    @property
    def fault_seconds(self) -> float:
        return sum(b - a for a, b in self.windows)

    @property
    def recovered_at(self) -> float:
        return max(b for _, b in self.windows)


SCENARIOS = (
    Scenario("full outage 20 s", ((START + 2.0, START + 22.0),)),
    Scenario(
        "1.5 s blips",
        tuple((START + t, START + t + 1.5) for t in (3.0, 9.0, 15.0, 21.0)),
    ),
    Scenario("partial 50 % for 20 s", ((START + 2.0, START + 22.0),), probability=0.5),
)


@dataclass
class StepResult:
    started: float
    latency: float
    served: str | None  # None: the step failed


@dataclass
class Outcome:
    client: str
    scenario: Scenario
    steps: list[StepResult] = field(default_factory=list)
    primary_requests: list[float] = field(default_factory=list)
    slowest: str = ""  # agentguard: where its slowest steps spent their time (from the store)


# -- the clients ---------------------------------------------------------------------------------

Ask = Callable[[list[dict[str, Any]]], str]  # one step: messages -> the model that served


def _messages_kwargs(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"max_tokens": 64, "messages": messages}


def agentguard_client(base_url: str, home: Path, project: Path) -> Ask:
    client = agentguard.wrap(
        anthropic.Anthropic(base_url=base_url, api_key="bench"),
        project=project,
        home=home,
        chain=[f"anthropic:{PRIMARY}", f"anthropic:{FALLBACK}"],
        policy=_policy(),
        budget=_budget(),
    )

    def ask(messages: list[dict[str, Any]]) -> str:
        msg = client.messages.create(model=PRIMARY, **_messages_kwargs(messages))
        return agentguard.info(msg).served_model

    return ask


def _policy() -> str | dict[str, Any]:
    """BENCH_POLICY='{"preset": "coding_agent", "max_attempts": 5}' tries other settings."""
    raw = os.environ.get("BENCH_POLICY")
    return json.loads(raw) if raw else "coding_agent"


def _budget() -> Any:
    """BENCH_BUDGET='{"ratio": 0.2, "min_retries": 20}' tries other retry budgets."""
    from agentguard.budget import BudgetSettings

    raw = os.environ.get("BENCH_BUDGET")
    return BudgetSettings(**json.loads(raw)) if raw else None


def seed_retry_loop(base_url: str, *_: Any) -> Ask:
    """The first seed article's Fix 1, as written: up to 4 retries of the primary."""
    client = anthropic.Anthropic(base_url=base_url, api_key="bench", max_retries=0)

    def ask(messages: list[dict[str, Any]]) -> str:
        for attempt in range(5):
            try:
                client.messages.create(model=PRIMARY, **_messages_kwargs(messages))
                return PRIMARY
            except anthropic.APIStatusError as error:
                if error.status_code != 529 or attempt == 4:
                    raise
                time.sleep(min(30, (2**attempt) + random.uniform(0, 1.5)))
        raise AssertionError("unreachable")

    return ask


def seed_tier_chain(base_url: str, *_: Any) -> Ask:
    """The second seed article's Workaround 2: each tier once, in order."""
    client = anthropic.Anthropic(base_url=base_url, api_key="bench", max_retries=0)

    def ask(messages: list[dict[str, Any]]) -> str:
        for model in (PRIMARY, FALLBACK):
            try:
                client.messages.create(model=model, **_messages_kwargs(messages))
                return model
            except anthropic.APIStatusError as error:
                if error.status_code != 529:
                    raise
        raise RuntimeError("All Claude tiers overloaded")

    return ask


def sdk_retries(base_url: str, *_: Any) -> Ask:
    """The anthropic SDK's own retry loop (2 retries by default), primary only."""
    client = anthropic.Anthropic(base_url=base_url, api_key="bench")

    def ask(messages: list[dict[str, Any]]) -> str:
        client.messages.create(model=PRIMARY, **_messages_kwargs(messages))
        return PRIMARY

    return ask


def tenacity_client(base_url: str, *_: Any) -> Ask:
    import tenacity

    client = anthropic.Anthropic(base_url=base_url, api_key="bench", max_retries=0)

    @tenacity.retry(
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=8),
        stop=tenacity.stop_after_attempt(4),
        retry=tenacity.retry_if_exception_type(anthropic.OverloadedError),
        reraise=True,
    )
    def ask(messages: list[dict[str, Any]]) -> str:
        client.messages.create(model=PRIMARY, **_messages_kwargs(messages))
        return PRIMARY

    return ask


def litellm_client(base_url: str, *_: Any) -> Ask:
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # loopback only: no fetch
    import litellm

    router = litellm.Router(
        model_list=[
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"anthropic/{name}",
                    "api_base": base_url,
                    "api_key": "bench",
                },
            }
            for name in (PRIMARY, FALLBACK)
        ],
        fallbacks=[{PRIMARY: [FALLBACK]}],
        num_retries=2,
    )

    def ask(messages: list[dict[str, Any]]) -> str:
        response = router.completion(model=PRIMARY, messages=messages, max_tokens=64)
        served = str(getattr(response, "model", "") or "")
        return FALLBACK if FALLBACK in served else PRIMARY

    return ask


CLIENTS: dict[str, Callable[..., Ask]] = {
    "agentguard": agentguard_client,
    "seed retry loop": seed_retry_loop,
    "seed tier chain": seed_tier_chain,
    "anthropic SDK retries": sdk_retries,
    "tenacity": tenacity_client,
    "LiteLLM Router": litellm_client,
}


# -- the agents' projects ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
EDITED = 3  # files an agent's tools modify each step, beside the one it creates and deletes


def project_template(workdir: Path) -> Path:
    """This repository's tracked files at HEAD, as a committed git checkout."""
    template = workdir / "template"
    template.mkdir()
    archive = workdir / "head.tar"
    git(ROOT, "archive", "--format=tar", "-o", str(archive), "HEAD")
    shutil.unpack_archive(archive, template)
    git(template, "init", "-q", "-b", "main")
    git(template, "add", "-A")
    git(template, "commit", "-q", "-m", "the project")
    return template


def sources(project: Path) -> list[Path]:
    return sorted(project.glob("agentguard/**/*.py"))


def tools(project: Path, files: list[Path], step: int) -> None:
    """What an agent's tools do to its project in one step."""
    for k in range(EDITED):
        path = files[(step * EDITED + k) % len(files)]
        path.write_text(path.read_text() + f"# edited by the agent at step {step}\n")
    (project / f"notes_step{step}.md").write_text(f"# step {step}\n\nwhat changed and why\n")
    (project / f"notes_step{step - 1}.md").unlink(missing_ok=True)


# -- running a scenario --------------------------------------------------------------------------


def run(client_name: str, scenario: Scenario, workdir: Path, template: Path) -> Outcome:
    rng = random.Random(7)
    outcome = Outcome(client_name, scenario)
    lock = threading.Lock()
    with FakeProvider() as fake:
        zero = time.monotonic()

        def faults(model: str | None) -> Any:
            t = time.monotonic() - zero
            if model == PRIMARY:
                with lock:
                    outcome.primary_requests.append(t)
                    bad = scenario.faulty(t, rng)
                return overloaded() if bad else ok(latency=LATENCY)
            return ok(latency=LATENCY)

        fake.set_faults(faults)
        label = f"{client_name.replace(' ', '_')}-{scenario.name[:4]}"
        home = workdir / f"home-{label}"
        projects = [workdir / f"project-{label}-{n}" for n in range(AGENTS)]
        for project in projects:
            shutil.copytree(template, project)
        asks = [CLIENTS[client_name](fake.base_url, home, project) for project in projects]

        def agent(ask: Ask, project: Path) -> None:
            files = sources(project)
            time.sleep(max(START - (time.monotonic() - zero), 0))
            messages = [{"role": "user", "content": "fix the bug"}]
            for step in range(1, STEPS + 1):
                began = time.monotonic()
                try:
                    served: str | None = ask(messages)
                except Exception:
                    served = None
                result = StepResult(began - zero, time.monotonic() - began, served)
                with lock:
                    outcome.steps.append(result)
                messages = [
                    *messages,
                    {"role": "assistant", "content": "done"},
                    {"role": "user", "content": "next"},
                ]
                tools_began = time.monotonic()
                tools(project, files, step)
                time.sleep(max(TOOL_TIME - (time.monotonic() - tools_began), 0))

        threads = [
            threading.Thread(target=agent, args=(ask, project))
            for ask, project in zip(asks, projects, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if client_name == "agentguard":
        outcome.slowest = _from_store(home, projects)
    return outcome


def _from_store(home: Path, projects: list[Path]) -> str:
    """Check the set-up (every agentguard step checkpointed its agent's tree, each step's
    tree a new one since the tools edit it) and describe the slowest steps' attempts."""
    from agentguard.store import Store

    store = Store.open(home)
    try:
        rows = store.query(
            "select r.project, count(s.id) as steps, count(s.checkpoint) as checkpoints, "
            "count(distinct s.checkpoint) as trees from runs r join steps s on s.run_id = r.id "
            "where s.status = 'ok' group by r.project"
        )
        slow = store.query(
            "select id, latency_ms, served_model from steps where status = 'ok' "
            "order by latency_ms desc limit 5"
        )
        attempts = {
            row["id"]: store.query(
                "select model, status_code, latency_ms, slept_before_ms from attempts "
                "where step_id = ? order by number",
                [row["id"]],
            )
            for row in slow
        }
    finally:
        store.close()
    for row in rows:
        if not row["checkpoints"] == row["trees"] == row["steps"]:
            raise AssertionError(f"set-up: {row}: a step without a snapshot of its own tree")
    if {Path(r["project"]).resolve() for r in rows} != {p.resolve() for p in projects}:
        raise AssertionError(f"set-up: runs in {[r['project'] for r in rows]}, not {projects}")
    return "; ".join(_describe(row, attempts[row["id"]]) for row in slow)


def _describe(step: dict[str, Any], attempts: list[dict[str, Any]]) -> str:
    """'1.62 s = 5 attempts 0.8 s (opus 529 ×4, sonnet 200) + slept 0.7 s + other 0.1 s'."""
    short = {PRIMARY: "primary", FALLBACK: "fallback"}
    calls = sum(a["latency_ms"] or 0 for a in attempts) / 1000
    slept = sum(a["slept_before_ms"] or 0 for a in attempts) / 1000
    total = step["latency_ms"] / 1000
    kinds: dict[str, int] = {}
    for a in attempts:
        key = f"{short.get(a['model'], a['model'])} {a['status_code']}"
        kinds[key] = kinds.get(key, 0) + 1
    what = ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in kinds.items())
    return (
        f"{total:.2f} s = {len(attempts)} attempts {calls:.2f} s ({what}) + slept {slept:.2f} s"
        f" + rest {total - calls - slept:.2f} s"
    )


def figures(outcome: Outcome, report: Report) -> None:
    sc, name = outcome.scenario, outcome.client
    ok_steps = [s for s in outcome.steps if s.served is not None]
    failed = len(outcome.steps) - len(ok_steps)
    # every step counts: a failed step never finished (+∞)
    latencies = sorted(s.latency if s.served is not None else math.inf for s in outcome.steps)
    p50 = _rank(latencies, 0.50)
    p95 = _rank(latencies, 0.95)
    during = [t for t in outcome.primary_requests if any(a <= t < b for a, b in sc.windows)]
    rate = len(during) / sc.fault_seconds
    # once a breaker could have seen the outage: all but the first SETTLE seconds of each window
    settled = [
        t for t in outcome.primary_requests if any(a + SETTLE <= t < b for a, b in sc.windows)
    ]
    settled_span = sum(max(b - a - SETTLE, 0) for a, b in sc.windows)
    settled_rate = len(settled) / settled_span if settled_span else float("nan")
    substituted = sum(s.served not in (None, PRIMARY) for s in outcome.steps)
    per_step = len(outcome.primary_requests) / max(len(outcome.steps), 1)
    back = [
        s.started - sc.recovered_at
        for s in ok_steps
        if s.started >= sc.recovered_at and s.served == PRIMARY
    ]
    recovery = min(back) if back else float("nan")
    case = f"{sc.name}: {name}"
    total = AGENTS * STEPS
    report.add("goodput", case, "steps completed", len(ok_steps), f"/ {total}")
    every = f"all {len(outcome.steps)} steps, {failed} failed counted as +∞"
    report.add("goodput", case, "p50 step latency", p50, "s", note=every)
    slowest = f"; the 5 slowest: {outcome.slowest}" if outcome.slowest else ""
    report.add("goodput", case, "p95 step latency", p95, "s", note=every + slowest)
    report.add(
        "goodput",
        case,
        "primary req/s in fault",
        rate,
        "req/s",
        note=f"{per_step:.2f} primary requests per step",
    )
    report.add("goodput", case, "substituted steps", substituted, f"/ {total}")
    if sc.name.startswith("full"):
        report.add("goodput", case, f"primary req/s after {SETTLE:g} s", settled_rate, "req/s")
        report.add("goodput", case, "back on primary after", recovery, "s")
    if name == "agentguard":
        _targets(report, sc, len(ok_steps), p95, settled_rate, substituted, per_step, recovery)


def _rank(values: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted values."""
    if not values:
        return math.nan
    return values[max(math.ceil(q * len(values)) - 1, 0)]


def _targets(
    report: Report,
    sc: Scenario,
    done: int,
    p95: float,
    rate: float,
    substituted: int,
    per_step: float,
    recovery: float,
) -> None:
    """Mark the targets (benchmarks/README.md) on agentguard's own rows."""
    rows = {f.metric: f for f in report.figures[-7:] if f.case.endswith(": agentguard")}
    total = AGENTS * STEPS

    def mark(metric: str, target: str, meets: bool) -> None:
        if metric in rows:
            rows[metric].target, rows[metric].meets = target, meets

    mark("steps completed", f"all {total}", done == total)
    if sc.name.startswith("full"):
        mark(f"primary req/s after {SETTLE:g} s", "≤ 0.5 req/s", rate <= 0.5)
        mark("p95 step latency", "< 0.6 s", p95 < 0.6)
        mark("back on primary after", "≤ 3 s", recovery <= 3.0)
    elif sc.name.startswith("1.5"):
        mark("substituted steps", "≤ 5 %", substituted <= 0.05 * total)
        mark("p95 step latency", "< 1.5 s", p95 < 1.5)
    else:
        mark("primary req/s in fault", "≤ 1.5 primary requests / step", per_step <= 1.5)
        mark("substituted steps", "≤ 25 %", substituted <= 0.25 * total)
        mark("p95 step latency", "< 1.5 s", p95 < 1.5)


def main(clients: list[str], scenarios: list[Scenario]) -> Report:
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="agentguard-bench-goodput-"))
    try:
        template = project_template(workdir)
        for scenario in scenarios:
            for name in clients:
                try:
                    outcome = run(name, scenario, workdir, template)
                except ImportError as exc:
                    report.add(
                        "goodput",
                        f"{scenario.name}: {name}",
                        "not installed",
                        0,
                        "",
                        note=f"{exc.name}: pip install it (make bench does)",
                    )
                    continue
                figures(outcome, report)
                print(f"  goodput: {scenario.name} / {name} done", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", nargs="*", default=list(CLIENTS), choices=list(CLIENTS))
    parser.add_argument(
        "--scenarios", nargs="*", type=int, default=[0, 1, 2], help="0 outage, 1 blips, 2 partial"
    )
    args = parser.parse_args()
    result = main(args.clients, [SCENARIOS[i] for i in args.scenarios])
    print(result.table())
    print(result.save("goodput"))
