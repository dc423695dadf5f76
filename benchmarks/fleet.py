"""Fleet amplification: 8 machines × 4 agents through an outage, one PostgreSQL store vs 8 SQLite.

Eight OS processes stand for eight machines (forked by a forkserver that imported anthropic and
agentguard once; nothing is opened before the fork). Each has its own AGENTGUARD_HOME (a temporary
folder: its shadow git stores, and in the SQLite run its own store) and runs 4 agents (threads),
each `agentguard.wrap()` over the real anthropic SDK, working in a project of its own (a small
committed git repository; snapshots on, as users run it). A step is a model call (primary
claude-opus-4-7, fallback claude-sonnet-4-6, both answering in 0.2 s on the fake provider in
this process), then 0.8 s of tools editing the project. The agents step until the run ends.

The outage: from T0 (LEAD s after the agents start) to T1 (OUTAGE s later) every request to the
primary is answered 529 at once; then it recovers. The run goes on AFTER s past T1.

Two runs, the same but for the store:
- **one PostgreSQL store**: AGENTGUARD_STORE names a fresh schema on the local server
  ($AGENTGUARD_TEST_POSTGRES, default postgresql://root@127.0.0.1:5432/test), dropped after;
- **8 SQLite stores**: no AGENTGUARD_STORE; each machine's home holds its own store.

What is measured, at the fake provider (every request, its arrival time, its answer, and the
machine and agent that sent it):
- **primary req/s after the breaker opened**: the requests the primary received from the whole
  fleet from the moment its breaker is first recorded open in the store (`route_health.open_since`,
  the opener's clock, read by a poller in this process every 50 ms) up to T1, divided by that
  span. Nothing is left out: a request sent by a step that had read the breaker closed and
  arrived after the opening counts. Each is named (from its attempt in the store): a probe, or a
  step's first try or retry after reading it closed. With 8 SQLite stores there are 8 breakers:
  the window starts when the last of them opened (every machine only probing), and each
  machine's own rate after its own opening is the one-machine figure. Target (PostgreSQL):
  ≤ 0.5 req/s, as one machine.
- **back on the primary**: per agent, from T1 to the arrival at the primary of its first request
  there that the primary answered (the step served by the primary again); the fleet's figure is
  the first of them (target ≤ 3 s, as the goodput benchmark's one machine), with the agents'
  median and max beside, and when the agents had those answers.

The set-up is checked, and the run stops loudly otherwise: every machine ran and reported its 4
agents; every step an agent took is in the store (the same number, `ok` with the model the agent
was served, or failed); every request the primary received is an attempt in a store, request-id
for request-id, and the reverse; the primary answered 529s and only 529s during the outage; the
primary's breaker opened (in every store) during the outage and closed after it; the fallback's
never opened; the PostgreSQL run wrote nothing to any machine's SQLite file.

python -m benchmarks.fleet              both runs (84–94 s on a loaded 2-CPU machine)
python -m benchmarks.fleet --engines postgresql
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Report, agent_step_edit, git, make_repo

POSTGRES_URL = os.environ.get("AGENTGUARD_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
PRIMARY, FALLBACK = "claude-opus-4-7", "claude-sonnet-4-6"
PRIMARY_ROUTE, FALLBACK_ROUTE = f"anthropic:{PRIMARY}", f"anthropic:{FALLBACK}"
MACHINES, AGENTS = 8, 4
TOOL_TIME, LATENCY = 0.8, 0.2
FILES = 50  # files in each agent's project (the tree's size is not what this measures)
LEAD = 2.5  # seconds from the agents' start to the outage
OUTAGE = 16.0  # seconds of 529s from the primary
AFTER = 6.0  # seconds the agents go on after the primary recovered
POLL_S = 0.05  # how often this process reads the breaker's row
ENGINES = ("postgresql", "sqlite")
CASES = {
    "postgresql": f"{MACHINES} machines × {AGENTS} agents, one PostgreSQL store",
    "sqlite": f"{MACHINES} machines × {AGENTS} agents, {MACHINES} SQLite stores",
}
ROOT = Path(__file__).resolve().parents[1]
HEADER, AGENT_HEADER = "x-bench-machine", "x-bench-agent"
APPLICATION = "agentguard-bench-fleet"
# imported once by the forkserver that forks the machines (each would take seconds of CPU to
# import them itself, 8 at once on 2 CPUs)
PRELOAD = ["anthropic", "openai", "agentguard.wrapping", "agentguard.store_pg", "psycopg_pool"]
KEEP = os.environ.get("BENCH_FLEET_KEEP") == "1"  # keep the homes, projects and schema to look at


# -- one machine (a child process) -----------------------------------------------------------------


def machine(spec: dict[str, Any], conn: Any) -> None:
    """One machine (a process forked by the forkserver): its own AGENTGUARD_HOME (and store, or
    the shared one), 4 guarded agents; says "ready" once set up, then gets the start and end
    times, and sends back its agents' steps."""
    began = time.time()
    log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    for name in [k for k in os.environ if k.startswith("AGENTGUARD_")]:
        del os.environ[name]
    os.environ.update(spec["env"])
    import anthropic

    import agentguard

    n = spec["machine"]
    clients = [
        agentguard.wrap(
            anthropic.Anthropic(
                base_url=spec["base_url"],
                api_key="bench",
                default_headers={HEADER: str(n), AGENT_HEADER: f"{n}.{a}"},
            ),
            project=project,
            chain=[PRIMARY_ROUTE, FALLBACK_ROUTE],
        )
        for a, project in enumerate(spec["projects"])
    ]
    agents = [{"run_id": c.run_id, "steps": []} for c in clients]
    messages = [[{"role": "user", "content": f"fix the bug ({n}.{a})"}] for a in range(AGENTS)]
    wrapped = time.time()
    warm = [  # a first step each, before the run: the first snapshot of each tree
        threading.Thread(target=_step, args=(c, messages[a], agents[a]["steps"], True))
        for a, c in enumerate(clients)
    ]
    for thread in warm:
        thread.start()
    for thread in warm:
        thread.join()
    conn.send(
        f"wrap() ×{AGENTS} {wrapped - began:.1f} s, first steps {time.time() - wrapped:.1f} s"
    )
    start, end = conn.recv()

    def agent(a: int) -> None:
        client, project, steps = clients[a], Path(spec["projects"][a]), agents[a]["steps"]
        rng = random.Random(n * AGENTS + a)
        time.sleep(max(start + rng.uniform(0, TOOL_TIME) - time.time(), 0))  # not in lockstep
        try:
            while time.time() < end:
                _step(client, messages[a], steps)
                tools_began = time.time()
                agent_step_edit(project, len(steps), FILES)
                time.sleep(max(TOOL_TIME - (time.time() - tools_began), 0))
        except BaseException as exc:  # the parent's set-up check stops the run on it
            agents[a]["crashed"] = repr(exc)

    threads = [threading.Thread(target=agent, args=(a,)) for a in range(AGENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    conn.send({"machine": n, "pid": os.getpid(), "agents": agents})


def _step(client: Any, messages: list[dict[str, Any]], steps: list[dict], warm: bool = False):
    import agentguard

    began = time.time()
    try:
        msg = client.messages.create(model=PRIMARY, max_tokens=64, messages=messages)
    except Exception as exc:
        steps.append({"started": began, "ended": time.time(), "served": None, "error": repr(exc)})
        return
    info = agentguard.info(msg)
    steps.append(
        {
            "number": info.step,
            "started": began,
            "ended": time.time(),
            "served": info.served_model,
            "attempts": [[a.model, a.status_code] for a in info.attempts],
            "warm": warm,
        }
    )
    messages += [{"role": "assistant", "content": "done"}, {"role": "user", "content": "next"}]


# -- the run: the fake, the machines, the outage ---------------------------------------------------


@dataclass
class Request:
    at: float  # wall clock, arrival at the fake
    model: str | None
    reply: str  # "ok", "error:529"
    request_id: str
    machine: int | None
    agent: str | None  # "machine.agent"


@dataclass
class Outcome:
    engine: str
    t0: float
    t1: float
    start: float
    end: float
    requests: list[Request]
    machines: list[dict[str, Any]]
    breakers: list[dict[str, Any]]  # per store: what the poller saw of the primary's breaker
    fallback_opened: bool
    peak_connections: int | None = None
    poller_reconnects: int = 0  # the server ended the poller's connection (another's test)
    wall_s: float = 0.0
    # each primary request's attempt in the stores, by request-id: its outcome and, when the
    # step left the route after it, why ("probe failed", "breaker opened", ...)
    attempts: dict[str, dict[str, Any]] = field(default_factory=dict)


def run(engine: str, workdir: Path, template: Path) -> Outcome:
    from agentguard.testing import FakeProvider, ok, overloaded

    began = time.time()
    base = workdir / engine
    schema, url = None, None
    if engine == "postgresql":
        schema, url = _create_schema()
    timeline = {"t0": float("inf"), "t1": float("inf")}

    def faults(model: str | None) -> Any:
        if model == PRIMARY and timeline["t0"] <= time.time() < timeline["t1"]:
            return overloaded()
        return ok(latency=LATENCY)

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    procs: list[Any] = []
    try:
        with FakeProvider() as fake:
            fake.set_faults(faults)
            specs = []
            for n in range(MACHINES):
                home = base / f"machine{n}" / "home"
                home.mkdir(parents=True)
                projects = []
                for a in range(AGENTS):
                    project = base / f"machine{n}" / f"agent{a}"
                    shutil.copytree(template, project)
                    projects.append(str(project))
                env = {"AGENTGUARD_HOME": str(home)}
                if url is not None:
                    env["AGENTGUARD_STORE"] = url
                specs.append(
                    {
                        "machine": n,
                        "env": env,
                        "home": str(home),
                        "projects": projects,
                        "base_url": fake.base_url,
                        "log": str(base / f"machine{n}" / "output.log"),
                    }
                )
            pipes = []
            for spec in specs:
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=machine, args=(spec, theirs), name=f"machine{spec['machine']}"
                )
                proc.start()
                theirs.close()
                procs.append(proc)
                pipes.append(ours)
            setup = [
                _receive(engine, spec, pipe, began + 300)
                for spec, pipe in zip(specs, pipes, strict=True)
            ]
            _say(
                f"{engine}: {MACHINES} machines ready after {time.time() - began:.1f} s "
                f"(machine 0: {setup[0]})"
            )
            start = time.time() + 0.5
            t0, t1 = start + LEAD, start + LEAD + OUTAGE
            end = t1 + AFTER
            timeline.update(t0=t0, t1=t1)
            poller = Poller(engine, url, [Path(s["home"]) for s in specs], end + 1.0)
            poller.start()
            for pipe in pipes:
                pipe.send((start, end))
            machines = [
                _receive(engine, spec, pipe, end + 90)
                for spec, pipe in zip(specs, pipes, strict=True)
            ]
            for proc, spec in zip(procs, specs, strict=True):
                proc.join(timeout=30)
                if proc.exitcode != 0:
                    raise AssertionError(
                        f"set-up ({engine}): machine {spec['machine']} exited {proc.exitcode}: "
                        f"{_tail(spec)}"
                    )
            poller.join()
            _say(f"{engine}: machines done {time.time() - end:.1f} s after the run's end")
            offset = time.time() - time.monotonic()
            requests = [
                Request(
                    r.received_at + offset,
                    r.model,
                    r.reply,
                    r.request_id,
                    int(r.headers[HEADER]) if HEADER in r.headers else None,
                    r.headers.get(AGENT_HEADER),
                )
                for r in fake.requests
            ]
        outcome = Outcome(
            engine,
            t0,
            t1,
            start,
            end,
            requests,
            machines,
            poller.breakers(),
            poller.fallback_opened,
            poller.peak_connections,
            poller.reconnects,
        )
        _check(outcome, url, [Path(s["home"]) for s in specs])
        outcome.wall_s = time.time() - began
        return outcome
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        if schema is not None and not KEEP:
            _drop_schema(schema)
        elif schema is not None:
            _say(f"kept the schema {url}")


def _say(text: str) -> None:
    print(f"  fleet: {text}", file=sys.stderr, flush=True)


def _receive(engine: str, spec: dict[str, Any], pipe: Any, deadline: float) -> Any:
    """A machine's next message, or a loud stop when it died or went quiet."""
    try:
        if pipe.poll(max(deadline - time.time(), 0)):
            return pipe.recv()
    except EOFError:
        pass
    raise AssertionError(
        f"set-up ({engine}): machine {spec['machine']} stopped answering: {_tail(spec)}"
    )


def _tail(spec: dict[str, Any]) -> str:
    path = Path(spec["log"])
    text = path.read_text(errors="replace") if path.exists() else ""
    return " | ".join(text.strip().splitlines()[-6:]) or "(nothing on stderr)"


class Poller(threading.Thread):
    """Reads the primary's breaker row in every store every POLL_S, as an observer: when it was
    first recorded open (its `open_since`), whether it reopened, when it closed again."""

    def __init__(self, engine: str, url: str | None, homes: list[Path], until: float) -> None:
        super().__init__(daemon=True)
        self.engine, self.url, self.homes, self.until = engine, url, homes, until
        self.seen: list[dict[str, Any]] = [
            {"open_since": [], "closed_at": None} for _ in (homes if url is None else [None])
        ]
        self.fallback_opened = False
        self.peak_connections: int | None = None
        self.reconnects = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._poll()
        except BaseException as exc:  # surfaced by breakers()
            self.error = exc

    def _poll(self) -> None:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True) if self.url else None
        sqlite = [
            sqlite3.connect(f"file:{home / 'agentguard.db'}?mode=ro", uri=True, timeout=5)
            for home in (self.homes if conn is None else [])
        ]
        try:
            while (now := time.time()) < self.until:
                sql = "select route, state, open_since, last_success_at from route_health"
                if conn is not None:
                    try:
                        tables = [conn.execute(sql).fetchall()]
                        (count,) = conn.execute(  # type: ignore[misc]
                            "select count(*) from pg_stat_activity where application_name = %s",
                            [APPLICATION],
                        ).fetchone()
                    except psycopg.OperationalError:  # the server ended it (a test next door)
                        conn.close()
                        conn = psycopg.connect(self.url, autocommit=True)
                        self.reconnects += 1
                        continue
                    self.peak_connections = max(self.peak_connections or 0, count - 1)  # not ours
                else:
                    tables = [db.execute(sql).fetchall() for db in sqlite]
                for seen, rows in zip(self.seen, tables, strict=True):
                    for route, state, open_since, last_success in rows:
                        if route == FALLBACK_ROUTE and state == "open":
                            self.fallback_opened = True
                        if route != PRIMARY_ROUTE:
                            continue
                        if state == "open" and open_since not in seen["open_since"]:
                            seen["open_since"].append(open_since)
                        if state == "closed" and seen["open_since"] and seen["closed_at"] is None:
                            seen["closed_at"] = last_success  # the successful probe's answer
                time.sleep(max(POLL_S - (time.time() - now), 0))
        finally:
            if conn is not None:
                conn.close()
            for db in sqlite:
                db.close()

    def breakers(self) -> list[dict[str, Any]]:
        if self.error is not None:
            raise AssertionError(f"set-up: the breaker poller failed: {self.error!r}")
        return self.seen


# -- the set-up's checks ---------------------------------------------------------------------------


def _check(o: Outcome, url: str | None, homes: list[Path]) -> None:
    """Everything the figures rely on, or a loud stop."""
    from agentguard.store import DB_NAME, open_store

    where = f"set-up ({o.engine})"
    if sorted(m["machine"] for m in o.machines) != list(range(MACHINES)):
        raise AssertionError(f"{where}: machines {[m['machine'] for m in o.machines]} reported")
    primary = {r.request_id: r for r in o.requests if r.model == PRIMARY}
    store_ids = o.attempts
    for n, (m, home) in enumerate(
        zip(sorted(o.machines, key=lambda m: m["machine"]), homes, strict=True)
    ):
        if len(m["agents"]) != AGENTS:
            raise AssertionError(f"{where}: machine {n} ran {len(m['agents'])} agents")
        if crashed := [a["crashed"] for a in m["agents"] if "crashed" in a]:
            raise AssertionError(f"{where}: an agent of machine {n} crashed: {crashed[0]}")
        if url is not None and (home / DB_NAME).exists():
            raise AssertionError(f"{where}: machine {n} wrote a SQLite store beside PostgreSQL")
        if url is None and not (home / DB_NAME).exists():
            raise AssertionError(f"{where}: machine {n} has no SQLite store in its home")
        if url is not None and n:
            continue  # one store for all: read it once
        store = open_store(home, url=url) if url is not None else open_store(home, url="sqlite")
        try:
            ids = {
                row["request_id"]: dict(row)
                for row in store.query(
                    "select request_id, status_code, outcome, number, started_at from attempts "
                    "where model = ?",
                    [PRIMARY],
                )
            }
            for row in store.query("select detail from events where kind like 'route_%'"):
                detail = json.loads(row["detail"])
                if detail.get("request_id") in ids:
                    ids[detail["request_id"]]["reason"] = detail.get("reason", "")
            store_ids.update(ids)
            agents = (
                [a for mm in o.machines for a in mm["agents"]] if url is not None else m["agents"]
            )
            runs = {row["id"] for row in store.query("select id from runs")}
            if runs != {a["run_id"] for a in agents}:
                raise AssertionError(f"{where}: the store's runs are not the agents' runs")
            for agent in agents:
                rows = store.query(
                    "select number, status, served_model from steps where run_id = ? "
                    "order by number",
                    [agent["run_id"]],
                )
                mine = [(i + 1, s["served"]) for i, s in enumerate(agent["steps"])]
                theirs = [
                    (r["number"], r["served_model"] if r["status"] == "ok" else None) for r in rows
                ]
                if mine != theirs:
                    raise AssertionError(
                        f"{where}: run {agent['run_id']}: the agent took {mine[:3]}… "
                        f"({len(mine)} steps), the store holds {theirs[:3]}… ({len(theirs)})"
                    )
        finally:
            store.close()
    at_fake = {k for k in primary if k}
    if set(store_ids) != at_fake:
        only_fake = sorted(at_fake - set(store_ids))[:5]
        only_store = sorted(set(store_ids) - at_fake)[:5]
        raise AssertionError(
            f"{where}: the primary's requests and the stores' attempts differ "
            f"({len(at_fake)} at the fake, {len(store_ids)} in the stores; only at the fake "
            f"{only_fake}, only in a store {only_store})"
        )
    during = [r for r in primary.values() if o.t0 <= r.at < o.t1]
    if not during or any(r.reply != "error:529" for r in during):
        raise AssertionError(f"{where}: the outage did not happen as scripted ({len(during)})")
    for n, seen in enumerate(o.breakers):
        opened = seen["open_since"]
        if not opened or not o.t0 <= min(opened) < o.t1:
            raise AssertionError(f"{where}: store {n}: the primary's breaker never opened")
        if seen["closed_at"] is None or seen["closed_at"] < o.t1:
            raise AssertionError(f"{where}: store {n}: the breaker did not close after recovery")
    if o.fallback_opened:
        raise AssertionError(f"{where}: the fallback's breaker opened")


# -- the figures -----------------------------------------------------------------------------------


def figures(o: Outcome, report: Report, shared: dict[str, float] | None = None) -> dict[str, float]:
    """The run's rows; `shared`: the PostgreSQL run's rate and probes, shown beside SQLite's."""
    case = CASES[o.engine]
    primary = sorted((r for r in o.requests if r.model == PRIMARY), key=lambda r: r.at)
    opens = [min(seen["open_since"]) for seen in o.breakers]
    opened = max(opens)  # the last machine's breaker (one breaker: its own)
    window = o.t1 - opened
    inside = [r for r in primary if opened <= r.at < o.t1]
    rate = len(inside) / window
    kinds = [_kind(o, r) for r in inside]
    shown = ", ".join(
        f"{r.at - opened:+.2f}"
        + ("" if r.machine is None else f" m{r.machine}")
        + f" {KINDS[k][0]}"
        + ("" if k == "probe" else f" (attempt begun {_begun(o, r) - opened:+.3f})")
        for r, k in zip(inside, kinds, strict=True)
    )
    probes = [r.at for r, k in zip(inside, kinds, strict=True) if k == "probe"]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    tally = _tally(kinds)
    before = [r for r in primary if o.t0 <= r.at < min(opens)]
    which = (
        f"its breaker first recorded open in the store (T0+{opened - o.t0:.2f} s)"
        if len(opens) == 1
        else f"every machine's breaker open (the last of {len(opens)} at "
        f"T0+{opened - o.t0:.2f} s, the first at T0+{min(opens) - o.t0:.2f} s)"
    )
    pg = o.engine == "postgresql"
    every = f", one every {statistics.mean(gaps):.2f} s" if gaps else ""
    if len(opens) == 1:
        detail = f"{tally}{every}; s after the opening, machine, kind: {shown}"
    else:
        detail = f"{tally}{every}, from {len({r.machine for r in inside})} machines"
    rate_fig = report.add(
        "fleet",
        case,
        "primary req/s after the breaker opened",
        rate,
        "req/s",
        note=(
            f"{len(inside)} requests in {window:.2f} s, from {which} to the recovery (T1); {detail}"
        ),
    )
    if pg:
        rate_fig.target, rate_fig.meets = "≤ 0.5 req/s", rate <= 0.5
        report.add(
            "fleet",
            case,
            "primary req/s after the breaker opened: probes alone",
            len(probes) / window,
            "req/s",
            note=f"the same window, only the {len(probes)} requests whose attempt won the probe "
            f"slot (from {len({r.machine for r in inside if _kind(o, r) == 'probe'})} machines); "
            f"the other {len(inside) - len(probes)} were sent by steps that had read the breaker "
            "closed",
        )
    elif shared and shared["rate"] and shared["probe_rate"]:
        rate_fig.note += (
            f"; {rate / shared['rate']:.1f}× the shared store's req/s, "
            f"{len(probes) / window / shared['probe_rate']:.1f}× its probes per second"
        )
    if len(opens) > 1:  # each machine is one machine on its own: the one-machine figure
        own, kinds_own = [], []
        for n, seen in enumerate(o.breakers):
            mine = [r for r in primary if r.machine == n and min(seen["open_since"]) <= r.at < o.t1]
            own.append(len(mine) / (o.t1 - min(seen["open_since"])))
            kinds_own += [_kind(o, r) for r in mine]
        report.add(
            "fleet",
            case,
            "one machine: its own primary req/s after its breaker opened, median",
            statistics.median(own),
            "req/s",
            note=f"each machine's requests from its own breaker's opening to T1 (its 4 agents, "
            f"its own store); max {max(own):.3f} req/s; of the 8 machines' requests: "
            + _tally(kinds_own),
        )
    report.add(
        "fleet",
        case,
        "primary requests before the breaker opened",
        len(before),
        "req",
        note=f"T0 to the first opening ({min(opens) - o.t0:.2f} s), all answered 529",
    )
    # back on the primary: per agent, its first request after T1 that the primary answered,
    # by its arrival there; and the end of that step, when the agent had the answer
    back, ended = [], []
    for m in o.machines:
        for a, agent in enumerate(m["agents"]):
            who = f"{m['machine']}.{a}"
            served = [
                r.at - o.t1 for r in primary if r.at >= o.t1 and r.agent == who and r.reply == "ok"
            ]
            back.append(min(served, default=math.inf))
            ends = [
                s["ended"] - o.t1
                for s in agent["steps"]
                if s["served"] == PRIMARY and s["ended"] >= o.t1
            ]
            ended.append(min(ends, default=math.inf))
    closed = [seen["closed_at"] - o.t1 for seen in o.breakers]
    closed_note = (
        f"its breaker closed at T1+{closed[0]:.2f} s"
        if len(closed) == 1
        else f"the breakers closed at T1+{min(closed):.2f}…{max(closed):.2f} s"
    )
    first_fig = report.add(
        "fleet",
        case,
        "back on primary: the fleet's first step",
        min(back),
        "s",
        note=f"from the recovery (T1) to the arrival at the primary of the first request it "
        f"answered; {closed_note} (the probe's answer recorded); that step's agent had its "
        f"answer at T1+{min(ended):.2f} s",
    )
    if pg:
        first_fig.target, first_fig.meets = "≤ 3 s", min(back) <= 3.0
    for label, pick in (("median", statistics.median), ("max", max)):
        report.add(
            "fleet",
            case,
            f"back on primary: each agent's first step, {label}",
            pick(back),
            "s",
            note=f"over the {len(back)} agents, each from T1 to the arrival at the primary of "
            f"its first request answered (∞: none before the run ended, T1+{AFTER:g} s); the "
            f"agents had those answers at T1+{pick(ended):.2f} s ({label}); an agent goes back "
            f"with its next step after the breaker closed: after the step in progress and "
            f"{TOOL_TIME:g} s of tools",
        )
    steps = [s for m in o.machines for a in m["agents"] for s in a["steps"] if not s.get("warm")]
    failed = sum(s["served"] is None for s in steps)
    substituted = sum(s["served"] not in (None, PRIMARY) for s in steps)
    took = sorted(s["ended"] - s["started"] for s in steps)
    connections = (
        f"; the fleet held up to {o.peak_connections} connections to the server"
        if o.peak_connections
        else ""
    )
    if o.poller_reconnects:
        connections += (
            f"; the server ended the observer's connection {o.poller_reconnects} time(s) "
            "(something else on the server ended connections: the run may have felt it)"
        )
    report.add(
        "fleet",
        case,
        "steps completed",
        len(steps) - failed,
        f"/ {len(steps)}",
        note=f"{substituted} served by the fallback; step latency p50 {_rank(took, 0.5):.2f} s, "
        f"p95 {_rank(took, 0.95):.2f} s; this run took {o.wall_s:.0f} s{connections}",
    )
    return {"rate": rate, "probe_rate": len(probes) / window}


KINDS = {  # how a kind of request is counted in a note: one, several
    "probe": ("probe", "probes"),
    "retry after closed": ("retry after a closed read", "retries after a closed read"),
    "first try, closed": ("first try after a closed read", "first tries after a closed read"),
    "ok": ("answered", "answered"),
}


def _tally(kinds: list[str]) -> str:
    """'6 probes, 2 retries after a closed read'."""
    return ", ".join(
        f"{kinds.count(k)} {KINDS[k][kinds.count(k) != 1]}" for k in dict.fromkeys(kinds)
    )


def _rank(values: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted values."""
    return values[max(math.ceil(q * len(values)) - 1, 0)] if values else math.nan


def _begun(o: Outcome, r: Request) -> float:
    """When the step began the attempt that sent `r` (its store row's started_at)."""
    return float(o.attempts.get(r.request_id, {}).get("started_at") or math.nan)


def _kind(o: Outcome, r: Request) -> str:
    """What sent a request to the primary, from its attempt in the store: a probe (the step won
    the probe slot), or a step that had found the breaker closed (its first try on the route,
    or a retry of it) whose answer came once the breaker was open."""
    attempt = o.attempts.get(r.request_id, {})
    reason = attempt.get("reason", "")
    if "probe failed" in reason:
        return "probe"
    if attempt.get("status_code") == 200:
        return "ok"
    return "retry after closed" if (attempt.get("number") or 1) > 1 else "first try, closed"


# -- PostgreSQL ------------------------------------------------------------------------------------


def _create_schema() -> tuple[str, str]:
    import psycopg

    schema = f"bench_fleet_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'create schema "{schema}"')
    joiner = "&" if "?" in POSTGRES_URL else "?"
    # application_name: so the poller can count the fleet's own connections to the server
    return schema, (
        f"{POSTGRES_URL}{joiner}options=-csearch_path%3D{schema}&application_name={APPLICATION}"
    )


def _drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'drop schema "{schema}" cascade')


def _postgres_missing() -> str | None:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5):
            return None
    except Exception as exc:
        return f"no PostgreSQL server: {' '.join(str(exc).split())[:200]}"


# -- main ------------------------------------------------------------------------------------------


def main(engines: list[str] | None = None) -> Report:
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="agentguard-bench-fleet-"))
    try:
        template = make_repo(workdir / "template", FILES)
        shutil.rmtree(template / ".git" / "hooks")  # 32 copies: no sample hooks, one pack file
        git(template, "repack", "-a", "-d", "-q")
        git(template, "prune")
        shared: dict[str, float] | None = None
        for engine in engines or list(ENGINES):
            if engine == "postgresql" and (why := _postgres_missing()):
                report.add("fleet", CASES[engine], "not run", 0, "", note=why)
                continue
            outcome = run(engine, workdir, template)
            measured = figures(outcome, report, shared)
            shared = measured if engine == "postgresql" else shared
            print(f"  fleet: {engine} done in {outcome.wall_s:.0f} s", file=sys.stderr)
    finally:
        if KEEP:
            _say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="*", default=list(ENGINES), choices=ENGINES)
    args = parser.parse_args()
    from benchmarks import fleet  # the machines' code by its module's name, not __main__'s

    result = fleet.main(args.engines)
    print(result.table())
    print(result.save("fleet"), file=sys.stderr)
