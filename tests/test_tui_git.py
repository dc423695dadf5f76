"""watch names the user's branch and HEAD, and asks about a moved branch before a restore."""

from __future__ import annotations

from agentguard.store import DB_NAME
from agentguard.testing import ok
from agentguard.tui.screens.confirm import ConfirmRestore
from tests.conftest import git, user
from tests.test_tui import make_app, open_run, run, table, until

OPUS = "claude-opus-4-7"


def _on_screen(app) -> str:
    """The characters on screen (textual is pinned, see pyproject.toml)."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


def test_the_run_header_names_the_branch_and_a_restore_after_a_switch_says_so(
    fake, guarded, project, home
):
    fake.script(ok(), ok())
    client = guarded()
    for text in ("one", "two"):
        client.messages.create(model=OPUS, max_tokens=64, messages=[user(text)])
    client.agentguard.close()
    head = git(project, "rev-parse", "HEAD").strip()
    git(project, "checkout", "-q", "-b", "feature/login")
    (project / "login.py").write_text("def login(): ...\n")
    git(project, "add", "login.py")
    git(project, "commit", "-q", "-m", "login")
    now = git(project, "rev-parse", "HEAD").strip()
    before = (project / "app.py").read_bytes()
    seen: dict[str, str] = {}

    async def scenario():
        app = make_app(home / DB_NAME)
        async with app.run_test(size=(120, 30)) as pilot:
            await open_run(pilot, app, client.run_id)
            steps = table(app, "#steps")
            await until(pilot, lambda: len(steps.keys) == 2, "two steps")
            await until(pilot, lambda: "main at" in _on_screen(app), "the git state")
            seen["head"] = _on_screen(app)
            await pilot.press("up")
            await pilot.press("r")
            await until(pilot, lambda: isinstance(app.screen, ConfirmRestore), "the question")
            await until(pilot, lambda: "Restore the" in _on_screen(app), "the question shown")
            seen["question"] = _on_screen(app)
            await pilot.press("n")

    run(scenario)
    assert f"main at {head[:7]}, clean" in seen["head"]
    question = " ".join(seen["question"].replace("█", " ").split())
    assert (
        f"The project is now on branch feature/login at {now[:7]}, the checkpoint was taken "
        f"on main at {head[:7]}" in question
    ), question
    assert (project / "app.py").read_bytes() == before  # "n": nothing rewritten
