"""Grading benchmark: answers graded per second (integer fast path vs. math-verify path) and
agreement with math-verify's default configuration on hand-labelled cases, every disagreement listed.

    python benchmarks/grading_bench.py [--json] [--rounds 3]

Same numbers as ``retool bench grading``.
"""

from __future__ import annotations

import argparse
import json

from retool.grading_bench import print_report, run_grading_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes over the speed pairs")
    args = parser.parse_args()
    report = run_grading_bench(rounds=args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
