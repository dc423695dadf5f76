"""Secrets never persist: not in the database (its decompressed rows), not in any shadow object.

Real anthropic SDK against the fake provider, real SQLite file, real git stores; the checks read
where secrets hide (every row, zlib-decompressed; every object of every shadow store via
`git cat-file --batch-all-objects --batch`) and, as a last net, every file's raw bytes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import anthropic
import pytest

import agentguard
from agentguard.conversation import DROPPED_KEY
from agentguard.snapshots import DEFAULT_SECRET_FILES, ShadowRepo
from agentguard.store import Store, unpack
from tests.conftest import API_KEY, git, user

MODEL = "claude-opus-4-7"
SECRET = "sk-live-SECRET-IN-A-PARAMETER-3b9d1f7a"
FILE_SECRET = "TOKEN=FILE-SECRET-NEVER-STORED-91c4e2"

# One file per built-in pattern, each holding the secret.
SECRET_FILES = {
    ".env": ".env",
    ".env.*": "config/.env.production",
    "*.pem": "certs/server.pem",
    "*.key": "deploy.key",
    "id_rsa*": "keys/id_rsa.pub",
    ".npmrc": ".npmrc",
    ".pypirc": ".pypirc",
    ".netrc": "home/.netrc",
}


# -- looking where secrets hide ---------------------------------------------------------------


def database_text(db: Path) -> str:
    """Every value of every row of every table, zlib-stored JSON decompressed."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        values: list[str] = []
        for table in tables:
            for row in conn.execute(f'select * from "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        values.append(unpack(value))
                    elif value is not None:
                        values.append(str(value))
        return "\n".join(values)
    finally:
        conn.close()


def shadow_objects(*stores: Path) -> bytes:
    """Every object (blob, tree, commit) of these shadow stores, as git reads them."""
    out = b""
    for git_dir in (store / "repo.git" for store in stores):
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(GIT_DIR=str(git_dir), GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
        out += subprocess.run(
            ["git", "cat-file", "--batch-all-objects", "--batch"],
            env=env,
            capture_output=True,
            check=True,
        ).stdout
    return out


def raw_bytes(home: Path) -> bytes:
    """Every file under AGENTGUARD_HOME as bytes (db, -wal, -shm, shadow files, preserved/)."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


def assert_stored_nowhere(home: Path, *secrets: str) -> None:
    rows = database_text(home / "agentguard.db")
    objects = shadow_objects(*sorted((home / "shadow").iterdir()))
    files = raw_bytes(home)
    for secret in secrets:
        assert secret not in rows
        assert secret.encode() not in objects
        assert secret.encode() not in files


# -- request parameters ----------------------------------------------------------------------


def test_keys_in_extra_body_metadata_and_unknown_fields_are_stored_nowhere(
    guarded, fake, home, project
) -> None:
    client = guarded()
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        system="be brief",
        stop_sequences=["END"],
        messages=[user("fix the bug")],
        metadata={"user_id": SECRET},
        extra_body={"api_key": SECRET, "some_new_field": {"token": SECRET}},
        extra_headers={"x-extra-auth": SECRET},
        extra_query={"key": SECRET},
    )
    run_id = client.run_id
    client.agentguard.close()
    # The trap works: the fields did travel (the fake provider masks what it records).
    sent = fake.requests[0].body
    assert {"metadata", "api_key", "some_new_field"} <= sent.keys()

    assert_stored_nowhere(home, SECRET, API_KEY)

    # What the conversation needs is kept, and the names of what was dropped are recorded.
    store = Store.open(home)
    try:
        step = store.steps(run_id)[0]
        blob = store.blob(step["request"])
    finally:
        store.close()
    assert blob["system"] == "be brief" and blob["max_tokens"] == 64
    assert blob["stop_sequences"] == ["END"]
    assert blob[DROPPED_KEY] == ["extra_body", "extra_headers", "extra_query", "metadata"]


def test_resume_never_sends_the_dropped_names_back(fake, guarded, home, project) -> None:
    client = guarded()
    client.messages.create(
        model=MODEL,
        max_tokens=64,
        system="be brief",
        messages=[user("fix the bug")],
        extra_body={"api_key": SECRET},
    )
    run_id = client.run_id
    client.agentguard.close(status="interrupted")

    run = agentguard.resume(run_id, restore=False)
    request = run.request()
    assert DROPPED_KEY not in request and "extra_body" not in request
    assert run.system == "be brief"
    again = run.wrap(anthropic.Anthropic(base_url=fake.base_url, api_key=API_KEY))
    try:
        again.messages.create(**request)
    finally:
        again.agentguard.close()
    assert DROPPED_KEY not in json.dumps(fake.requests[-1].body)


# -- the user's global git ignore rules ------------------------------------------------------


def _global_git(home_dir: Path, monkeypatch: pytest.MonkeyPatch, *, config: str | None) -> None:
    """A user whose global git config is in home_dir: HOME, XDG_CONFIG_HOME, GIT_CONFIG_GLOBAL."""
    monkeypatch.setenv("HOME", str(home_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home_dir / ".config"))
    gitconfig = home_dir / ".gitconfig"
    gitconfig.parent.mkdir(parents=True, exist_ok=True)
    gitconfig.write_text(config or "")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))


def _user_git_status(project: Path) -> str:
    """`git status` as the user runs it: their global config, not the tests' hermetic one."""
    env = {k: v for k, v in os.environ.items() if k != "GIT_CONFIG_NOSYSTEM"}
    return subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@pytest.mark.parametrize("where", ["core.excludesFile", "xdg default"])
def test_a_file_ignored_only_by_the_users_global_git_config_stays_out_of_the_shadow_store(
    guarded, home, project, tmp_path, monkeypatch, where
) -> None:
    user_home = tmp_path / "user-home"
    if where == "core.excludesFile":
        ignore = user_home / "my-global-ignore"
        _global_git(user_home, monkeypatch, config=f"[core]\n\texcludesFile = {ignore}\n")
    else:
        ignore = user_home / ".config" / "git" / "ignore"
        _global_git(user_home, monkeypatch, config=None)
    ignore.parent.mkdir(parents=True, exist_ok=True)
    ignore.write_text("local-settings.ini\n")
    (project / "local-settings.ini").write_text(FILE_SECRET + "\n")
    (project / "notes.md").write_text("kept\n")

    # git status agrees: the file is ignored (by the global rules alone).
    status = _user_git_status(project)
    assert "!! local-settings.ini" in status and "?? notes.md" in status

    client = guarded()
    msg = client.messages.create(model=MODEL, max_tokens=64, messages=[user("go")])
    client.agentguard.close()
    shadow = ShadowRepo(project, next((home / "shadow").iterdir()))
    files = shadow.files(agentguard.info(msg).checkpoint)
    assert "notes.md" in files and "local-settings.ini" not in files
    assert_stored_nowhere(home, FILE_SECRET)


# -- built-in secret files -------------------------------------------------------------------


def _plant_secrets(project: Path) -> dict[str, bytes]:
    planted = {}
    for pattern, rel in SECRET_FILES.items():
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = f"{FILE_SECRET} ({pattern})\n".encode()
        path.write_bytes(data)
        planted[rel] = data
    return planted


def test_each_built_in_secret_pattern_is_excluded_and_recorded_as_skipped(
    guarded, home, project
) -> None:
    assert set(SECRET_FILES) == set(DEFAULT_SECRET_FILES)
    _plant_secrets(project)
    (project / "config" / "settings.toml").write_text("debug = true\n")
    client = guarded()
    msg = client.messages.create(model=MODEL, max_tokens=64, messages=[user("go")])
    run_id = client.run_id
    client.agentguard.close()

    shadow = ShadowRepo(project, next((home / "shadow").iterdir()))
    files = shadow.files(agentguard.info(msg).checkpoint)
    assert "config/settings.toml" in files
    assert not set(SECRET_FILES.values()) & set(files)
    assert_stored_nowhere(home, FILE_SECRET)

    store = Store.open(home)
    try:
        events = store.query(
            "select detail from events where run_id = ? and kind = 'snapshot_skipped'", [run_id]
        )
    finally:
        store.close()
    skipped = {p["path"]: p["reason"] for e in events for p in json.loads(e["detail"])["paths"]}
    for pattern, rel in SECRET_FILES.items():
        assert skipped[rel] == f"secret file (matches {pattern})"


def test_the_secret_patterns_are_configurable(guarded, home, project) -> None:
    (project / "agentguard.toml").write_text('secret_files = ["*.p12", "!.env.*"]\n')
    (project / "client.p12").write_bytes(b"\x30\x82" + FILE_SECRET.encode())
    (project / ".env.example").write_text("TOKEN=changeme\n")
    (project / ".env").write_text(FILE_SECRET + "\n")
    git(project, "add", "agentguard.toml")
    git(project, "commit", "-q", "-m", "config")
    client = guarded()
    msg = client.messages.create(model=MODEL, max_tokens=64, messages=[user("go")])
    client.agentguard.close()

    shadow = ShadowRepo(project, next((home / "shadow").iterdir()))
    assert "*.p12" in shadow.secret_files and ".env.*" not in shadow.secret_files
    files = shadow.files(agentguard.info(msg).checkpoint)
    assert ".env.example" in files  # turned off: a template, stored like any file
    assert "client.p12" not in files and ".env" not in files  # added, and still built in
    assert_stored_nowhere(home, FILE_SECRET)

    # A parameter works the same way, and a pattern added later drops a file captured earlier.
    later = ShadowRepo(project, shadow.store_dir, secret_files=["*.example"])
    assert ".env.example" not in later.files(later.snapshot().commit)


def test_restore_never_deletes_or_overwrites_a_secret_file(tmp_path, project) -> None:
    store_dir = tmp_path / "store"
    # An old snapshot holds a .env, taken while it was not a secret pattern.
    (project / ".env").write_text("TOKEN=old\n")
    unguarded = ShadowRepo(project, store_dir, secret_files=["!.env"])
    old = unguarded.snapshot().commit
    assert ".env" in unguarded.files(old)

    shadow = ShadowRepo(project, store_dir)  # the built-in patterns again
    checkpoint = shadow.snapshot().commit
    planted = _plant_secrets(project)  # the agent's tools (or the user) add secret files
    (project / "app.py").write_text("agent edit\n")

    result = shadow.restore(checkpoint)
    assert (project / "app.py").read_text() == "def add(a, b):\n    return a - b\n"
    for rel, data in planted.items():
        assert (project / rel).read_bytes() == data  # not deleted, though created since
    assert not {c.path for c in result.changes} & set(planted)

    result = shadow.restore(old)  # the old snapshot's .env does not overwrite today's
    assert (project / ".env").read_bytes() == planted[".env"]
    assert ".env" not in {c.path for c in result.changes}
    assert not list((store_dir / "preserved").rglob("*.env*"))
    # Only the old, pre-pattern .env ("TOKEN=old") is in the store: none of today's secrets.
    assert FILE_SECRET.encode() not in shadow_objects(store_dir)
