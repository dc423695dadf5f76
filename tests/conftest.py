"""Shared fixtures: a fake provider on loopback, a private AGENTGUARD_HOME, a real git project."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic import Anthropic, AsyncAnthropic

import agentguard
from agentguard.clock import FakeClock
from agentguard.policy import DEFAULT_PRESET, PRESETS
from agentguard.testing import FakeProvider, Reply, overloaded

# A key whose bytes must never reach the store, the shadow store or a log.
API_KEY = "sk-ant-api03-NEVER-PERSIST-7f3a9c1e5b2d4f6a8c0e"

GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test User",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test User",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


# Tries per route of the default preset: a route is given up after this many 529s in a row.
ATTEMPTS = PRESETS[DEFAULT_PRESET].max_attempts


def storm(n: int = ATTEMPTS) -> list[Reply]:
    """Enough 529s in a row to make a step of the default preset leave its route."""
    return [overloaded() for _ in range(n)]


def dead_pid() -> int:
    """The pid of a process that has already exited: an agent that died."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | GIT_ENV
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as server:
        yield server


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own AGENTGUARD_HOME: nothing is written to the real data folder."""
    path = tmp_path / "agentguard-home"
    monkeypatch.setenv("AGENTGUARD_HOME", str(path))
    # the shadow stores' private indexes too (by default in /dev/shm; tests/test_private_index.py)
    monkeypatch.setenv("AGENTGUARD_INDEX_DIR", str(tmp_path / "private-indexes"))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "app.py").write_text("def add(a, b):\n    return a - b\n")
    (path / ".gitignore").write_text("*.log\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def claude_code() -> Any:
    """The real Claude Code CLI, installed once by the tests' set-up (tests/claude_cli.py)."""
    from tests import claude_cli

    return claude_cli.require()


@pytest.fixture
def cc_home(tmp_path: Path) -> Path:
    """Claude Code's HOME: empty, private to the test (no user settings, no login)."""
    path = tmp_path / "claude-home"
    path.mkdir()
    return path


@pytest.fixture
def start_proxy(
    fake: FakeProvider, project: Path, home: Path, clock: FakeClock
) -> Iterator[Callable[..., Any]]:
    """Factory: an agentguard proxy in this process on a free loopback port, both upstreams
    the fake provider, on the test's clock; stopped after the test."""
    from agentguard.proxy import ProxyOptions, ProxyThread

    started: list[ProxyThread] = []

    def make(**options: Any) -> ProxyThread:
        options.setdefault("upstream", fake.base_url)
        options.setdefault("openai_upstream", fake.openai_base_url)
        options.setdefault("clock", clock)
        options.setdefault("rng", random.Random(7))
        proxy = ProxyThread(ProxyOptions.build(project, home=home, **options)).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def guarded(
    fake: FakeProvider, home: Path, project: Path, clock: FakeClock
) -> Iterator[Callable[..., Any]]:
    """Factory: a wrapped (sync or async) Anthropic client talking to the fake provider."""
    made: list[Any] = []

    def make(*, asynchronous: bool = False, timeout: float = 10.0, **options: Any) -> Any:
        cls = AsyncAnthropic if asynchronous else Anthropic
        client = cls(base_url=fake.base_url, api_key=API_KEY, timeout=timeout)
        options.setdefault("rng", random.Random(42))
        options.setdefault("clock", clock)
        wrapped = agentguard.wrap(client, project=project, **options)
        made.append(wrapped)
        return wrapped

    yield make
    for wrapped in made:
        wrapped.agentguard.close()


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# -- the store on each engine ------------------------------------------------------------------

# The PostgreSQL server the engine tests use; AGENTGUARD_REQUIRE_POSTGRES=1 (CI) turns "no
# server" from a skip into a failure.
POSTGRES_URL_ENV = "AGENTGUARD_TEST_POSTGRES"
POSTGRES_DEFAULT_URL = "postgresql://root@127.0.0.1:5432/test"
ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL once it has answered, else a skip naming the URL tried."""
    from agentguard.store_pg import masked

    url = os.environ.get(POSTGRES_URL_ENV, POSTGRES_DEFAULT_URL)
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception as exc:
        reason = (
            f"no PostgreSQL server answered at {masked(url)} "
            f"({' '.join(str(exc).split())}); set {POSTGRES_URL_ENV} to one"
        )
        if os.environ.get("AGENTGUARD_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"AGENTGUARD_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return url


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """A URL whose connections write into a fresh schema of their own, dropped afterwards."""
    import uuid

    import psycopg

    schema = f"agentguard_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'create schema "{schema}"')
    joiner = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{joiner}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'drop schema "{schema}" cascade')


class Engine:
    """One engine's store for a test: `open()` another handle on it, `locator` for a child
    process (the SQLite file or the PostgreSQL URL), `connect()` a second raw connection."""

    def __init__(self, name: str, locator: str, home: Path) -> None:
        self.name = name
        self.locator = locator
        self.home = home
        self.opened: list[Any] = []

    def open(self) -> Any:
        from agentguard.store import Store, open_store

        if self.name == "sqlite":
            store: Any = Store(self.locator)
        else:
            store = open_store(self.home, url=self.locator)
        self.opened.append(store)
        return store

    def connect(self) -> Any:
        """A connection of the engine's own driver, apart from every store handle."""
        if self.name == "sqlite":
            import sqlite3

            return sqlite3.connect(self.locator, isolation_level=None)
        import psycopg

        return psycopg.connect(self.locator, autocommit=True)

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, tmp_path: Path, home: Path) -> Iterator[Engine]:
    """The store on SQLite (a file under tmp_path) and on PostgreSQL (a fresh schema)."""
    if request.param == "sqlite":
        made = Engine("sqlite", str(tmp_path / "engine" / "agentguard.db"), home)
    else:
        url = request.getfixturevalue("postgres_schema_url")
        made = Engine("postgresql", url, home)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def any_store(engine: Engine) -> Any:
    """A store handle on each engine in turn."""
    return engine.open()
