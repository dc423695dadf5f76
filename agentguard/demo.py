"""`agentguard demo`: the whole story offline, on this machine, in about ten seconds.

A temporary git project with a failing test; the fake provider on 127.0.0.1 with a scripted
"model" that fixes the bug through real tool calls; and an overload storm scripted step by step
so the run visibly goes through 529 retries, a tier fallback (Opus → Sonnet), a provider
fallback (→ an OpenAI-compatible route, the working tree verified first) and back to the
primary. The agent is the example agent's own loop (`examples/coding_agent.py`), not a toy.

The demo is local whatever $AGENTGUARD_STORE (or a config file's `store`) says: its run goes to
this machine's SQLite store (under `home`), never to a fleet's shared PostgreSQL store, where
its fake 529 storm would count against the real route names (the shared breaker, retry budget
and held retries, and the team's `stats`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from agentguard.breaker import BreakerSettings
from agentguard.home import ensure_home, home_dir
from agentguard.store import Store
from agentguard.store_choice import LOCAL
from agentguard.testing import FakeProvider, RecordedRequest, ToolCall, Turn, overloaded

PRIMARY, TIER, GATEWAY = "claude-opus-4-7", "claude-sonnet-4-6", "deepseek-v4-pro"
DEMO_KEY_VAR = "AGENTGUARD_DEMO_KEY"  # the fake provider accepts any key; this one is not secret
BUGGY = 'def add(a, b):\n    """Add two numbers."""\n    return a - b\n'
TEST = (
    "import unittest\n\nfrom calc import add\n\n\n"
    "class AddTest(unittest.TestCase):\n"
    "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n\n"
    'if __name__ == "__main__":\n    unittest.main()\n'
)
# Faults per step: (model, how many 529s). Step 2 retries; 3 falls back a tier; 4 falls back
# to another provider; 5 and 6 are back on the primary.
STORM: dict[int, list[tuple[str, int]]] = {
    2: [(PRIMARY, 2)],
    3: [(PRIMARY, 3)],
    4: [(PRIMARY, 3), (TIER, 3)],
}
_TREE_EVENTS = {
    "tree_verified": "working tree verified against the checkpoint before the route change",
    "drift_restored": "working tree had changed: kept in the shadow store, checkpoint restored",
}
DEMO_POLICY = {"preset": "coding_agent", "max_attempts": 3, "base_delay": 0.1, "max_delay": 0.4}


@dataclass
class DemoResult:
    run_id: str
    project: Path
    home: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    tests_pass: bool = False
    test_output: str = ""


def load_example_agent() -> ModuleType:
    """The example agent's module: from the source checkout, or the copy shipped in the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (
        here.parent / "examples" / "coding_agent.py",
        here / "_examples" / "coding_agent.py",
    ):
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location("agentguard_example_agent", candidate)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            return module
    raise FileNotFoundError(
        "The example agent (examples/coding_agent.py) is missing from this installation; "
        "reinstall agentguard or run the demo from its source checkout."
    )


def demo_project(home: str | os.PathLike[str] | None) -> Path:
    """Where the demo's project lives when no --workdir is given: in the agentguard data
    folder, beside the run it belongs to (so `diff` and `restore` work on it afterwards),
    never in a temporary folder left behind. The next demo replaces it."""
    folder = ensure_home(home_dir(home)) / "demo" / "calc-project"
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def make_project(folder: Path) -> Path:
    """A small git project whose one test fails until add() adds."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "calc.py").write_text(BUGGY)
    (folder / "test_calc.py").write_text(TEST)
    (folder / ".gitignore").write_text("__pycache__/\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env |= {
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "demo",
        "GIT_AUTHOR_EMAIL": "demo@example.invalid",
        "GIT_COMMITTER_NAME": "demo",
        "GIT_COMMITTER_EMAIL": "demo@example.invalid",
    }
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "calc"]):
        subprocess.run(["git", *args], cwd=folder, env=env, check=True, capture_output=True)
    return folder


def test_command() -> str:
    return f"{shlex.quote(sys.executable)} -m unittest -q test_calc"


def fixing_model(request: RecordedRequest) -> Turn:
    """The scripted model: look, read, run the test, fix, run it again, report."""
    done = _tool_names(request.body)
    if "list_files" not in done:
        return Turn(text="Let me look at the project.", tool_calls=[ToolCall("list_files", {})])
    if "read_file" not in done:
        return Turn(text="", tool_calls=[ToolCall("read_file", {"path": "calc.py"})])
    if done.count("run_command") == 0:
        return Turn(
            text="Running the tests first.",
            tool_calls=[ToolCall("run_command", {"command": test_command()})],
        )
    if "edit_file" not in done:
        return Turn(
            text="add() subtracts; fixing it.",
            tool_calls=[
                ToolCall(
                    "edit_file",
                    {"path": "calc.py", "old_string": "return a - b", "new_string": "return a + b"},
                )
            ],
        )
    if done.count("run_command") == 1:
        return Turn(text="", tool_calls=[ToolCall("run_command", {"command": test_command()})])
    return Turn(text="Fixed: add() returned a - b; it now returns a + b and the test passes.")


def _tool_names(body: dict[str, Any]) -> list[str]:
    """Tool calls made so far, in either wire format."""
    names: list[str] = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            names += [b.get("name") for b in content if b.get("type") == "tool_use"]
        for call in message.get("tool_calls") or []:
            names.append(call["function"]["name"])
    return names


@contextmanager
def _narrated(echo: Callable[[str], None]) -> Iterator[None]:
    """Show agentguard's own attempt log as part of the story, indented."""

    class Echo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            echo("    · " + record.getMessage().removeprefix("agentguard: "))

    logger = logging.getLogger("agentguard")
    handler, propagate, level = Echo(), logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)


def script_storm(fake: FakeProvider, step: int) -> None:
    for model, count in STORM.get(step, []):
        fake.script(*[overloaded() for _ in range(count)], model=model)


def run_demo(
    *,
    home: str | os.PathLike[str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo headless and return what happened (the store has every detail)."""
    import anthropic

    import agentguard

    example = load_example_agent()
    project = make_project(Path(workdir) / "calc-project" if workdir else demo_project(home))
    os.environ.setdefault(DEMO_KEY_VAR, "demo-key-not-secret")
    with FakeProvider(model=fixing_model) as fake:
        gateway = {
            "provider": "deepseek",
            "model": GATEWAY,
            "base_url": fake.openai_base_url,
            "api_key_env": DEMO_KEY_VAR,
        }
        client = agentguard.wrap(
            anthropic.Anthropic(base_url=fake.base_url, api_key="demo-key-not-secret"),
            project=project,
            run="demo: fix add()",
            home=home,
            store_url=LOCAL,  # this machine's SQLite file, whatever $AGENTGUARD_STORE says
            policy=DEMO_POLICY,
            chain=[f"anthropic:{PRIMARY}", f"anthropic:{TIER}", gateway],
            on_substitution=lambda info: echo(
                f"  ! step {info.step} served by {info.served_model} instead of "
                f"{info.requested_model}: {info.reason}"
            ),
            # the demo's storm is seconds long; keep the breaker out of its way
            breaker=BreakerSettings(open_after=60.0),
        )

        def on_step(number: int, reply: Any) -> None:
            info = agentguard.info(reply)
            tries = len(info.attempts)
            echo(f"  step {number}: {info.served_model} ({tries} attempt{'s' * (tries > 1)})")
            script_storm(fake, number + 1)

        echo(f"agentguard demo — project {project}")
        script_storm(fake, 1)
        with _narrated(echo):
            example.run_agent(
                client, "Make the tests pass.", project, model=PRIMARY, on_step=on_step
            )
        client.close()
        run_id = client.run_id
    store = Store.open(home)
    try:
        steps = store.steps(run_id)
    finally:
        store.close()
    done = subprocess.run(
        shlex.split(test_command()), cwd=project, capture_output=True, text=True, check=False
    )
    return DemoResult(
        run_id=run_id,
        project=project,
        home=store.home,
        steps=steps,
        tests_pass=done.returncode == 0,
        test_output=(done.stdout + done.stderr).strip(),
    )


def summary(
    result: DemoResult,
    *,
    show: str = "agentguard show RUN",
    watch: str = "agentguard watch",
) -> str:
    """What a person should take away, readable without the TUI; `show` and `watch` are the
    commands to name at the end (RUN: the run's id), as they work where the person stands."""
    store = Store.open(result.home)
    lines = [f"run {result.run_id} in {result.project}", ""]
    for step in result.steps:
        attempts = store.attempts(step["id"])
        trail = " ".join(
            f"{a['model'].removeprefix('claude-')}:{a['status_code'] or a['error_type']}"
            for a in attempts
        )
        line = f"step {step['number']}: served by {step['served_model']:<18} {trail}"
        lines.append(line)
        if step["substituted"]:
            lines.append(f"        substituted — {step['reason']}")
        for event in store.query(
            "select kind from events where step_id = ? and kind in (?, ?) order by id",
            [step["id"], "tree_verified", "drift_restored"],
        ):
            lines.append(f"        {_TREE_EVENTS[event['kind']]}")
    verdict = "PASS" if result.tests_pass else "FAIL"
    lines += ["", f"project test: {verdict} ({result.test_output.splitlines()[-1]})"]
    lines.append(f"see it all: {show.replace('RUN', result.run_id)}   or   {watch}")
    return "\n".join(lines)
