"""The headless library never imports Textual: only `agentguard watch` does, when it runs.

Checked in a fresh interpreter, where nothing else can have imported Textual first.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, json, pathlib, sys
import agentguard
import agentguard.cli
after_core = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
# Every module of the library except the Textual side of the TUI (found on disk: walking
# packages with pkgutil would import the Textual subpackages just to list them).
root = pathlib.Path(agentguard.__file__).parent
textual_side = ("agentguard.tui.app", "agentguard.tui.messages", "agentguard.tui.screens",
                "agentguard.tui.widgets")
imported = []
for path in sorted(root.rglob("*.py")):
    parts = path.relative_to(root.parent).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    if name.startswith(textual_side):
        continue
    importlib.import_module(name)
    imported.append(name)
after_all = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
print(json.dumps({"core": after_core, "all": after_all, "imported": imported}))
"""


@functools.cache
def probe() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_agentguard_and_its_cli_never_import_textual():
    result = probe()
    assert result["core"] == []


def test_no_headless_module_imports_textual_not_even_the_watch_entry_point():
    result = probe()
    assert {
        "agentguard.store",
        "agentguard.guard",
        "agentguard.cli",
        "agentguard.tui.watch",
    } <= set(result["imported"])
    assert result["all"] == []


def test_the_watch_app_does_import_textual():
    """The probe would notice: importing the app itself brings Textual in."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, agentguard.tui.app; print('textual' in sys.modules)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "True"
