"""Choosing the store, the same way everywhere: `--store` (or `wrap(store_url=)`, a proxy's
`store`) > $AGENTGUARD_STORE > `store` in the config file; "sqlite" or empty is the local file.

The PostgreSQL store is a fresh schema on the test server; what each face wrote is read back
with psycopg, never through agentguard. A URL's password must never reach any output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic
import psycopg
import pytest

import agentguard
from agentguard.cli import STORE_COMMANDS, build_parser, main
from agentguard.commands.common import Context, store_env
from agentguard.commands.proxy import options_from
from agentguard.config import load_config
from agentguard.errors import ConfigError, StoreError
from agentguard.store import DB_NAME, Store
from agentguard.store_choice import STORE_ENV, choose_store, configured_store
from agentguard.store_pg import PostgresStore
from agentguard.testing import FakeProvider, Turn, ok
from tests.conftest import API_KEY, user

MODEL = "claude-opus-4-7"
PASSWORD = "pw-n3ver-sh0wn"


def with_password(url: str) -> str:
    """The test server's URL with a password in it (trust auth: the server never asks)."""
    scheme, rest = url.split("://", 1)
    userinfo, at, hostpart = rest.partition("@")
    assert at and ":" not in userinfo, url
    return f"{scheme}://{userinfo}:{PASSWORD}@{hostpart}"


def run_ids(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r for (r,) in conn.execute("select id from runs order by created_at")]


def listed(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """The run ids `agentguard runs --json ARGS` lists."""
    capsys.readouterr()
    assert main(["runs", "--json", *args]) == 0
    return [r["id"] for r in json.loads(capsys.readouterr().out)["runs"]]


def one_guarded_step(fake: FakeProvider, project: Path, **options: Any) -> str:
    """A run with one served step, written wherever `wrap(**options)` chooses; its id."""
    fake.script(ok(Turn(text="hi")))
    client = agentguard.wrap(
        anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY),
        project=project,
        snapshots=False,
        **options,
    )
    try:
        client.messages.create(model=MODEL, max_tokens=16, messages=[user("hi")])
        return str(client.run_id)
    finally:
        client.agentguard.close()


# -- the rule -------------------------------------------------------------------------------------


def test_explicit_beats_the_environment_beats_the_config_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pg = "postgresql://agentguard@db.internal/agentguard"
    other = "postgresql://agentguard@db2.internal/agentguard"
    config = (pg, "agentguard.toml")
    monkeypatch.delenv(STORE_ENV, raising=False)
    assert choose_store(None) == ""  # nothing anywhere: the local SQLite file
    assert choose_store(None, config) == pg
    assert choose_store(None, ("sqlite", "agentguard.toml")) == ""
    monkeypatch.setenv(STORE_ENV, other)
    assert choose_store(None, config) == other
    assert choose_store(pg, config) == pg
    assert choose_store("sqlite", config) == ""  # the local file, whatever the others say
    assert choose_store("", config) == ""
    monkeypatch.setenv(STORE_ENV, "")  # set but empty: the local file, not the config's
    assert choose_store(None, config) == ""
    monkeypatch.setenv(STORE_ENV, " SQLite ")
    assert choose_store(None, config) == ""


def test_the_config_file_is_read_only_when_nothing_else_decides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[bool] = []

    def config() -> tuple[str, str]:
        asked.append(True)
        return ("mysql://broken", "agentguard.toml")

    monkeypatch.setenv(STORE_ENV, "sqlite")
    assert choose_store(None, config) == "" and not asked  # a broken file does not matter
    monkeypatch.delenv(STORE_ENV)
    assert choose_store("sqlite", config) == "" and not asked
    with pytest.raises(StoreError, match=r"^store in agentguard.toml must be a postgresql://"):
        choose_store(None, config)


def test_the_store_key_in_agentguard_toml_and_pyproject(tmp_path: Path) -> None:
    url = "postgresql://agentguard@db.internal/agentguard"
    (tmp_path / "pyproject.toml").write_text(f'[tool.agentguard]\nstore = "{url}"\n')
    assert load_config(tmp_path)[0].store == url
    assert configured_store(tmp_path) == (url, f"{tmp_path / 'pyproject.toml'} [tool.agentguard]")
    (tmp_path / "agentguard.toml").write_text('snapshots = false\n"store" = "sqlite"\n')
    assert load_config(tmp_path)[0].store == "sqlite"  # agentguard.toml wins, as for every key
    assert configured_store(tmp_path) == ("sqlite", str(tmp_path / "agentguard.toml"))
    (tmp_path / "agentguard.toml").write_text("snapshots = false\n")
    assert configured_store(tmp_path) is None  # the file load_config reads sets no store
    assert configured_store(tmp_path / "nowhere") is None


def test_a_bad_store_in_the_config_file_names_the_file_never_the_value(tmp_path: Path) -> None:
    config = tmp_path / "agentguard.toml"
    config.write_text(f'store = "mysql://me:{PASSWORD}@db/x"\nsnapshots = "yes"\n')
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    message = str(e.value)
    assert message.startswith(f"Invalid config in {config}: 2 problems:")
    assert "store must be a postgresql:// URL" in message and "not a mysql:// URL" in message
    assert PASSWORD not in message
    config.write_text("store = 5\n")
    with pytest.raises(ConfigError, match=r"store must be a postgresql:// URL .*\(got int\)"):
        load_config(tmp_path)


# -- the library ----------------------------------------------------------------------------------


def test_wrap_takes_store_url_and_the_config_files_store(
    postgres_schema_url: str,
    fake: FakeProvider,
    project: Path,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    first = one_guarded_step(fake, project, store_url=postgres_schema_url)
    assert run_ids(postgres_schema_url) == [first]
    assert not (home / DB_NAME).exists()  # nothing went to this machine's SQLite file

    (project / "agentguard.toml").write_text(f'store = "{postgres_schema_url}"\n')
    second = one_guarded_step(fake, project)
    assert run_ids(postgres_schema_url) == [first, second]

    monkeypatch.setenv(STORE_ENV, "sqlite")  # the environment goes over the file
    third = one_guarded_step(fake, project)
    assert run_ids(postgres_schema_url) == [first, second]
    local = Store.open(home)
    assert [r["id"] for r in local.query("select id from runs")] == [third]
    local.close()

    with pytest.raises(StoreError, match=r"^wrap\(store_url=\) must be a postgresql://") as e:
        one_guarded_step(fake, project, store_url=f"mysql://me:{PASSWORD}@db/x")
    assert PASSWORD not in str(e.value)


def test_guard_takes_a_store_url(postgres_schema_url: str, project: Path) -> None:
    guard = agentguard.Guard(project, snapshots=False, store_url=postgres_schema_url)
    try:
        assert isinstance(guard.store, PostgresStore)
        assert run_ids(postgres_schema_url) == [guard.run_id]
    finally:
        guard.close()


# -- the commands ---------------------------------------------------------------------------------


def test_every_command_that_opens_the_store_takes_store() -> None:
    parser = build_parser()
    needs = {
        "show": ["RUN"],
        "diff": ["RUN"],
        "restore": ["RUN", "--undo"],
        "metrics": ["--port", "0"],
    }
    names = [module.NAME for module in STORE_COMMANDS]
    assert set(names) == {
        "runs", "show", "stats", "metrics", "resume", "restore", "diff", "gc",
        "statusline", "run", "proxy", "watch",
    }  # fmt: skip
    for name in names:
        args = parser.parse_args([name, *needs.get(name, []), "--store", "postgresql://h/db"])
        assert args.store == "postgresql://h/db", name
    with pytest.raises(SystemExit):  # the demo keeps its own store
        parser.parse_args(["demo", "--store", "postgresql://h/db"])


def test_store_on_a_command_reads_postgresql_and_the_default_does_not(
    postgres_schema_url: str,
    fake: FakeProvider,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    shared = one_guarded_step(fake, project, store_url=postgres_schema_url)
    local = one_guarded_step(fake, project)
    assert listed(capsys, "--store", postgres_schema_url) == [shared]
    assert listed(capsys) == [local]

    assert main(["show", shared[:8], "--store", postgres_schema_url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run"]["id"] == shared and len(shown["steps"]) == 1
    assert main(["stats", "--since", "all", "--json", "--store", postgres_schema_url]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert (figures["steps"], figures["steps_ok"]) == (1, 1)

    monkeypatch.setenv(STORE_ENV, postgres_schema_url)
    assert listed(capsys, "--store", "sqlite") == [local]  # --store goes over the environment


def test_the_config_file_of_the_current_folder_chooses_for_the_commands(
    postgres_schema_url: str,
    fake: FakeProvider,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    shared = one_guarded_step(fake, project, store_url=postgres_schema_url)
    (project / "agentguard.toml").write_text(
        f'store = "{with_password(postgres_schema_url)}"\n'
        'chain = ["nowhere:x"]\n'  # a bad key the commands do not read is not theirs to refuse
    )
    monkeypatch.chdir(project)
    assert listed(capsys) == [shared]
    assert main(["show", "no-such-run"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("agentguard: No run 'no-such-run' in postgresql://")
    assert PASSWORD not in out + err
    monkeypatch.setenv(STORE_ENV, "sqlite")
    assert listed(capsys) == []


def test_resume_from_a_store_given_by_store_says_so_in_its_snippet(
    postgres_schema_url: str,
    fake: FakeProvider,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The snippet's `agentguard.resume()` opens the store the environment names: a run found
    through --store comes with a first line naming its store (without the password)."""
    monkeypatch.delenv(STORE_ENV, raising=False)
    url = with_password(postgres_schema_url)
    run_id = one_guarded_step(fake, project, store_url=url)
    capsys.readouterr()
    assert main(["resume", run_id, "--no-restore", "--json", "--store", url]) == 0
    out, err = capsys.readouterr()
    first, _, rest = json.loads(out)["snippet"].partition("\n")
    assert first.startswith("# this run is in postgresql://root@")
    assert first.endswith(": set $AGENTGUARD_STORE to that store's URL first")
    assert rest.startswith("import agentguard\n") and PASSWORD not in out + err
    monkeypatch.setenv(STORE_ENV, url)  # the environment names it already: nothing to add
    assert main(["resume", run_id, "--no-restore", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["snippet"].startswith("import agentguard\n")


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("--store", "agentguard: --store must be a postgresql:// URL"),
        ("env", "agentguard: $AGENTGUARD_STORE must be a postgresql:// URL"),
        ("config", "agentguard: store in "),
    ],
)
def test_a_bad_store_is_one_sentence_without_the_value(
    where: str,
    expected: str,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = f"mysql://me:{PASSWORD}@db.internal/agentguard"
    args = ["runs"]
    monkeypatch.delenv(STORE_ENV, raising=False)
    if where == "--store":
        args += ["--store", bad]
    elif where == "env":
        monkeypatch.setenv(STORE_ENV, bad)
    else:
        (project / "agentguard.toml").write_text(f'store = "{bad}"\n')
        monkeypatch.chdir(project)
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(expected) and err.count("\n") == 1, err
    assert "not a mysql:// URL" in err and PASSWORD not in err


def test_a_bad_or_unreachable_store_as_a_process_has_no_traceback(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "AGENTGUARD_HOME": str(tmp_path / "home")}
    for url, says in (
        (f"mysql://me:{PASSWORD}@db/x", "agentguard: --store must be a postgresql:// URL"),
        (f"postgresql://me:{PASSWORD}@127.0.0.1:1/x", "agentguard: agentguard cannot reach"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "agentguard.cli", "runs", "--store", url],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.startswith(says) and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr and PASSWORD not in done.stderr


def test_the_password_never_appears_in_any_output(
    postgres_schema_url: str,
    fake: FakeProvider,
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv(STORE_ENV, raising=False)
    url = with_password(postgres_schema_url)
    run_id = one_guarded_step(fake, project, store_url=url)
    capsys.readouterr()
    for args in (
        ["runs"],
        ["runs", "--json"],
        ["show", run_id],
        ["show", run_id, "--json"],
        ["stats", "--since", "all"],
        ["gc", "--dry-run"],
        ["show", "no-such-run"],
        ["diff", "no-such-run"],
    ):
        main([*args, "--store", url])
        out, err = capsys.readouterr()
        assert PASSWORD not in out + err, args
        assert out or err, args


# -- the proxy and `agentguard run` ---------------------------------------------------------------


def test_the_proxy_options_carry_the_chosen_store(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql://agentguard@db.internal/agentguard"
    monkeypatch.delenv(STORE_ENV, raising=False)
    parse = build_parser().parse_args
    options = options_from(Context(home=None, store_flag=url), parse(["proxy", "--store", url]))
    assert options.store == url
    assert options_from(Context(home=None), parse(["proxy"])).store == ""
    (project / "agentguard.toml").write_text(f'store = "{url}"\n')  # the --project's config
    assert (
        options_from(Context(home=None), parse(["proxy", "--project", str(project)])).store == url
    )
    monkeypatch.setenv(STORE_ENV, "sqlite")
    assert options_from(Context(home=None), parse(["proxy", "--project", str(project)])).store == ""


def test_the_child_is_told_the_store_only_when_its_environment_would_not_say_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql://agentguard@db.internal/agentguard"
    monkeypatch.delenv(STORE_ENV, raising=False)
    assert store_env("") == {}
    assert store_env(None) == {}
    assert store_env(url) == {STORE_ENV: url}  # from --store or the project's config
    monkeypatch.setenv(STORE_ENV, url)
    assert store_env(url) == {}
    assert store_env("") == {STORE_ENV: "sqlite"}  # --store sqlite over the environment


def test_agentguard_run_with_store_records_the_run_in_postgresql(
    postgres_schema_url: str, fake: FakeProvider, project: Path, home: Path
) -> None:
    """`agentguard run --store URL -- CHILD`: the proxy writes the child's calls to PostgreSQL,
    and the child (so the status line Claude Code would run under it) reads the same store."""
    fake.script(ok(Turn(text="from the child")))
    session = json.dumps({"session_id": "unknown", "workspace": {"current_dir": str(project)}})
    child = (
        "import json, os, subprocess, sys, anthropic\n"
        "c = anthropic.Anthropic()\n"
        f"m = c.messages.create(model='{MODEL}', max_tokens=9,"
        " messages=[{'role': 'user', 'content': 'hi'}])\n"
        "line = subprocess.run([sys.executable, '-m', 'agentguard.commands.statusline'],"
        f" input={session!r}, capture_output=True, text=True).stdout\n"
        "print(json.dumps({'text': m.content[0].text, 'line': line,"
        " 'store': os.environ.get('AGENTGUARD_STORE')}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "AGENTGUARD_HOME": str(home), "ANTHROPIC_API_KEY": API_KEY}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "agentguard.cli", "run", "--project", str(project)),
            *("--store", postgres_schema_url, "--upstream", fake.base_url),
            *("--", sys.executable, "-c", child),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {
        "text": "from the child",
        "line": "agentguard ✓ opus-4-7\n",
        "store": postgres_schema_url,
    }
    with psycopg.connect(postgres_schema_url) as conn:
        runs = conn.execute("select id, project, status from runs").fetchall()
        steps = conn.execute("select served_model, status from steps").fetchall()
    assert [(p, s) for _, p, s in runs] == [(str(project), "completed")]
    assert steps == [(MODEL, "ok")]
    assert not (home / DB_NAME).exists()  # nothing went to this machine's SQLite file
