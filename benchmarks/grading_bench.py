"""Grading benchmark: answers graded per second (integer fast path vs. math-verify path) and
agreement with math-verify's default configuration on hand-labelled cases, every disagreement listed.

    python benchmarks/grading_bench.py [--json] [--rounds 3]

Same numbers as ``retool bench grading``.
"""

from retool.cli import app

if __name__ == "__main__":
    import sys

    app(["bench", "grading", *sys.argv[1:]])
