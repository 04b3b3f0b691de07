"""Grading benchmark: how fast ``is_equivalent`` is, and where it disagrees with math-verify's defaults.

1. Speed: ~200 fixed (pred, gold) pairs — AIME-style integers in the forms models write them
   (``025``, ``\\text{25}``, ``25^\\circ``, wrong by one…), fractions, radicals, expressions —
   graded in the main thread after one untimed pass, three rounds with sympy's and math-verify's
   caches cleared before each (``answers_per_s`` is the median round). Reported
   overall and per path: the integer/fraction fast path (string clean-up included) and math-verify.
2. Agreement: ~60 hand-labelled cases (``truth`` is what a careful human grader says), each
   graded by ours and by math-verify as most people call it, ``verify(parse(gold), parse(pred))``
   with every default (signal timeouts on, so this half must run in the main thread). Every
   disagreement is listed with the side that is right; ``both_wrong`` lists cases where the two
   agree and are both wrong. Most disagreements come from ``parse`` on a bare string: its LaTeX
   patterns want delimiters (``$…$``, ``\\boxed{}``), so ``\\sqrt{2}/2`` alone parses to nothing, and
   its expression fallback takes part of the string (``2\\pi`` → 2).

Numbers are printed, never asserted by tests. ``retool bench grading`` and
``benchmarks/grading_bench.py`` print this report.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from retool.grading import judge_answer

# (pred, gold, truth): hand-checked.
AGREEMENT_CASES: list[tuple[str, str, bool]] = [
    # integers as models write them
    ("025", "25", True), ("-025", "-25", True), (r"\text{25}", "25", True), (r"\textbf{25}", "25", True),
    (r"\mathrm{25}", "25", True), (r"25^\circ", "25", True), (r"25^{\circ}", "25", True), ("25°", "25", True),
    ("$25$", "25", True), ("25.", "25", True), (r"\boxed{25}", "25", True), (r"25\text{ cm}", "25", True),
    ("x=25", "25", True), ("3.0", "3", True), ("1,000", "1000", True), ("1,000,000", "1000000", True),
    (r"1\,000", "1000", True), ("1{,}000", "1000", True), ("1 000", "1000", True), ("1,001", "1001", True),
    (r"\frac{50}{2}", "25", True), (r"\dfrac{50}{2}", "25", True), ("50/2", "25", True),
    ("24", "25", False), ("250", "25", False), ("-25", "25", False), ("025", "26", False), ("12,5", "125", False),
    ("", "25", False), (r"\frac{1}{0}", "5", False), ("1e3", "1000", True),
    # fractions and decimals
    (r"\frac{1}{2}", "0.5", True), ("0.5", r"\frac{1}{2}", True), (r"\frac12", "0.5", True),
    (r"\frac{-3}{4}", "-0.75", True), (r"-\frac{3}{4}", r"\frac{-3}{4}", True), ("2.5", "2.50", True),
    ("0.333", r"\frac{1}{3}", False), ("1/3", "0.33", False),
    # radicals and constants
    (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}", True), (r"2\sqrt{3}", r"\sqrt{12}", True), (r"\sqrt{8}", r"2\sqrt{2}", True),
    (r"5\sqrt{2}", r"\sqrt{50}", True), (r"\frac{1+\sqrt{5}}{2}", r"\frac{\sqrt5+1}{2}", True),
    (r"\sqrt{2}", r"\sqrt{3}", False), (r"2\sqrt{2}", r"\sqrt{2}", False), (r"2\pi", "6.28", False),
    ("6.28", r"2\pi", False), (r"2\pi", "2", False), (r"\frac{\pi}{3}", r"\frac{\pi}{4}", False),
    ("pi/2", r"\frac{\pi}{2}", True), ("2**10", "1024", True), (r"2^{10}", "1024", True), (r"2^{10}", "2", False),
    (r"\infty", r"\infty", True),
    # expressions, intervals, tuples, sets
    ("x+1", "1+x", True), ("y+1", "x+1", False), ("x^2-1", "(x-1)(x+1)", True),
    ("[1,2)", "[1,2)", True), ("(1,2]", "[1,2)", False), ("(1,2)", "(1,2)", True), ("(1,2)", "(2,1)", False),
    (r"\left( 1, 2 \right)", "(1,2)", True), (r"\{1,2\}", r"\{2,1\}", True), ("(1,2)", r"\{1,2\}", False),
    (r"2, -2", r"\pm 2", True), (r"\pm 2", "2", False),
]

_AIME = [25, 204, 113, 104, 33, 80, 236, 601, 721, 45, 809, 116, 197, 73, 385, 371, 468, 902, 211, 540]
_WRONG_AIME = [26, 205, 112, 140, 3, 8, 263, 61, 720, 54]


def speed_pairs() -> list[tuple[str, str]]:
    """~200 fixed pairs: 110 integers, 30 fractions, 30 radicals, 30 expressions (seeded)."""
    rng = random.Random(0)
    forms = ["{}", "{:03d}", r"\text{{{}}}", "${}$", "{}.", r"{}^\circ", " {} ", r"\mathrm{{{}}}"]
    pairs = [(rng.choice(forms).format(g), str(g)) for g in _AIME for _ in range(4)]  # 80 right
    pairs += [(str(w), str(g)) for w, g in zip(_WRONG_AIME * 3, _AIME * 2)][:30]  # 30 wrong
    for _ in range(30):
        a, b, k = rng.randint(1, 50), rng.randint(2, 50), rng.randint(2, 9)
        pred = rng.choice([r"\frac{{{}}}{{{}}}", r"\dfrac{{{}}}{{{}}}", "{}/{}"]).format(a * k, b * k)
        gold = r"\frac{{{}}}{{{}}}".format(a, b) if rng.random() < 0.7 else f"{a / b:.6f}"
        pairs.append((pred, gold))
    for _ in range(30):
        a, b = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])
        c = a if rng.random() < 0.8 else a + 1  # one in five is wrong
        pred = rf"{c}\sqrt{{{b}}}" if rng.random() < 0.5 else rf"\sqrt{{{c * c * b}}}"
        gold = rng.choice([r"{}\sqrt{{{}}}", r"\frac{{{}\sqrt{{{}}}}}{{1}}"]).format(a, b)
        pairs.append((pred, gold))
    exprs = [("x^2-1", "(x-1)(x+1)"), ("2x+2", "2(x+1)"), (r"\frac{\pi}{2}", r"\frac{\pi}{2}"),
             (r"2\pi", "6.28"), ("[1,2)", "[1,2)"), (r"\{1,2\}", r"\{2,1\}"), ("(1,2]", "[1,2)"),
             (r"a^2+b^2", r"b^2+a^2"), (r"\frac{1+\sqrt{5}}{2}", r"\frac{\sqrt5+1}{2}"), ("x+1", "x+2")]
    for _ in range(3):
        for pred, gold in exprs:
            pairs.append((pred, gold))
    return pairs


def _clear_caches() -> None:
    from sympy.core.cache import clear_cache

    clear_cache()
    import math_verify.parser as mv_parser

    for name in ("parse_latex_cached", "parse_expr_cached"):
        getattr(getattr(mv_parser, name, None), "cache_clear", lambda: None)()


def _speed(rounds: int = 3) -> dict[str, Any]:
    pairs = speed_pairs()
    for pred, gold in pairs:  # untimed: imports, ANTLR and sympy code paths warmed up
        judge_answer(pred, gold)
    time_by_path: dict[str, float] = {}
    count_by_path: dict[str, int] = {}
    round_rates = []
    for _ in range(rounds):
        _clear_caches()
        round_start = time.perf_counter()
        for pred, gold in pairs:
            start = time.perf_counter()
            path = judge_answer(pred, gold).method
            path = "fast" if path in ("fast", "string") else path
            time_by_path[path] = time_by_path.get(path, 0.0) + time.perf_counter() - start
            count_by_path[path] = count_by_path.get(path, 0) + 1
        round_rates.append(len(pairs) / (time.perf_counter() - round_start))

    def rate(path: str) -> float | None:
        return count_by_path[path] / time_by_path[path] if count_by_path.get(path) else None

    return {"pairs": len(pairs), "rounds": rounds, "answers_per_s": statistics.median(round_rates),
            "fast_path_per_s": rate("fast"), "math_verify_per_s": rate("math_verify"),
            "fast_path_pairs": count_by_path.get("fast", 0) // rounds,
            "math_verify_pairs": count_by_path.get("math_verify", 0) // rounds}


def _math_verify_default(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(gold), parse(pred)))


def _agreement() -> dict[str, Any]:
    disagreements, both_wrong = [], []
    agree = ours_right = default_right = 0
    for pred, gold, truth in AGREEMENT_CASES:
        ours, default = judge_answer(pred, gold).correct, _math_verify_default(pred, gold)
        agree += ours == default
        ours_right += ours == truth
        default_right += default == truth
        row = {"pred": pred, "gold": gold, "ours": ours, "math_verify_default": default, "truth": truth}
        if ours != default:
            disagreements.append({**row, "right": "ours" if ours == truth else "math_verify"})
        elif ours != truth:
            both_wrong.append({**row, "right": "both wrong"})
    n = len(AGREEMENT_CASES)
    return {"cases": n, "agreement": agree / n, "ours_accuracy": ours_right / n,
            "math_verify_default_accuracy": default_right / n, "disagreements": disagreements,
            "both_wrong": both_wrong}


def run_grading_bench(rounds: int = 3) -> dict[str, Any]:
    """The whole report as a plain dict (JSON-ready). Call from the main thread."""
    return {**_speed(rounds), **_agreement()}


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def fmt(value: Any) -> str:
        if not isinstance(value, float):
            return str(value)
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.3f}"

    summary = Table(title="grading bench")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key in ("pairs", "rounds", "answers_per_s", "fast_path_per_s", "fast_path_pairs", "math_verify_per_s",
                "math_verify_pairs", "cases", "agreement", "ours_accuracy", "math_verify_default_accuracy"):
        summary.add_row(key, fmt(report[key]))
    console.print(summary)
    for title, rows in (("disagreements with math-verify defaults", report["disagreements"]),
                        ("both wrong", report["both_wrong"])):
        table = Table(title=f"{title} ({len(rows)})")
        for column in ("pred", "gold", "truth", "ours", "math_verify_default", "right"):
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[c]) for c in ("pred", "gold", "truth", "ours", "math_verify_default", "right")))
        console.print(table)
