"""The store under a fleet's load: 32 agents writing steps at once, on SQLite and PostgreSQL.

Each agent is a process of its own (as agents are), with its own run, writing what a served
step writes through the store's own methods — the step's row and its new message
(`begin_step`), the attempt before it is sent (`insert_attempt`), its outcome
(`update_attempt`) and the step's end with its run's row (`finish_step`) — as fast as it can,
STEPS times. They start together (a barrier) and the figures are the steps per second of all of
them (from the start to the last one's end) and the p99 of one step's writes, over every step.

SQLite: one file under a temporary AGENTGUARD_HOME (WAL, one writer at a time). PostgreSQL: a
fresh schema on $AGENTGUARD_TEST_POSTGRES (default postgresql://root@127.0.0.1:5432/test),
dropped afterwards; without a server its rows say why. The set-up is checked: every step of
every agent is in the store afterwards, numbered 1..STEPS, with its attempt `ok`.

python -m benchmarks.store_throughput            32 agents × 200 steps
python -m benchmarks.store_throughput --quick    8 agents × 50 steps
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import Report

POSTGRES_URL = os.environ.get("AGENTGUARD_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
AGENTS, STEPS = 32, 200


def _agent(locator: str, home: str, steps: int, start: Any, out: Any) -> None:
    """One agent: its own store handle and run; every step's writes timed."""
    from agentguard.store import Store, open_store

    store = open_store(home, url=locator) if "://" in locator else Store(locator)
    run_id = uuid.uuid4().hex[:12]
    now = time.time()
    store.insert_run(
        {"id": run_id, "name": "bench", "project": "/bench", "status": "running", "created_at": now}
    )
    taken: list[float] = []
    start.wait()
    began = time.perf_counter()
    for n in range(steps):
        t0 = time.perf_counter()
        message = {"position": n, "role": "user", "content": f'"step {n}"', "sha": f"{n:064x}"}
        step_id, _number = store.begin_step(
            {"run_id": run_id, "status": "pending", "started_at": time.time(), "total_len": n + 1},
            [message],
            None,
        )
        attempt = store.insert_attempt(
            {"run_id": run_id, "step_id": step_id, "number": 1, "outcome": "pending"}
        )
        store.update_attempt(attempt, {"outcome": "ok", "status_code": 200, "latency_ms": 1.0})
        store.finish_step(
            step_id, {"status": "ok", "ended_at": time.time()}, run_id, {"updated_at": time.time()}
        )
        taken.append(time.perf_counter() - t0)
    out.put((run_id, began, time.perf_counter(), taken))
    store.close()


def _measure(engine: str, locator: str, home: Path, agents: int, steps: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(agents), ctx.Queue()
    procs = [
        ctx.Process(target=_agent, args=(locator, str(home), steps, start, out))
        for _ in range(agents)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    first = min(r[1] for r in results)
    last = max(r[2] for r in results)
    taken = sorted(t for r in results for t in r[3])
    _check(engine, locator, home, [r[0] for r in results], steps)
    return {
        "steps_per_s": len(taken) / (last - first),
        "p50_ms": statistics.median(taken) * 1000,
        "p99_ms": taken[int(0.99 * (len(taken) - 1))] * 1000,
        "wall_s": last - first,
        "steps": len(taken),
    }


def _check(engine: str, locator: str, home: Path, runs: list[str], steps: int) -> None:
    """Every agent's steps are there, numbered 1..steps, each with its attempt ok."""
    from agentguard.store import Store, open_store

    store = open_store(home, url=locator) if "://" in locator else Store(locator)
    try:
        for run_id in runs:
            numbers = [s["number"] for s in store.steps(run_id) if s["status"] == "ok"]
            if numbers != list(range(1, steps + 1)):
                raise AssertionError(f"set-up ({engine}): run {run_id} has steps {numbers[:5]}…")
        ok = store.query("select count(*) as n from attempts where outcome = 'ok'")[0]["n"]
        if ok != len(runs) * steps:
            raise AssertionError(f"set-up ({engine}): {ok} attempts ok of {len(runs) * steps}")
    finally:
        store.close()


def _postgres_schema() -> tuple[str | None, str]:
    """A fresh schema's URL on the test server, or (None, why not)."""
    try:
        import psycopg

        schema = f"agentguard_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'create schema "{schema}"')
    except Exception as exc:
        return None, f"no PostgreSQL server: {' '.join(str(exc).split())[:200]}"
    joiner = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{joiner}options=-csearch_path%3D{schema}", schema


def _drop(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'drop schema "{schema}" cascade')


def main(quick: bool = False) -> Report:
    agents, steps = (8, 50) if quick else (AGENTS, STEPS)
    report = Report()
    case = f"{agents} agents (processes) × {steps} steps, at once"
    workdir = Path(tempfile.mkdtemp(prefix="agentguard-bench-store-"))
    try:
        home = workdir / "home"
        home.mkdir()
        measured = {"SQLite": _measure("sqlite", str(home / "agentguard.db"), home, agents, steps)}
        url, schema = _postgres_schema()
        if url is None:
            report.add("store_throughput", case, "PostgreSQL", 0, "", note=schema)
        else:
            try:
                measured["PostgreSQL"] = _measure("postgresql", url, home, agents, steps)
            finally:
                _drop(schema)
        for engine, m in measured.items():
            report.add(
                "store_throughput",
                case,
                f"{engine}: steps written per second",
                m["steps_per_s"],
                "steps/s",
                note=f"{m['steps']:,} steps in {m['wall_s']:.2f} s; a step = begin_step, "
                "insert_attempt, update_attempt, finish_step (4 transactions)",
            )
            report.add(
                "store_throughput",
                case,
                f"{engine}: one step's writes, p99",
                m["p99_ms"],
                "ms",
                note=f"p50 {m['p50_ms']:.2f} ms; every agent's every step",
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 agents × 50 steps")
    result = main(parser.parse_args().quick)
    print(result.table())
    print(result.save("store_throughput"), file=sys.stderr)
