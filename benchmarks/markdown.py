"""The table of a saved run as Markdown, for benchmarks/README.md.

python -m benchmarks.markdown                         benchmarks/results/latest.json
python -m benchmarks.markdown benchmarks/results/goodput.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, number


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"Run {m.get('when', '?')} on {m.get('platform', '?')}, {m.get('cpus', '?')} CPUs, "
        f"Python {m.get('python', '?')}, {m.get('git', 'git ?')}"
        + (f"; agentguard at commit {m['commit']}" if "commit" in m else "")
        + (f" with {m['edited']} file(s) under agentguard/ edited" if m.get("edited") else "")
        + ".",
        "",
    ]
    lines.append("| benchmark | case | metric | value | baseline | target | met |")
    lines.append("|---|---|---|---|---|---|---|")
    for f in doc["figures"]:
        value = number(f["value"], f["unit"])
        if f.get("note"):
            value += f" ({f['note']})"
        base = f.get("baseline", f.get("floor"))  # runs saved before the rename say "floor"
        baseline = "" if base is None else number(base, f["unit"])
        met = {True: "yes", False: "**no**", None: ""}[f.get("meets")]
        lines.append(
            f"| {f['benchmark']} | {f['case']} | {f['metric']} | {value} | {baseline} | "
            f"{f.get('target') or ''} | {met} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "latest.json"
    print(markdown(json.loads(path.read_text())))
