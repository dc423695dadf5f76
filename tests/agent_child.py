"""A real agent loop for the crash-safety and concurrency tests, run in forked processes.

`python tests/agent_child.py` starts a *zygote*: it imports agentguard and the SDKs once (the
costly part of starting Python here), then reads one JSON job per line on stdin and forks a
fresh agent process for each, so a test can start dozens of agents in a fraction of the time
separate interpreters would take. It answers on stdout, one JSON object per line:

    {"event": "ready"}
    {"event": "started", "id": JOB, "pid": PID}
    {"event": "exit", "id": JOB, "pid": PID, "code": N | null, "signal": N | null}

The zygote never starts a thread (forking a threaded process is unsafe): it waits on stdin
and on a pidfd per child with one selector. Each agent leads its own process group, so a kill
takes its git subprocesses with it, as a killed terminal session or container would.

A job may ask its agent to die by SIGKILL at a named point, by wrapping agentguard's own
functions in the agent process (`kill`), or let the zygote kill it after a delay
(`kill_after`). The scripted tool loop it runs is defined here too (`OPS`, `tree_after`,
`scripted_turn`), so the test's fake model and its expectations use the same plan.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER_HEADER = "x-agent-marker"
PID_HEADER = "x-agent-pid"
TOOLS = [
    {
        "name": name,
        "description": name.replace("_", " "),
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
    for name in ("write_file", "append_file", "delete_file")
]
SYSTEM = "You are a careful coding agent."
TASK = "Keep a notebook of your steps in notes/, and tag app.py as you go."


# -- the plan the scripted model follows ------------------------------------------------------


def op(k: int) -> tuple[str, dict[str, str]]:
    """The tool call the model makes once it has seen `k` tool results."""
    kind = k % 5
    if kind == 0:
        return "write_file", {"path": f"notes/step-{k}.txt", "content": f"step {k}\nline two\n"}
    if kind == 1:
        return "append_file", {"path": "app.py", "content": f"# touched at step {k}\n"}
    if kind == 2:
        return "write_file", {"path": f"notes/deep/step-{k}.txt", "content": f"deep {k}\n" * 3}
    if kind == 3:  # delete a note written earlier
        return "delete_file", {"path": f"notes/step-{k - 3}.txt"}
    return "write_file", {"path": "scratch.txt", "content": f"scratch rewritten at {k}\n"}


def tree_after(initial: dict[str, bytes], k: int) -> dict[str, bytes]:
    """The project's files once the first `k` tool calls have run."""
    tree = dict(initial)
    for index in range(k):
        name, args = op(index)
        if name == "write_file":
            tree[args["path"]] = args["content"].encode()
        elif name == "append_file":
            tree[args["path"]] = tree.get(args["path"], b"") + args["content"].encode()
        else:
            tree.pop(args["path"], None)
    return tree


def tool_results_in(messages: list[Any]) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    )


def scripted_turn(messages: list[Any], total: int) -> Any:
    """The fake model: one tool call per turn from the plan, then a final answer."""
    from agentguard.testing import ToolCall, Turn

    done = tool_results_in(messages)
    if done >= total:
        return Turn(text=f"done after {done} tool calls")
    name, args = op(done)
    return Turn(text=f"step {done}: {name}", tool_calls=[ToolCall(name, args)])


# -- dying on cue -----------------------------------------------------------------------------


def die() -> None:
    """SIGKILL this agent's whole process group (the agent and any git it is running)."""
    sys.stderr.flush()
    os.killpg(0, signal.SIGKILL)
    time.sleep(60)  # never reached: the signal cannot be caught


def _wrap(owner: Any, name: str, when: str, nth: int, guard: Callable[..., bool] | None = None):
    """Replace owner.name so that its nth matching call dies before or after running."""
    original = getattr(owner, name)
    calls = [0]

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if guard is None or guard(*args, **kwargs):
            calls[0] += 1
            if calls[0] == nth and when == "before":
                die()
            if calls[0] == nth and when == "during":  # die while the call is in progress
                import threading

                threading.Timer(0.001, die).start()
            result = original(*args, **kwargs)
            if calls[0] == nth and when == "after":
                die()
            return result
        return original(*args, **kwargs)

    setattr(owner, name, hooked)


def install_kill(plan: dict[str, Any] | None) -> dict[str, Any]:
    """Arm the named kill point in this process; returns state the agent loop consults."""
    state: dict[str, Any] = {"tool": None}
    if not plan:
        return state
    import agentguard.wrapping
    from agentguard.guard import Guard
    from agentguard.providers.anthropic import AnthropicProvider
    from agentguard.providers.dispatch import Dispatcher
    from agentguard.snapshots import ShadowRepo

    point, nth, when = plan["point"], int(plan.get("n", 1)), plan.get("when", "before")
    # A step's writes between two of its actions commit together, just before the action
    # (Guard._batched): a kill inside that stretch leaves none of them.
    if point == "checkpoint":  # the step row and its messages written, not yet committed
        _wrap(Guard, "_checkpoint", "after", nth)
    elif point == "open_attempt":  # the step and attempt rows committed, the request not sent
        _wrap(Dispatcher, "send", "before", nth)
    elif point == "record":  # the attempt's outcome arrived but is not recorded
        _wrap(Guard, "_record", "before", nth)
    elif point == "finish":  # served; its outcome committed only if a join came between
        _wrap(Guard, "_finish", "before", nth)
    elif point == "after_finish":  # the step is recorded; the caller never saw the response
        _wrap(agentguard.wrapping, "drive", "after", nth)
    elif point == "midstream":  # some SSE events read, the rest still on the wire
        _die_midstream(AnthropicProvider, nth, int(plan.get("events", 3)))
    elif point == "git":  # during a snapshot or restore: around one git command
        command = plan["command"]
        _wrap(ShadowRepo, "_run", when, nth, lambda _self, args, **_: args[0] == command)
    elif point == "scan":  # during a snapshot: around its scan of the tree (two git processes)
        _wrap(ShadowRepo, "_scan", when, nth)
    elif point == "set_refs":  # the snapshot commit exists; its refs are (not yet) written
        _wrap(ShadowRepo, "_set_refs", when, nth)
    elif point == "ref_lock":  # a ref's lock file is written, not yet renamed into place
        _wrap(os, "replace", "before", nth, lambda src, *_, **__: "/refs/" in os.fspath(src))
    elif point == "tool":  # the agent is halfway through writing a file
        state["tool"] = nth
    else:
        raise ValueError(f"unknown kill point {point!r}")
    return state


def _die_midstream(provider: Any, nth: int, events: int) -> None:
    """Die in the nth stream that gets going, after reading `events` of its events; a stream
    that fails first (a scripted 529, a mid-stream error) raises as usual and does not count."""
    streams = [0]
    originals = {name: getattr(provider, name) for name in ("create_stream", "message_stream")}

    def reading(name: str) -> Callable[..., Any]:
        def hooked(self: Any, params: dict[str, Any], *rest: Any) -> Any:
            if streams[0] + 1 != nth:
                served = originals[name](self, params, *rest)
                streams[0] += 1
                return served
            raw = self.client.messages.create(**{**params, "stream": True})
            for count, _event in enumerate(raw, start=1):
                if count >= events:
                    die()
            die()  # a stream shorter than asked for: die at its end, before it is returned

        return hooked

    for name in originals:
        setattr(provider, name, reading(name))


# -- the agent --------------------------------------------------------------------------------


def run_tool(project: Path, name: str, args: dict[str, str], die_halfway: bool) -> str:
    path = project / args["path"]
    if name == "delete_file":
        path.unlink(missing_ok=True)
        return f"deleted {args['path']}"
    data = args["content"].encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab" if name == "append_file" else "wb") as handle:
        if die_halfway:
            handle.write(data[: len(data) // 2])
            handle.flush()
            die()
        handle.write(data)
    return f"{name}: {len(data)} bytes to {args['path']}"


def _ask(client: Any, mode: int, request: dict[str, Any]) -> list[dict[str, Any]]:
    """One model call, in one of the three shapes an agent uses; the reply's content blocks."""
    if mode == 0:
        reply = client.messages.create(**request)
        return [block.model_dump(mode="json", exclude_none=True) for block in reply.content]
    if mode == 1:
        with client.messages.stream(**request) as stream:
            reply = stream.get_final_message()
        return [block.model_dump(mode="json", exclude_none=True) for block in reply.content]
    blocks: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for event in client.messages.create(**request, stream=True):
        if event.type == "content_block_start":
            blocks.append(event.content_block.model_dump(mode="json", exclude_none=True))
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            blocks[event.index]["text"] += event.delta.text
        elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            partial[event.index] = partial.get(event.index, "") + event.delta.partial_json
    for index, text in partial.items():
        blocks[index]["input"] = json.loads(text or "{}")
    return blocks


def run_agent(job: dict[str, Any]) -> int:
    import anthropic

    import agentguard
    from agentguard.breaker import BreakerSettings
    from agentguard.budget import BudgetSettings

    kill = install_kill(job.get("kill"))
    if job.get("start_at"):  # agents started together wait for one another
        time.sleep(max(float(job["start_at"]) - time.time(), 0.0))
    project, home = Path(job["project"]), job["home"]
    client = anthropic.Anthropic(
        base_url=job["base_url"],
        api_key="sk-ant-test-agent-child",
        timeout=20.0,
        default_headers={MARKER_HEADER: job["marker"], PID_HEADER: str(os.getpid())},
    )
    options: dict[str, Any] = {
        "policy": {"max_attempts": 8, "base_delay": 0.002, "max_delay": 0.01},
        "breaker": BreakerSettings(open_after=600.0, min_failures=10_000),
        "budget": BudgetSettings(min_retries=100_000),
    }
    second = None
    if job.get("two_clients"):  # a second guarded client in this process: a second store handle
        second = agentguard.wrap(client, project=project, home=home, **options)
    if job.get("resume"):
        run = agentguard.resume(job["resume"], home=home)
        guarded = run.wrap(client, **options)
        messages: list[Any] = list(run.messages)
        pending = [(c["name"], c["input"], c["id"]) for c in run.pending_tool_calls]
    else:
        guarded = agentguard.wrap(client, project=project, home=home, **options)
        messages = [{"role": "user", "content": TASK}]
        pending = []
    _write_json(Path(job["result"] + ".run"), {"run_id": guarded.run_id})
    tools_run = 0

    def execute(calls: list[tuple[str, dict[str, str], str]]) -> None:
        nonlocal tools_run
        results = []
        for name, args, call_id in calls:
            tools_run += 1
            output = run_tool(project, name, args, die_halfway=kill["tool"] == tools_run)
            results.append({"type": "tool_result", "tool_use_id": call_id, "content": output})
        messages.append({"role": "user", "content": results})

    if pending:
        execute(pending)
    steps = 0
    finished = messages[-1]["role"] == "assistant"  # resumed after the final answer
    while not finished:
        mode = tool_results_in(messages) % 3 if job.get("streaming", True) else 0
        request = {
            "model": job["model"],
            "max_tokens": 256,
            "system": SYSTEM,
            "tools": TOOLS,
            "messages": messages,
        }
        blocks = _ask(guarded, mode, request)
        steps += 1
        if second is not None:
            _read_elsewhere(home)
        messages.append({"role": "assistant", "content": blocks})
        calls = [(b["name"], b["input"], b["id"]) for b in blocks if b["type"] == "tool_use"]
        finished = not calls
        if calls:
            execute(calls)
    guarded.close()
    if second is not None:
        second.agentguard.close()
    _write_json(Path(job["result"]), {"run_id": guarded.run_id, "steps": steps})
    return 0


READER = """
import sys, types
pkg = types.ModuleType("agentguard")  # the store alone: `import agentguard` loads the SDKs
pkg.__path__ = [sys.argv[1]]
sys.modules["agentguard"] = pkg
from agentguard.store import Store
store = Store.open(sys.argv[2])
store.query("select count(*) from runs")
store.close()
"""


def _read_elsewhere(home: str) -> None:
    """Another process opens, reads and closes the store (`agentguard runs`, a metrics scrape):
    if this process's locks had been dropped, it would delete the -wal file we write into."""
    import subprocess

    package = str(Path(__file__).resolve().parents[1] / "agentguard")
    subprocess.run([sys.executable, "-c", READER, package, home], check=True)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


# -- the zygote -------------------------------------------------------------------------------


def _child(job: dict[str, Any], zygote_fds: list[int]) -> None:
    """In the forked process: own process group, own output files, run, exit."""
    code = 1
    try:
        os.setpgid(0, 0)
        for fd in zygote_fds:  # its selector and pidfds (never close fds blindly: a Python
            os.close(fd)  # object still owning one would later close whatever reuses it)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        code = run_agent(job)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _send(message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def warm_up(base_url: str) -> None:
    """One whole agent run in the zygote itself, so every lazy import, pydantic validator and
    SQLite/git first-use cost is paid once here rather than in every forked agent."""
    import tempfile
    import threading

    with tempfile.TemporaryDirectory(prefix="agentguard-zygote-") as tmp:
        project = Path(tmp, "project")
        project.mkdir()
        (project / "app.py").write_text("x = 1\n")
        job = {
            "base_url": base_url,
            "project": str(project),
            "home": str(Path(tmp, "home")),
            "marker": "zygote-warm-up",
            "model": "claude-zygote-warm-up",
            "result": str(Path(tmp, "result.json")),
        }
        run_agent(job)
        run_agent({**job, "resume": json.loads(Path(job["result"]).read_text())["run_id"]})
    # Forking a process with threads is unsafe: the run's threads must all be gone.
    assert threading.active_count() == 1, threading.enumerate()


def zygote(warm_up_url: str | None = None) -> None:
    # Everything an agent imports, imported once, before any fork.
    import anthropic  # noqa: F401

    import agentguard
    import agentguard.providers.dispatch
    import agentguard.testing  # noqa: F401

    if warm_up_url:
        warm_up(warm_up_url)
    gc.collect()  # nothing left for a forked agent's collector to finalise (and close)
    gc.freeze()  # and what is left is never scanned (nor copied on write) by one
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, None)
    children: dict[int, tuple[int, str]] = {}  # pidfd -> (pid, job id)
    kill_at: dict[int, float] = {}  # pid -> monotonic deadline
    buffer = b""
    _send({"event": "ready", "pid": os.getpid()})
    while True:
        timeout = max(min(kill_at.values()) - time.monotonic(), 0) if kill_at else None
        for key, _ in selector.select(timeout):
            if key.data is None:
                chunk = os.read(0, 65536)
                if not chunk:  # the test went away: stop, killing what is left
                    for pid, _job in children.values():
                        _killpg(pid)
                    os._exit(0)  # nothing to clean up; interpreter teardown would take long
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    job = json.loads(line)
                    pid = os.fork()
                    if pid == 0:
                        _child(job, [selector.fileno(), *children])
                    with contextlib.suppress(OSError):  # the child may have got there first
                        os.setpgid(pid, pid)
                    pidfd = os.pidfd_open(pid)
                    children[pidfd] = (pid, job["id"])
                    selector.register(pidfd, selectors.EVENT_READ, pid)
                    if job.get("kill_after") is not None:
                        kill_at[pid] = time.monotonic() + float(job["kill_after"])
                    _send({"event": "started", "id": job["id"], "pid": pid})
            else:
                pidfd = key.fd
                pid, job_id = children.pop(pidfd)
                selector.unregister(pidfd)
                os.close(pidfd)
                kill_at.pop(pid, None)
                _killpg(pid)  # before reaping (the pid is still ours): git it left running
                _, status = os.waitpid(pid, 0)
                _send(
                    {
                        "event": "exit",
                        "id": job_id,
                        "pid": pid,
                        "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    }
                )
        now = time.monotonic()
        for pid, deadline in list(kill_at.items()):
            if deadline <= now:
                del kill_at[pid]
                _killpg(pid)


class Zygote:
    """The test's side: start the zygote, hand it jobs, learn how each agent ended."""

    def __init__(self, warm_up_url: str | None = None, startup_timeout: float = 60.0) -> None:
        import queue
        import subprocess
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, __file__, *([warm_up_url] if warm_up_url else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._started: dict[str, int] = {}
        self._exits: dict[str, dict[str, Any]] = {}
        self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
        self._reader.start()
        ready = self._events.get(timeout=startup_timeout)
        if not ready or ready.get("event") != "ready":
            raise RuntimeError(f"the agent zygote did not start: {ready!r}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._events.put(json.loads(line))
        self._events.put(None)

    def _pump(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        import queue

        deadline = time.monotonic() + timeout
        while not done():
            try:
                event = self._events.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise TimeoutError(f"no {what} within {timeout} s") from None
            if event is None:
                raise RuntimeError(f"the agent zygote exited while waiting for {what}")
            if event["event"] == "started":
                self._started[event["id"]] = event["pid"]
            elif event["event"] == "exit":
                self._exits[event["id"]] = event

    def start(self, job: dict[str, Any], timeout: float = 10.0) -> int:
        """Fork an agent for `job` (it needs a unique "id"); returns its pid."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()
        self._pump(lambda: job["id"] in self._started, timeout, f"start of {job['id']}")
        return self._started[job["id"]]

    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """How the agent ended: {"code": N or None, "signal": N or None, "pid": ...}."""
        self._pump(lambda: job_id in self._exits, timeout, f"exit of {job_id}")
        return self._exits[job_id]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    zygote(sys.argv[1] if len(sys.argv) > 1 else None)
