"""`make bench`: every benchmark in one run, one table, saved as JSON with the machine.

python -m benchmarks.run                  everything (about 20 minutes)
python -m benchmarks.run --quick          smaller trees, fewer requests, agentguard-only goodput
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import (
    checkpoint,
    conversation,
    fleet,
    goodput,
    proxy,
    resume,
    snapshot_tail,
    statusline,
    store_throughput,
    tui_scale,
)
from benchmarks.common import Report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast subset, for a first look")
    args = parser.parse_args(argv)
    report = Report()
    sizes = (1_000, 10_000) if args.quick else checkpoint.SIZES
    parts = [
        ("checkpoint", lambda: checkpoint.main(sizes)),
        ("snapshot_tail", lambda: snapshot_tail.main(150 if args.quick else snapshot_tail.ROUNDS)),
        ("conversation", conversation.main),
        ("resume", resume.main),
        ("tui_scale", lambda: tui_scale.main(["--runs", "1000"] if args.quick else [])),
        ("statusline", statusline.main),
        ("proxy", lambda: proxy.main(args.quick)),
        ("store_throughput", lambda: store_throughput.main(args.quick)),
        ("fleet", fleet.main),
        (
            "goodput",
            lambda: goodput.main(
                ["agentguard"] if args.quick else list(goodput.CLIENTS), list(goodput.SCENARIOS)
            ),
        ),
    ]
    for name, run in parts:
        print(f"running {name} …", file=sys.stderr)
        report.figures += run().figures
    print(report.table())
    print(f"saved {report.save('latest')}")
    missed = [f for f in report.figures if f.meets is False]
    print(f"{len(missed)} figure(s) miss their target" if missed else "every target is met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
