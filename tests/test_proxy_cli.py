"""`agentguard proxy` and `agentguard run` from the command line."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic

from agentguard.cli import main
from agentguard.store import Store
from agentguard.testing import FakeProvider, Turn, ok, overloaded
from tests.conftest import API_KEY
from tests.test_secrets import assert_stored_nowhere


def test_a_port_in_use_is_one_sentence(project: Path, capsys) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["proxy", "--listen", f"127.0.0.1:{port}", "--project", str(project)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"agentguard: Port {port} on 127.0.0.1 is already in use; stop what listens there or "
        "pick another port with --listen.\n"
    )


def test_a_non_loopback_listen_needs_allow_remote(project: Path, capsys) -> None:
    code = main(["proxy", "--listen", "0.0.0.0:0", "--project", str(project)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("agentguard: --listen 0.0.0.0:0 is not a loopback address")
    assert err.count("\n") == 1 and "--allow-remote" in err


def run_python_child(
    fake: FakeProvider, project: Path, home: Path, child: str
) -> subprocess.CompletedProcess[str]:
    """`agentguard run --upstream FAKE -- python -c CHILD` with the client key in its
    environment, as a person would start it."""
    env = {"PATH": "/usr/bin:/bin", "AGENTGUARD_HOME": str(home), "ANTHROPIC_API_KEY": API_KEY}
    return subprocess.run(
        [
            *(sys.executable, "-m", "agentguard.cli", "run", "--project", str(project)),
            *("--upstream", fake.base_url, "--", sys.executable, "-c", child),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_passes_the_proxy_to_the_child_and_its_exit_code_back(
    fake: FakeProvider, project: Path, home: Path
) -> None:
    fake.script(ok(Turn(text="from the child")))
    child = (
        "import os, sys, json, anthropic\n"
        "c = anthropic.Anthropic()\n"
        "m = c.messages.create(model='claude-opus-4-7', max_tokens=9,"
        " messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(json.dumps({'a': os.environ['ANTHROPIC_BASE_URL'],"
        " 'o': os.environ['OPENAI_BASE_URL'], 't': m.content[0].text}))\n"
        "sys.exit(7)\n"
    )
    done = run_python_child(fake, project, home, child)
    assert done.returncode == 7, done.stderr
    seen = json.loads(done.stdout)
    assert seen["a"].startswith("http://127.0.0.1:")
    assert seen["o"] == seen["a"] + "/v1"
    assert seen["t"] == "from the child"
    assert len(fake.requests) == 1
    assert_stored_nowhere(home, API_KEY)


def test_run_without_a_command_is_refused(project: Path, capsys) -> None:
    assert main(["run", "--project", str(project)]) == 2
    assert "agentguard run -- claude" in capsys.readouterr().err


def test_ctrl_c_stops_the_proxy_cleanly_and_closes_its_runs(
    fake: FakeProvider, project: Path, home: Path
) -> None:
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "agentguard.cli", "proxy", "--listen", "127.0.0.1:0"),
            *("--project", str(project), "--upstream", fake.base_url),
        ],
        env={"PATH": "/usr/bin:/bin", "AGENTGUARD_HOME": str(home), "COLUMNS": "300"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        banner = server.stderr.readline()
        url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        client = anthropic.Anthropic(base_url=url, api_key=API_KEY)
        message = client.messages.create(
            model="claude-opus-4-7", max_tokens=9, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].text == "ok"
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
        assert server.stderr.read() == ""
    finally:
        if server.poll() is None:
            server.kill()
    store = Store.open(home)
    assert [r["status"] for r in store.query("select status from runs")] == ["completed"]


def test_a_bad_policy_or_chain_is_refused_before_listening(project: Path, capsys) -> None:
    assert (
        main(["proxy", "--listen", "127.0.0.1:0", "--project", str(project), "--policy", "x"]) == 2
    )
    assert capsys.readouterr().err.startswith("agentguard: ")
    code = main(["proxy", "--listen", "127.0.0.1:0", "--project", str(project), "--chain", "nope"])
    assert code == 2
    assert "provider:model" in capsys.readouterr().err


# -- `agentguard run -- claude` turns on agentguard's status line ------------------------------


def fake_claude(folder: Path) -> Path:
    """An executable named `claude` that prints the arguments it was given, as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "claude"
    script.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    script.chmod(0o755)
    return script


def run_child(
    project: Path, home: Path, user_home: Path, *command: str, fake: FakeProvider
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "AGENTGUARD_HOME": str(home),
        "HOME": str(user_home),
        "COLUMNS": "300",
    }
    return subprocess.run(
        [
            *(sys.executable, "-m", "agentguard.cli", "run", "--project", str(project)),
            *("--upstream", fake.base_url, "--", *command),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_run_claude_gets_agentguards_status_line_with_settings(
    fake: FakeProvider, project: Path, home: Path, tmp_path: Path
) -> None:
    claude = fake_claude(tmp_path / "bin")
    done = run_child(project, home, tmp_path / "user", str(claude), "-p", "hi", fake=fake)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    argv = json.loads(done.stdout)
    assert argv[0] == "--settings" and argv[2:] == ["-p", "hi"]  # before any `--` of the user's
    line = json.loads(argv[1])["statusLine"]
    assert (line["type"], line["refreshInterval"]) == ("command", 2)
    assert line["command"].startswith(f"{sys.executable} -m agentguard.commands.statusline --home")
    # The command works as Claude Code runs it: through a shell, the session JSON on stdin.
    shown = subprocess.run(
        line["command"],
        shell=True,
        input=json.dumps({"session_id": "nothing-yet", "workspace": {"current_dir": "/none"}}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (shown.returncode, shown.stdout) == (0, "agentguard\n")
    assert not fake.requests


def test_run_claude_leaves_a_status_line_of_the_users_own_and_says_what_to_add(
    fake: FakeProvider, project: Path, home: Path, tmp_path: Path
) -> None:
    claude = fake_claude(tmp_path / "bin")
    user = tmp_path / "user"
    (user / ".claude").mkdir(parents=True)
    mine = {"statusLine": {"type": "command", "command": "my-line"}}
    (user / ".claude" / "settings.json").write_text(json.dumps(mine))
    done = run_child(project, home, user, str(claude), "-p", "hi", fake=fake)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["-p", "hi"]
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(
        f"agentguard: {user / '.claude' / 'settings.json'} has a statusLine of its own; "
        'to see agentguard\'s, set it to {"type": "command", "command": '
    )
    assert "agentguard.commands.statusline" in done.stderr


def test_a_projects_own_status_line_or_a_settings_argument_is_left_alone(
    project: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from agentguard.commands.common import Context
    from agentguard.commands.run import with_statusline

    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("CLAUDE_CONFIG_DIR", raising=False)
    monkeypatch.chdir(project)
    ctx = Context(home=str(tmp_path / "ag"))
    assert with_statusline(ctx, ["python", "x.py"], project) == ["python", "x.py"]
    assert with_statusline(ctx, ["claude", "--settings", "s.json"], project) == [
        "claude",
        "--settings",
        "s.json",
    ]
    assert "you pass --settings" in capsys.readouterr().err
    turned_on = with_statusline(ctx, ["/opt/bin/claude"], project)
    assert turned_on[:2] == ["/opt/bin/claude", "--settings"]
    (project / ".claude").mkdir()
    (project / ".claude" / "settings.local.json").write_text('{"statusLine": {"type": "x"}}')
    assert with_statusline(ctx, ["claude"], project) == ["claude"]
    assert "settings.local.json has a statusLine of its own" in capsys.readouterr().err
    (project / ".claude" / "settings.local.json").write_text("{broken")  # Claude Code's to report
    assert with_statusline(ctx, ["claude"], project)[1] == "--settings"


def test_run_keeps_agentguards_messages_off_the_childs_terminal(
    fake: FakeProvider, project: Path, home: Path
) -> None:
    """The child owns the terminal (Claude Code draws its UI there): a retry's warning goes
    to the log file, never to stderr."""
    (project / "agentguard.toml").write_text(
        'policy = { preset = "coding_agent", base_delay = 0.001, max_delay = 0.005 }\n'
    )
    fake.script(overloaded(), ok(Turn(text="after a retry")))
    child = (
        "import anthropic\n"
        "c = anthropic.Anthropic(max_retries=0)\n"
        "m = c.messages.create(model='claude-opus-4-7', max_tokens=9,"
        " messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print(m.content[0].text)\n"
    )
    done = run_python_child(fake, project, home, child)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "after a retry\n"
    assert "agentguard" not in done.stderr and "529" not in done.stderr
    log = (home / "logs" / "run.log").read_text()
    assert "attempt 1" in log and "529 overloaded_error" in log
    assert API_KEY not in log


def test_hold_and_ping_interval_reach_the_proxy_options(project: Path) -> None:
    from agentguard.cli import build_parser
    from agentguard.commands.common import Context
    from agentguard.commands.proxy import options_from

    args = build_parser().parse_args(
        ["proxy", "--project", str(project), "--hold", "0", "--ping-interval", "2.5"]
    )
    options = options_from(Context(home=None), args)
    assert (options.hold, options.ping_interval) == (0.0, 2.5)
    default = options_from(Context(home=None), build_parser().parse_args(["proxy"]))
    assert default.hold is None


def test_a_bad_hold_or_ping_interval_is_one_sentence(project: Path, capsys) -> None:
    for flag, value in (("--hold", "-1"), ("--hold", "soon"), ("--ping-interval", "0")):
        code = main(["proxy", "--project", str(project), flag, value, "--listen", "127.0.0.1:0"])
        err = capsys.readouterr().err
        assert code == 2
        assert (
            err.startswith(f"agentguard: {flag} takes a number of seconds") and err.count("\n") == 1
        ), err


def test_policy_fields_on_the_command_line_go_over_the_config_files_policy(project: Path) -> None:
    """`--policy PRESET,FIELD=VALUE`: a preset and fields over it; fields alone go over the
    policy agentguard.toml names."""
    from agentguard.cli import build_parser
    from agentguard.commands.common import Context
    from agentguard.commands.proxy import options_from
    from agentguard.policy import resolve_policy

    def policy(*argv: str) -> Any:
        args = build_parser().parse_args(["proxy", "--project", str(project), *argv])
        return resolve_policy(options_from(Context(home=None), args).policy)

    chosen = policy("--policy", "batch,substitution=announce,step_deadline=60")
    assert (chosen.name, chosen.substitution, chosen.step_deadline) == (
        "batch",
        "announce",
        60,
    )
    (project / "agentguard.toml").write_text('policy = "batch"\n')
    over_config = policy("--policy", "max_attempts=2")
    assert (over_config.name, over_config.max_attempts) == ("batch", 2)
    assert policy().name == "batch"


def test_a_bad_policy_field_is_one_sentence_naming_it(project: Path, capsys) -> None:
    for value, says in (
        ("substitution=sometimes", "substitution must be one of"),
        ("coding_agent,retries=3", "unknown field 'retries'"),
        ("coding_agent,batch", "name one preset at most"),
        ("=3", "has no field name"),
        ("max_attempts=lots", "max_attempts"),
    ):
        argv = ["proxy", "--project", str(project), "--policy", value, "--listen", "127.0.0.1:0"]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, value
        assert err.startswith("agentguard: ") and says in err and err.count("\n") == 1, err
