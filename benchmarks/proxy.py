"""The proxy's own cost: what `agentguard proxy` adds to a request, beside the same request sent
directly to the provider (the fake one, on 127.0.0.1).

The proxy runs as users run it: `agentguard proxy --listen 127.0.0.1:0 --project DIR --upstream
URL` in a process of its own (AGENTGUARD_HOME set), snapshots on, over a generated project of
10,000 files (`benchmarks.common.make_repo`) whose files an "agent" edits before each proxied
request (10 modified, 1 created, 1 deleted, as in the checkpoint benchmark). The client is raw
httpx2 with keep-alive, the same for both paths; direct and proxied requests are interleaved
(in random order within each pair) so drift on the machine affects both.

A step hands its answer over only once the working-tree checkpoint is complete (a checkpoint must
not race the agent's next edits), so what the proxy adds depends on how long the provider takes
beside the snapshot. Each latency figure is therefore measured twice:

- the fake answering after LATENCY (150 ms): a real model call takes far longer (a streamed
  answer's first token comes after 0.5–2 s, a whole answer after seconds), so 150 ms is a
  pessimistic stand-in, still longer than a 10k-file snapshot; the targets apply here;
- the fake answering at once: the snapshot is then what the request waits for; information, no
  target.

Parts:

1. added latency of a small non-streamed request (p50, p99: each percentile of the proxied
   requests minus the same percentile of the direct ones), and the direct latency itself;
   beside the instant provider also a second proxy with --no-snapshots (the proxy's own hop);
2. time to the first `content_block_delta` of a stream, proxied minus direct (median, p95);
3. 64 concurrent streams of 1,000 content deltas each through a fresh proxy process, each
   stream a session of its own that has made one request before (agents at work): first paced
   (an event every 10 ms), then sent as fast as the fake can. Every stream must arrive complete
   and in order (each delta's text names its stream and its number); the figures are the
   longest gap between two events of a stream, the time all took, the proxy's CPU per event,
   and its peak RSS (VmHWM, /proc/PID/status). The fake runs in a process of its own here;
4. the conversation checkpoint of a 500-message (~1 MB) conversation that grows by one turn per
   request, on the proxy path, timed inside a proxy running in this process (`ProxyThread`):
   `Guard._checkpoint` (from the parsed request to its new messages found and committed with
   the step's row; the target applies here), and beside it the request's arrival (its handler
   starting, the headers read) to that commit, which adds receiving and parsing the 1 MB body;
5. LiteLLM's proxy (`litellm[proxy]`, bench-only; `BENCH_LITELLM` may name a `litellm`
   executable installed elsewhere) as an anchor: its Anthropic `/v1/messages` endpoint, a
   `model_list` entry sending `claude-opus-4-7` to the same fake, the same requests in rounds
   of its own (half as many), each beside a direct request: LiteLLM keeps working after it has
   answered (its logging and callbacks), and on a 2-core machine that work would fall on
   whichever request came next in a shared round. No key, no database, its cost map read
   locally. The rows say why when it is not installed or does not start.

Each part checks its set-up and stops if it is wrong: every proxied request is a step in the
store with a checkpoint of its own tree, pinned by a ref in the shadow store; direct and proxied
answers are the same message; a stream has its 1,000 deltas.

python -m benchmarks.proxy                the full run (about 8 minutes)
python -m benchmarks.proxy --quick        a 1,000-file project, fewer requests (2 minutes)
python -m benchmarks.proxy --no-litellm   without LiteLLM's proxy
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from agentguard.home import project_key
from agentguard.store import DB_NAME
from agentguard.testing import FakeProvider, RecordedRequest, Turn, ok
from benchmarks.common import Report, agent_step_edit, git, make_repo
from benchmarks.conversation import conversation_step

MODEL = "claude-opus-4-7"
LATENCY = 0.150  # seconds the fake takes to answer in the "realistic" case (see above)
HEADERS = {
    "x-api-key": "bench-not-a-key",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}
SMALL = {
    "model": MODEL,
    "max_tokens": 256,
    "messages": [
        {"role": "user", "content": "The test in test_calc.py fails; fix calc.py."},
        {"role": "assistant", "content": "Let me read calc.py first."},
        {"role": "user", "content": "def add(a, b):\n    return a - b\n"},
    ],
}
STREAMED_TURN = Turn(
    text="The bug is in add: it subtracts. Replace `a - b` with `a + b` and rerun."
)
RSS_TARGET_MB = 150
# Part 3's paced streams: the fake sends their events PACE apart (100 a second, faster than a
# model streams its tokens); it sends MODEL's streams as fast as it can.
PACE = 0.010
PACED = "claude-sonnet-4-6"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sizes:
    files: int
    warmup: int  # request pairs before the timed ones (the first snapshot hashes every file)
    pairs: int  # timed non-streamed pairs with the fake taking LATENCY
    instant_pairs: int  # ... with the fake answering at once
    ttft_pairs: int
    ttft_instant_pairs: int
    streams: int
    deltas: int  # content deltas per concurrent stream
    messages: int  # the conversation's length at the end of part 4
    sample: int  # part 4: requests timed at the end of the conversation


FULL = Sizes(10_000, 20, 500, 300, 300, 200, 64, 1_000, 500, 20)
QUICK = Sizes(1_000, 5, 60, 40, 40, 30, 64, 1_000, 100, 10)


# -- processes -------------------------------------------------------------------------------------


class Process:
    """A server started here as a separate process, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def tail(self, lines: int = 5) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    def wait_for(self, ready: Callable[[], str | None], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with status {self.popen.returncode}: {self.tail()}"
                )
            if found := ready():
                return found
            time.sleep(0.1)  # a server starting up: polled, not measured
        raise RuntimeError(f"{self.name} did not start within {timeout:g} s: {self.tail()}")

    def loopback_url(self) -> str | None:
        """The http://127.0.0.1:PORT the process printed, once it has."""
        for word in self.log.read_text(errors="replace").split():
            if word.startswith("http://127.0.0.1:"):
                return word.rstrip(",")
        return None

    def memory_mb(self) -> dict[str, float]:
        """VmRSS and VmHWM (peak) of the process, from /proc/PID/status, in MB."""
        out = {}
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) / 1024
        return out

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class ProxyProcess(Process):
    """`agentguard proxy` on a free loopback port, with its own AGENTGUARD_HOME."""

    def __init__(
        self, project: Path, home: Path, upstream: str, log: Path, *, snapshots: bool = True
    ) -> None:
        self.project, self.home, self.snapshots = project, home, snapshots
        argv = [sys.executable, "-m", "agentguard.cli", "proxy", "--listen", "127.0.0.1:0"]
        argv += ["--project", str(project), "--upstream", upstream]
        if not snapshots:
            argv.append("--no-snapshots")
        env = {**os.environ, "AGENTGUARD_HOME": str(home), "COLUMNS": "400"}
        super().__init__("agentguard proxy", argv, env, log)
        self.url = self.wait_for(self.loopback_url, timeout=60)


class ForwarderProcess(Process):
    """`benchmarks.forwarder`: the same loopback hop with none of agentguard's work (a floor)."""

    def __init__(self, upstream: str, log: Path) -> None:
        argv = [sys.executable, "-m", "benchmarks.forwarder", upstream]
        super().__init__("bare forwarder", argv, dict(os.environ), log)
        self.url = self.wait_for(self.loopback_url, timeout=60)


# The fake provider of part 3 in a process of its own: its 64 threads writing 64,000 events
# would otherwise share this process (and its GIL) with the client reading them.
FAKE = """\
import sys
import threading
from agentguard.testing import FakeProvider, ok
from benchmarks.proxy import PACE, PACED, streams_model
with FakeProvider(streams_model(int(sys.argv[1]))) as fake:
    fake.set_faults(lambda model: ok(interval=PACE) if model == PACED else None)
    print(fake.base_url, flush=True)
    threading.Event().wait()  # until SIGTERM
"""


class FakeProcess(Process):
    """The fake provider with the streams model: PACED's streams paced, MODEL's at once."""

    def __init__(self, deltas: int, log: Path) -> None:
        argv = [sys.executable, "-c", FAKE, str(deltas)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        super().__init__("fake provider", argv, env, log)
        self.url = self.wait_for(self.loopback_url, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the store and the shadow store: did the proxy really checkpoint? ------------------------------


@dataclass
class Steps:
    """The proxy's steps since `after` (a step id), read from its store."""

    ids: list[int] = field(default_factory=list)
    ok: int = 0
    checkpoints: list[str] = field(default_factory=list)


def steps_since(home: Path, after: int) -> Steps:
    with contextlib.closing(sqlite3.connect(f"file:{home / DB_NAME}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "select id, status, checkpoint from steps where id > ? order by id", [after]
        ).fetchall()
    return Steps(
        ids=[r[0] for r in rows],
        ok=sum(r[1] == "ok" for r in rows),
        checkpoints=[r[2] for r in rows if r[2]],
    )


def last_step(home: Path) -> int:
    if not (home / DB_NAME).exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{home / DB_NAME}?mode=ro", uri=True)) as db:
        return int(db.execute("select coalesce(max(id), 0) from steps").fetchone()[0])


def pinned_commits(home: Path, project: Path) -> set[str]:
    """Every commit a step's ref pins in the project's shadow store."""
    git_dir = home / "shadow" / project_key(project) / "repo.git"
    out = git(
        home,
        "for-each-ref",
        "--format=%(objectname)",
        "refs/agentguard/runs/",
        env={"GIT_DIR": str(git_dir)},
    )
    return set(out.split())


def check_steps(
    home: Path, project: Path, after: int, requests: int, what: str, *, snapshots: bool = True
) -> int:
    """The set-up check: `requests` steps since `after`, each ok, each with a checkpoint of a
    tree of its own pinned by a ref in the shadow store (none without snapshots). Returns the
    last step id."""
    steps = steps_since(home, after)
    problems = []
    if len(steps.ids) != requests or steps.ok != requests:
        problems.append(f"{len(steps.ids)} steps ({steps.ok} ok) for {requests} requests")
    if not snapshots:
        if steps.checkpoints:
            problems.append(f"{len(steps.checkpoints)} checkpoints with snapshots off")
    elif len(steps.checkpoints) != requests:
        problems.append(f"{len(steps.checkpoints)} checkpoints for {requests} steps")
    if len(set(steps.checkpoints)) != len(steps.checkpoints):
        problems.append("two steps share a checkpoint although the tree changed before each")
    missing = set(steps.checkpoints) - (pinned_commits(home, project) if snapshots else set())
    if missing:
        problems.append(f"{len(missing)} checkpoints have no ref in the shadow store")
    if problems:
        raise AssertionError(f"set-up ({what}): " + "; ".join(problems))
    return steps.ids[-1] if steps.ids else after


# -- requests --------------------------------------------------------------------------------------


def answer(body: bytes) -> dict[str, Any]:
    """A message without its id (the fake numbers each one): what must match across paths."""
    message = json.loads(body)
    message.pop("id", None)
    return message


def post(client: httpx2.Client, base: str, body: bytes) -> tuple[float, httpx2.Response]:
    started = time.perf_counter()
    response = client.post(f"{base}/v1/messages", content=body, headers=HEADERS)
    return time.perf_counter() - started, response


@dataclass
class Streamed:
    status: int
    first_delta: float  # seconds from sending to the first content_block_delta
    events: list[bytes]
    times: list[float]  # when each event arrived (perf_counter)
    started: float = 0.0  # when the request was sent (perf_counter)

    def deltas(self) -> list[str]:
        return [
            json.loads(data(e))["delta"].get("text", "")
            for e in self.events
            if name(e) == "content_block_delta"
        ]

    def names(self) -> list[str]:
        return [name(e) for e in self.events]


def name(event: bytes) -> str:
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip().decode()
    return ""


def data(event: bytes) -> bytes:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return b""


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    *complete, rest = buffer.replace(b"\r\n", b"\n").split(b"\n\n")
    return [e for e in complete if e.strip()], rest


def stream(
    client: httpx2.Client, base: str, body: bytes, headers: dict[str, str] = HEADERS
) -> Streamed:
    started = time.perf_counter()
    first = math.nan
    events: list[bytes] = []
    times: list[float] = []
    buffer = b""
    with client.stream("POST", f"{base}/v1/messages", content=body, headers=headers) as response:
        for chunk in response.iter_raw():
            now = time.perf_counter()
            done, buffer = split_events(buffer + chunk)
            for event in done:
                if math.isnan(first) and event.startswith(b"event: content_block_delta"):
                    first = now - started
                events.append(event)
                times.append(now)
    return Streamed(response.status_code, first, events, times)


# -- percentiles -----------------------------------------------------------------------------------


def rank(values: list[float], q: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def ms(seconds: float) -> float:
    return seconds * 1000


# -- parts 1, 2 and 5: interleaved requests --------------------------------------------------------


@dataclass
class Target:
    name: str  # "direct", "agentguard", "LiteLLM"
    base: str
    client: httpx2.Client
    proxy: ProxyProcess | None = None  # agentguard's: its store is checked after each phase


class Bench:
    def __init__(self, workdir: Path, sizes: Sizes, report: Report) -> None:
        self.workdir, self.sizes, self.report = workdir, sizes, report
        self.project = make_repo(workdir / "project", sizes.files)
        self.edits = 0
        self.rng = random.Random(13)

    def edit(self) -> None:
        """What the agent's tools do between two of its model calls."""
        self.edits += 1
        agent_step_edit(self.project, self.edits, self.sizes.files)

    def rounds(
        self,
        targets: list[Target],
        count: int,
        once: Callable[[Target], tuple[float, Any]],
    ) -> dict[str, list[tuple[float, Any]]]:
        """`count` rounds, each sending one request to every target in random order (the tree
        edited before each round), after the warm-up rounds."""
        samples: dict[str, list[tuple[float, Any]]] = {t.name: [] for t in targets}
        for n in range(self.sizes.warmup + count):
            self.edit()
            order = list(targets)
            self.rng.shuffle(order)
            for target in order:
                took, got = once(target)
                if n >= self.sizes.warmup:
                    samples[target.name].append((took, got))
        return samples

    def recorded(self, targets: list[Target]) -> dict[str, int]:
        """Each proxy's last step id, before a phase."""
        return {t.name: last_step(t.proxy.home) for t in targets if t.proxy is not None}

    def check(self, targets: list[Target], before: dict[str, int], count: int, what: str) -> None:
        """Each proxy recorded a step (checkpointed, with snapshots on) per request it got."""
        for t in targets:
            if t.proxy is not None:
                requests = self.sizes.warmup + count
                snapshots = t.proxy.snapshots
                check_steps(
                    t.proxy.home, self.project, before[t.name], requests, what, snapshots=snapshots
                )


def non_streamed(
    bench: Bench,
    fake: FakeProvider,
    targets: list[Target],
    latency: float,
    count: int,
    *,
    direct_row: bool = True,
) -> None:
    fake.set_faults((lambda _model: ok(latency=latency)) if latency else None)
    body = json.dumps(SMALL).encode()
    before = bench.recorded(targets)

    def once(target: Target) -> tuple[float, Any]:
        took, response = post(target.client, target.base, body)
        if response.status_code != 200:
            raise AssertionError(f"set-up: {target.name} answered {response.status_code}")
        if target.proxy is not None and "x-agentguard-step" not in response.headers:
            raise AssertionError("set-up: the proxy's answer does not name its step")
        return took, answer(response.content)

    samples = bench.rounds(targets, count, once)
    fake.reset()
    bench.check(targets, before, count, "non-streamed requests")
    direct = samples["direct"]
    for name_, got in samples.items():
        different = sum(a[1] != d[1] for a, d in zip(got, direct, strict=True))
        if different:
            raise AssertionError(f"set-up: {different} answers through {name_} differ from direct")
    case = _case(bench.sizes.files, latency)
    d50, d99 = rank([t for t, _ in direct], 0.5), rank([t for t, _ in direct], 0.99)
    if direct_row:
        bench.report.add(
            "proxy",
            case,
            "direct latency p50 / p99",
            ms(d50),
            "ms",
            note=f"p99 {ms(d99):.1f} ms; {count} requests, each of a pair (or triple) in random "
            "order",
        )
    for target in targets:
        if target.name == "direct":
            continue
        took = [t for t, _ in samples[target.name]]
        p50, p99 = rank(took, 0.5) - d50, rank(took, 0.99) - d99
        who = target.name
        realistic = latency > 0 and who == "agentguard"
        note = (
            f"p50 {ms(rank(took, 0.5)):.1f} vs {ms(d50):.1f} ms direct; "
            f"answers identical ({count}/{count})"
        )
        bench.report.add(
            "proxy",
            case,
            f"{who}: added latency p50",
            ms(p50),
            "ms",
            "≤ 2 ms" if realistic else "",
            ms(p50) <= 2 if realistic else None,
            note=note + ("" if realistic or who != "agentguard" else "; waits for the snapshot"),
        )
        bench.report.add(
            "proxy",
            case,
            f"{who}: added latency p99",
            ms(p99),
            "ms",
            "≤ 10 ms" if realistic else "",
            ms(p99) <= 10 if realistic else None,
            note=f"p99 {ms(rank(took, 0.99)):.1f} vs {ms(d99):.1f} ms direct",
        )


def first_token(
    bench: Bench,
    fake: FakeProvider,
    targets: list[Target],
    latency: float,
    count: int,
    *,
    direct_row: bool = True,
) -> None:
    fake.set_faults(lambda _model: ok(STREAMED_TURN, latency=latency))
    body = json.dumps({**SMALL, "stream": True}).encode()
    before = bench.recorded(targets)
    want = [w for w in STREAMED_TURN.text.split(" ")]

    def once(target: Target) -> tuple[float, Any]:
        got = stream(target.client, target.base, body)
        texts = got.deltas()
        if got.status != 200 or [t.strip() for t in texts] != want:
            raise AssertionError(f"set-up: {target.name}'s stream is not the answer: {texts}")
        if got.names()[-1] != "message_stop":
            raise AssertionError(f"set-up: {target.name}'s stream ended with {got.names()[-1]}")
        return got.first_delta, got.names()

    samples = bench.rounds(targets, count, once)
    fake.reset()
    fake.set_faults(None)
    bench.check(targets, before, count, "streamed requests")
    direct = [t for t, _ in samples["direct"]]
    case = _case(bench.sizes.files, latency)
    if direct_row:
        bench.report.add(
            "proxy",
            case,
            "direct time to first content delta",
            ms(rank(direct, 0.5)),
            "ms",
            note=f"median; p95 {ms(rank(direct, 0.95)):.1f} ms; {count} streams",
        )
    for target in targets:
        if target.name == "direct":
            continue
        took = [t for t, _ in samples[target.name]]
        names_ = [n for _, n in samples[target.name]]
        if any(n != samples["direct"][0][1] for n in names_):
            raise AssertionError(f"set-up: {target.name}'s streams have other events than direct")
        later50 = rank(took, 0.5) - rank(direct, 0.5)
        later95 = rank(took, 0.95) - rank(direct, 0.95)
        realistic = latency > 0 and target.name == "agentguard"
        bench.report.add(
            "proxy",
            case,
            f"{target.name}: first content delta later, median",
            ms(later50),
            "ms",
            "≤ 5 ms" if realistic else "",
            ms(later50) <= 5 if realistic else None,
            note=f"{ms(rank(took, 0.5)):.1f} vs {ms(rank(direct, 0.5)):.1f} ms direct; "
            f"every stream the direct one's {len(names_[0])} events",
        )
        bench.report.add(
            "proxy",
            case,
            f"{target.name}: first content delta later, p95",
            ms(later95),
            "ms",
            "≤ 5 ms" if realistic else "",
            ms(later95) <= 5 if realistic else None,
            note=f"{ms(rank(took, 0.95)):.1f} vs {ms(rank(direct, 0.95)):.1f} ms direct",
        )


def _case(files: int, latency: float) -> str:
    provider = f"provider {ms(latency):g} ms" if latency else "provider instant"
    return f"{files:,} files, {provider}"


# -- part 3: concurrent streams --------------------------------------------------------------------


def stream_text(n: int, deltas: int) -> str:
    return " ".join(f"s{n:03d}e{i:05d}" for i in range(deltas))


def streams_model(deltas: int) -> Callable[[RecordedRequest], Turn]:
    """The fake's model for part 3: the answer names its stream and numbers every word (the
    fake sends one word per content_block_delta)."""

    def model(request: RecordedRequest) -> Turn:
        first = request.body["messages"][0]["content"]
        return Turn(text=stream_text(int(first.removeprefix("stream ")), deltas))

    return model


def stream_body(n: int, model: str = MODEL) -> bytes:
    return json.dumps(
        {
            "model": model,
            "max_tokens": 4096,
            "stream": True,
            "messages": [{"role": "user", "content": f"stream {n}"}],
        }
    ).encode()


def session_headers(n: int) -> dict[str, str]:
    """Claude Code's headers: each stream a session (an agent) of its own."""
    return {**HEADERS, "x-claude-code-session-id": f"00000000-0000-4000-8000-{n:012d}"}


async def _one(client: httpx2.AsyncClient, base: str, n: int, model: str) -> Streamed:
    started = time.perf_counter()
    events: list[bytes] = []
    times: list[float] = []
    buffer = b""
    async with client.stream(
        "POST", f"{base}/v1/messages", content=stream_body(n, model), headers=session_headers(n)
    ) as response:
        async for chunk in response.aiter_raw():
            now = time.perf_counter()
            done, buffer = split_events(buffer + chunk)
            events += done
            times += [now] * len(done)
    deltas = [t for e, t in zip(events, times, strict=True) if name(e) == "content_block_delta"]
    first = deltas[0] - started if deltas else math.nan
    return Streamed(response.status_code, first, events, times, started)


async def _many(base: str, count: int, model: str) -> tuple[list[Streamed | BaseException], float]:
    limits = httpx2.Limits(max_connections=count + 8, max_keepalive_connections=count + 8)
    async with httpx2.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        got = await asyncio.gather(
            *(_one(client, base, n, model) for n in range(count)), return_exceptions=True
        )
        return list(got), time.perf_counter() - started


@dataclass
class StreamsOutcome:
    complete: int
    broken: list[str]
    max_gap: float
    steady_gap: float  # the longest once every stream had its first delta
    slowest_first: float
    wall: float
    proxy_cpu: float = 0.0  # seconds of the proxy process's CPU while they ran


def verify_streams(got: list[Streamed | BaseException], deltas: int, wall: float) -> StreamsOutcome:
    broken, gaps = [], []
    want_names = (
        ["message_start", "content_block_start", "ping"]
        + ["content_block_delta"] * deltas
        + ["content_block_stop", "message_delta", "message_stop"]
    )
    done = [g for g in got if isinstance(g, Streamed) and g.times]
    all_started = max((g.started + g.first_delta for g in done), default=math.nan)
    for n, result in enumerate(got):
        if isinstance(result, BaseException):
            broken.append(f"stream {n}: {type(result).__name__}: {result}")
            continue
        texts = result.deltas()
        want = [f"s{n:03d}e{i:05d}" for i in range(deltas)]
        if result.status != 200 or result.names() != want_names:
            broken.append(f"stream {n}: status {result.status}, {len(result.events)} events")
        elif [t.strip() for t in texts] != want:
            wrong = next(i for i, (a, b) in enumerate(zip(texts, want, strict=True)) if a != b)
            broken.append(f"stream {n}: delta {wrong} is {texts[wrong]!r}, not {want[wrong]!r}")
        gaps += [(b - a, a) for a, b in zip(result.times, result.times[1:], strict=False)]
    return StreamsOutcome(
        complete=len(got) - len(broken),
        broken=broken,
        max_gap=max((g for g, _ in gaps), default=math.nan),
        steady_gap=max((g for g, at in gaps if at >= all_started), default=math.nan),
        slowest_first=max((g.first_delta for g in done), default=math.nan),
        wall=wall,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def concurrent_streams(bench: Bench) -> None:
    """64 streams at once through a fresh proxy process, paced, then as fast as the fake can
    send them; each stream its own session (64 agents behind one proxy, each past its first
    request: a session's first request sets up its run, which is not what is measured here)."""
    sizes, report = bench.sizes, bench.report
    home = bench.workdir / "home-streams"
    fake = FakeProcess(sizes.deltas, bench.workdir / "fake-streams.log")
    runs: dict[tuple[str, str], StreamsOutcome] = {}
    try:
        proxy = ProxyProcess(bench.project, home, fake.url, bench.workdir / "proxy-streams.log")
        try:
            # each session once before, one after the other: agents at work, not starting
            with httpx2.Client(timeout=120) as client:
                for n in range(sizes.streams):
                    warm = stream(client, proxy.url, stream_body(n), session_headers(n))
                    assert warm.status == 200, warm.status
            idle = proxy.memory_mb()
            before = last_step(home)
            for model in (PACED, MODEL):
                for who, base in (("direct", fake.url), ("agentguard", proxy.url)):
                    cpu = cpu_seconds(proxy.popen.pid)
                    got, wall = asyncio.run(_many(base, sizes.streams, model))
                    runs[(model, who)] = verify_streams(got, sizes.deltas, wall)
                    runs[(model, who)].proxy_cpu = cpu_seconds(proxy.popen.pid) - cpu
            memory = proxy.memory_mb()
        finally:
            proxy.stop()
    finally:
        fake.stop()
    for (model, who), outcome in runs.items():
        if who == "direct" and outcome.broken:
            raise AssertionError(f"set-up: direct streams ({model}) broken: {outcome.broken[:3]}")
    check_steps(home, bench.project, before, 2 * sizes.streams, "concurrent streams")
    events = sizes.deltas + 6
    for model in (PACED, MODEL):
        ours, direct = runs[(model, "agentguard")], runs[(model, "direct")]
        how = f"{ms(PACE):g} ms apart" if model == PACED else "sent at once"
        case = f"{sizes.streams} concurrent streams × {sizes.deltas:,} deltas, {how}"
        lost = sizes.streams - ours.complete
        report.add(
            "proxy",
            case,
            "agentguard: streams lost or out of order",
            lost,
            f"/ {sizes.streams}",
            "0",
            lost == 0,
            note="; ".join(ours.broken[:3])
            or f"every delta of every stream in order ({events:,} events a stream)",
        )
        report.add(
            "proxy",
            case,
            "agentguard: longest gap between two events of a stream",
            ms(ours.max_gap),
            "ms",
            baseline=ms(direct.max_gap),
            note=f"direct {ms(direct.max_gap):.0f} ms; once every stream had its first delta "
            f"{ms(ours.steady_gap):.0f} ms (direct {ms(direct.steady_gap):.0f} ms); the last "
            f"stream's first delta after {ours.slowest_first:.2f} s (direct "
            f"{direct.slowest_first:.2f} s); each step snapshots the tree, one at a time",
        )
        per_event = ours.proxy_cpu / (sizes.streams * events) * 1e6
        report.add(
            "proxy",
            case,
            "agentguard: all streams done in",
            ours.wall,
            "s",
            baseline=direct.wall,
            note=f"direct {direct.wall:.2f} s; the proxy process used {ours.proxy_cpu:.2f} s "
            f"of CPU, {per_event:.0f} µs per event (2 CPUs shared with the fake and the client)",
        )
    peak = memory.get("VmHWM", math.nan)
    report.add(
        "proxy",
        f"{sizes.streams} concurrent streams × {sizes.deltas:,} deltas",
        "agentguard proxy process RSS, peak",
        peak,
        "MB",
        f"≤ {RSS_TARGET_MB} MB",
        peak <= RSS_TARGET_MB,
        note=f"VmHWM over both runs; {idle.get('VmRSS', math.nan):.0f} MB before the streams, "
        f"{memory.get('VmRSS', math.nan):.0f} MB after; {sizes.streams} sessions (runs) open",
    )


# -- part 4: the conversation checkpoint on the proxy path -----------------------------------------


def conversation_checkpoint(bench: Bench, fake: FakeProvider) -> None:
    """Time `Guard._checkpoint` (and the request's arrival → its end) in a proxy in this
    process, for a conversation that grows by one turn (two messages) per request."""
    from agentguard.guard import Guard
    from agentguard.proxy import ProxyOptions, ProxyServer, ProxyThread

    sizes = bench.sizes
    home = bench.workdir / "home-conversation"
    arrived: contextvars.ContextVar[float | None] = contextvars.ContextVar("arrived", default=None)
    timings: list[tuple[float, float]] = []  # (checkpoint, arrival → checkpoint written)
    real_handle, real_checkpoint = ProxyServer.handle, Guard._checkpoint

    async def handle(self: ProxyServer, request: Any) -> Any:
        arrived.set(time.perf_counter())
        return await real_handle(self, request)

    def checkpoint(self: Guard, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        state = real_checkpoint(self, *args, **kwargs)
        done = time.perf_counter()
        timings.append((done - started, done - (arrived.get() or started)))
        return state

    ProxyServer.handle = handle  # type: ignore[method-assign]
    Guard._checkpoint = checkpoint  # type: ignore[method-assign]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "fix the bug"}]
    sizes_sent: list[int] = []
    try:
        options = ProxyOptions.build(bench.project, home=home, upstream=fake.base_url)
        with ProxyThread(options) as proxy, httpx2.Client(timeout=120) as client:
            step = 0
            while len(messages) < sizes.messages:
                step += 1
                messages = [*messages, *conversation_step(step)]
                body = json.dumps({"model": MODEL, "max_tokens": 256, "messages": messages})
                sizes_sent.append(len(body))
                bench.edit()
                _took, response = post(client, proxy.url, body.encode())
                fake.reset()  # the fake keeps every request body otherwise
                if response.status_code != 200:
                    raise AssertionError(f"set-up: the proxy answered {response.status_code}")
    finally:
        ProxyServer.handle = real_handle  # type: ignore[method-assign]
        Guard._checkpoint = real_checkpoint  # type: ignore[method-assign]
    if len(timings) != step:
        raise AssertionError(f"set-up: {len(timings)} checkpoints timed for {step} requests")
    check_steps(home, bench.project, 0, step, "conversation checkpoints")
    with contextlib.closing(sqlite3.connect(f"file:{home / DB_NAME}?mode=ro", uri=True)) as db:
        stored = db.execute("select count(*) from messages").fetchone()[0]
    if stored != len(messages):
        raise AssertionError(f"set-up: {stored} messages stored for a {len(messages)}-message one")
    last = timings[-sizes.sample :]
    cost = [c for c, _ in last]
    whole = [w for _, w in last]
    case = f"{len(messages)}-message conversation ({sizes_sent[-1] / 1e6:.2f} MB of JSON)"
    parse = _parse_time(body.encode())
    bench.report.add(
        "proxy",
        case,
        "agentguard: conversation checkpoint",
        ms(statistics.median(cost)),
        "ms",
        "< 5 ms",
        ms(statistics.median(cost)) < 5,
        note=f"median of the last {len(last)} requests (each 2 messages longer), max "
        f"{ms(max(cost)):.1f} ms: Guard._checkpoint, from the parsed request to its new "
        "messages found (the others compared, not hashed) and written with the step's row",
    )
    bench.report.add(
        "proxy",
        case,
        "agentguard: request arrival → step row written",
        ms(statistics.median(whole)),
        "ms",
        note=f"median, max {ms(max(whole)):.1f} ms: from the handler's start (headers read) "
        "to the step's row committed, with the body's 1 MB received and parsed (parsing alone "
        f"{ms(parse):.1f} ms here, the proxy's own parser on the same body)",
    )


def _parse_time(body: bytes) -> float:
    """Seconds the proxy's parser takes over `body` (median of 5)."""
    from agentguard.proxy.server import parse_json

    samples = []
    for _ in range(5):
        started = time.perf_counter()
        parse_json(body)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


# -- part 5: LiteLLM's proxy -----------------------------------------------------------------------


def litellm_proxy(workdir: Path, upstream: str) -> tuple[Process | None, str]:
    """LiteLLM's proxy with its /v1/messages aimed at the fake: (process, base URL), or (None,
    why not)."""
    exe = os.environ.get("BENCH_LITELLM") or shutil.which(
        "litellm", path=str(Path(sys.executable).parent)
    )
    if not exe:
        return None, "not installed: pip install 'litellm[proxy]' (make bench does)"
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: anthropic/{MODEL}\n"
        f"      api_base: {upstream}\n"
        "      api_key: bench-not-a-key\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # loopback only: no cost map download
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "NO_PROXY": "*",
        # newer releases refuse to start without a master key; this one listens on loopback
        # for the benchmark only, and the requests carry no key it would have to check
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    for var in ("DATABASE_URL", "LITELLM_MASTER_KEY", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(var, None)
    base = f"http://127.0.0.1:{port}"
    try:
        process = Process(
            "LiteLLM proxy",
            [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
            env,
            workdir / "litellm.log",
        )
    except OSError as exc:
        return None, f"did not start: {exc}"

    def ready() -> str | None:
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(f"{base}/health/liveliness", timeout=2).status_code == 200:
                return base
        return None

    try:
        process.wait_for(ready, timeout=180)
    except RuntimeError as exc:
        process.stop()
        return None, f"did not start: {exc}"
    return process, base


# -- the whole benchmark ---------------------------------------------------------------------------


def main(quick: bool = False, *, litellm: bool = True) -> Report:
    sizes = QUICK if quick else FULL
    report = Report()
    started_at = _agentguard_version()
    workdir = Path(tempfile.mkdtemp(prefix="agentguard-bench-proxy-"))
    anchor: Process | None = None
    try:
        bench = Bench(workdir, sizes, report)
        with FakeProvider() as fake, contextlib.ExitStack() as stack:
            proxy = ProxyProcess(
                bench.project, workdir / "home", fake.base_url, workdir / "proxy.log"
            )
            stack.callback(proxy.stop)
            bare = ProxyProcess(
                bench.project,
                workdir / "home-bare",
                fake.base_url,
                workdir / "proxy-bare.log",
                snapshots=False,
            )
            stack.callback(bare.stop)

            forwarder = ForwarderProcess(fake.base_url, workdir / "forwarder.log")
            stack.callback(forwarder.stop)

            def client() -> httpx2.Client:
                return stack.enter_context(httpx2.Client(timeout=60))

            targets = [
                Target("direct", fake.base_url, client()),
                Target("agentguard", proxy.url, client(), proxy),
                Target("bare forwarder (floor)", forwarder.url, client()),
            ]
            # LiteLLM's rounds are its own, each request beside a direct one: it keeps working
            # after it has answered (its logging and callbacks), and on a 2-core machine that
            # work would fall on whichever request came next in a shared round
            anchored: list[Target] = []
            if litellm:
                anchor, where = litellm_proxy(workdir, fake.base_url)
                if anchor is None:
                    report.add("proxy", "LiteLLM proxy", where.split(":")[0], 0, "", note=where)
                else:
                    stack.callback(anchor.stop)
                    anchored = [Target("direct", fake.base_url, client())]
                    anchored.append(Target("LiteLLM", where, client()))
            # the proxy's own hop, without the snapshot: only beside an instant provider
            instant = [*targets, Target("agentguard, snapshots off", bare.url, client(), bare)]
            for latency, count in ((LATENCY, sizes.pairs), (0.0, sizes.instant_pairs)):
                non_streamed(bench, fake, instant if not latency else targets, latency, count)
                if anchored:
                    non_streamed(bench, fake, anchored, latency, count // 2, direct_row=False)
                print(f"  proxy: non-streamed, provider {ms(latency):g} ms done", file=sys.stderr)
            for latency, count in ((LATENCY, sizes.ttft_pairs), (0.0, sizes.ttft_instant_pairs)):
                first_token(bench, fake, instant if not latency else targets, latency, count)
                if anchored:
                    first_token(bench, fake, anchored, latency, count // 2, direct_row=False)
                print(f"  proxy: first token, provider {ms(latency):g} ms done", file=sys.stderr)
            stack.close()
            concurrent_streams(bench)
            print("  proxy: concurrent streams done", file=sys.stderr)
            conversation_checkpoint(bench, fake)
            print("  proxy: conversation checkpoint done", file=sys.stderr)
    finally:
        if anchor is not None:
            anchor.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    ended_at = _agentguard_version()
    if ended_at.partition(" ")[2] != started_at.partition(" ")[2]:  # agentguard/ itself
        report.add(
            "proxy",
            "this run",
            "agentguard changed while it ran",
            0,
            "",
            note=f"{started_at} at the start, {ended_at} at the end: the saved run names the "
            "end's commit",
        )
    return report


def _agentguard_version() -> str:
    """The commit, the tree of agentguard/ in it and a digest of its uncommitted edits there."""
    head = git(ROOT, "rev-parse", "--short", "HEAD")
    tree = git(ROOT, "rev-parse", "--short", "HEAD:agentguard")
    edits = git(ROOT, "diff", "HEAD", "--", "agentguard")
    return f"{head} (agentguard/ {tree}" + (
        f" + edits {zlib.crc32(edits.encode()):08x})" if edits else ")"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 files, fewer requests")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM's proxy out")
    args = parser.parse_args()
    result = main(args.quick, litellm=not args.no_litellm)
    print(result.table())
    print(result.save("proxy"))
