"""A small but real Claude Code-style coding agent, guarded by agentguard.

    ANTHROPIC_API_KEY=... python examples/coding_agent.py --project ./myrepo "make the tests pass"
    python examples/coding_agent.py --chain anthropic:claude-opus-4-7 anthropic:claude-sonnet-4-6 \
        --policy coding_agent --project . "fix the failing test"

The loop: send the conversation with the tools, run every tool the model asks for inside the
project folder, send the results back, until the model stops asking. Every model call goes
through `agentguard.wrap`, so overload is retried, fallbacks are recorded and announced, and
the conversation and the working tree are checkpointed before each call.

`agentguard demo` runs this same loop against the offline fake provider.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM = (
    "You are a careful coding agent working in a git repository. Use the tools to read, edit "
    "and test the code. Make the smallest change that fixes the problem, run the tests, and "
    "stop when they pass."
)
MAX_OUTPUT = 20_000  # characters of a tool result sent back to the model

TOOLS: list[dict[str, Any]] = [
    {
        "name": "list_files",
        "description": "List the files under a folder of the project (default: the root).",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "folder, relative"}},
        },
    },
    {
        "name": "read_file",
        "description": "Read a text file of the project.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}},
            "required": ["path"],
        },
    },
    {
        "name": "write_file",
        "description": "Create or overwrite a text file of the project.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
    {
        "name": "edit_file",
        "description": "Replace one exact occurrence of old_string with new_string in a file.",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "old_string": {"type": "string"},
                "new_string": {"type": "string"},
            },
            "required": ["path", "old_string", "new_string"],
        },
    },
    {
        "name": "run_command",
        "description": "Run a shell command in the project folder (with a timeout).",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
        },
    },
]


class ToolError(Exception):
    """A tool call the agent refuses or cannot carry out; its message goes back to the model."""


@dataclass
class Tools:
    """The agent's hands, confined to one project folder."""

    root: Path
    timeout: float = 60.0

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    def resolve(self, path: str) -> Path:
        """A path inside the project, or a ToolError: the agent never touches anything else."""
        target = (self.root / path).resolve()
        if target != self.root and self.root not in target.parents:
            raise ToolError(f"{path} is outside the project folder; use a path inside it.")
        return target

    def list_files(self, path: str = ".") -> str:
        folder = self.resolve(path)
        if not folder.is_dir():
            raise ToolError(f"{path} is not a folder.")
        names = sorted(
            str(p.relative_to(self.root))
            for p in folder.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(self.root).parts
        )
        return "\n".join(names) or "(empty)"

    def read_file(self, path: str) -> str:
        target = self.resolve(path)
        if not target.is_file():
            raise ToolError(f"{path} does not exist.")
        return target.read_text(encoding="utf-8", errors="replace")

    def write_file(self, path: str, content: str) -> str:
        target = self.resolve(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        return f"wrote {len(content)} characters to {path}"

    def edit_file(self, path: str, old_string: str, new_string: str) -> str:
        text = self.read_file(path)
        count = text.count(old_string)
        if count != 1:
            raise ToolError(
                f"old_string occurs {count} times in {path}; it must occur exactly once."
            )
        self.resolve(path).write_text(text.replace(old_string, new_string), encoding="utf-8")
        return f"edited {path}"

    def run_command(self, command: str) -> str:
        try:
            done = subprocess.run(
                command,
                shell=True,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired:
            raise ToolError(f"`{command}` did not finish within {self.timeout:g} s.") from None
        return f"exit code {done.returncode}\n{done.stdout}{done.stderr}"

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """(output, is_error) for one tool call."""
        handler: Callable[..., str] | None = getattr(self, name, None)
        if name not in {tool["name"] for tool in TOOLS} or handler is None:
            return f"unknown tool {name}", True
        try:
            output = handler(**arguments)
        except ToolError as exc:
            return str(exc), True
        except (OSError, TypeError, UnicodeError) as exc:
            return f"{type(exc).__name__}: {exc}", True
        return output[:MAX_OUTPUT], False


@dataclass
class Transcript:
    """What happened, for a person to read afterwards."""

    steps: int = 0
    tool_calls: list[str] = field(default_factory=list)
    final_text: str = ""


def run_agent(
    client: Any,
    task: str,
    project: Path,
    *,
    model: str = "claude-opus-4-7",
    max_steps: int = 30,
    messages: list[dict[str, Any]] | None = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> Transcript:
    """The agent loop: model call → tool calls → model call … until no tool is asked for."""
    tools = Tools(project)
    conversation = messages or [{"role": "user", "content": task}]
    transcript = Transcript()
    for _ in range(max_steps):
        reply = client.messages.create(
            model=model, max_tokens=4096, system=SYSTEM, tools=TOOLS, messages=conversation
        )
        transcript.steps += 1
        if on_step is not None:
            on_step(transcript.steps, reply)
        conversation = [*conversation, {"role": "assistant", "content": reply.content}]
        calls = [block for block in reply.content if block.type == "tool_use"]
        texts = [block.text for block in reply.content if block.type == "text"]
        transcript.final_text = "\n".join(texts) or transcript.final_text
        if not calls:
            break
        results = []
        for call in calls:
            output, is_error = tools.call(call.name, dict(call.input))
            transcript.tool_calls.append(call.name)
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": call.id,
                    "content": output,
                    "is_error": is_error,
                }
            )
        conversation = [*conversation, {"role": "user", "content": results}]
    return transcript


def main(argv: list[str] | None = None) -> int:
    import anthropic

    import agentguard

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="what the agent should do")
    parser.add_argument("--project", default=".", help="the folder the agent works in")
    parser.add_argument("--model", default="claude-opus-4-7")
    parser.add_argument("--chain", nargs="*", default=None, help="fallback routes, in order")
    parser.add_argument("--policy", default=None, help="a policy preset (default coding_agent)")
    parser.add_argument("--run", default=None, help="a name for the run")
    parser.add_argument("--max-steps", type=int, default=30)
    args = parser.parse_args(argv)

    def announce(info: agentguard.StepInfo) -> None:
        print(
            f"[agentguard] step {info.step} served by {info.served_model} instead of "
            f"{info.requested_model}: {info.reason}",
            file=sys.stderr,
        )

    client = agentguard.wrap(
        anthropic.Anthropic(),
        project=args.project,
        run=args.run,
        policy=args.policy,
        chain=args.chain,
        on_substitution=announce,
    )
    try:
        transcript = run_agent(
            client, args.task, Path(args.project), model=args.model, max_steps=args.max_steps
        )
    except agentguard.StepFailed as exc:
        print(f"agentguard: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(transcript.final_text)
    print(f"({transcript.steps} steps, run {client.run_id})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
