"""Is the model's final answer right? Extraction, equivalence and the outcome reward.

Why it is built this way:

* **Only the model's own text is searched.** ``extract_answer_from_trajectory`` decodes
  ``Trajectory.model_ids()`` (loss-mask 1), so ``\\boxed{42}`` printed by code inside an
  ``<interpreter>`` span can never earn a reward, and code blocks are skipped (the dialect's
  ``find_answer``). ``extract_answer`` on a string also blanks interpreter spans, as a safety net.
* **The answer section wins.** ReTool ends with ``<answer>\\boxed{…}</answer>``: the last box of
  the last answer section is the answer, even when a box appears after it (a model that keeps
  talking after answering has already answered). No section: the last box of the prose
  (``\\boxed{721} wait no \\boxed{720}`` → 720). A section with no box but a short bare
  answer (``<answer>42</answer>``) gives that text.
* **Integers first, exactly.** AIME/AMC/GSM8K answers are integers; after stripping wrappers
  (``$``, ``\\text{}``, ``^\\circ``, ``\\!``, a trailing ``.``, 3-digit thousands groups, leading
  zeros) two integers or simple fractions (``\\frac{50}{2}``, ``50/2``) are compared with
  ``fractions.Fraction``: no floats, no sympy, microseconds.
* **math-verify, strict, for the rest**: each side is parsed alone as ``\\boxed{…}`` with LaTeX
  extraction only (no fallback strings, first match), then ``verify(gold, pred, strict=True)``
  (gold first: the function is not symmetric). math-verify's own timeouts use ``signal.alarm``,
  which raises outside the main thread, so they are switched off (``parsing_timeout=None``,
  ``timeout_seconds=None``) and runtime is bounded here instead: inputs over ``MAX_CHARS`` are
  compared as strings only, and parsed expressions that would make sympy evaluate something
  astronomically large (``10^{10^{10}}``, ``1000000!``, sums over huge ranges) are refused
  before ``verify`` sees them. Everything runs in the calling thread, so worker threads are fine.

What it deliberately does not do:

* ``ExprExtractionConfig`` is not used: it extracts *part* of a string (``2*pi`` → 2,
  ``x**2 - 1`` → 1), which would turn wrong answers into right ones. Python-style input is
  rewritten (``**`` → ``^``, bare ``pi`` → ``\\pi``) and parsed as LaTeX instead.
* No numeric tolerance beyond math-verify's (6 decimals): ``2\\pi`` is not ``6.28``,
  ``0.333`` is not ``\\frac{1}{3}``.
* No hard wall-clock timeout: a pathological expression under ``MAX_CHARS`` that sympy simplifies
  slowly can still take seconds. Run grading in a process pool if the inputs are adversarial.
* No multiple-choice letters, units conversion, answer-in-words or ``1e3`` notation (read as
  ``1·e·3``). Known leniency inherited from math-verify: an open interval ``(1,2)`` matches the set
  ``\\{1,2\\}`` (it reads ``(1,2)`` as a possible pair); see ``retool.bench.grading``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from retool.datasets import Problem
from retool.protocol import RETOOL, Dialect
from retool.trajectory import Trajectory

MAX_CHARS = 1000  # longer answers are compared as strings only
MAX_EXPONENT = 10_000  # |exponent|, factorial argument or summation range allowed before verify
BARE_ANSWER_CHARS = 64  # <answer>42</answer> without a box: accepted up to this length, one line

# math-verify warns once that its (signal-based) timeout is off; here that is the design, not news.
for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(lambda record: not record.getMessage().startswith("Timeout is disabled"))

# -- extraction ---------------------------------------------------------------------------------


def extract_answer(text: str, dialect: Dialect = RETOOL, *, outputs: bool = True) -> str | None:
    """The final answer in the *model's* text: the last ``\\boxed{}``/``\\fbox{}`` of the last
    answer section, else of the prose; code blocks and interpreter output never count (the
    dialect's grammar says which is which). ``outputs=False``: ``text`` is the model's alone, with
    the interpreter's replies left out (a trajectory's mask-1 tokens)."""
    segments = dialect.parse(text, outputs=outputs)
    answer = dialect.answer_in(segments)
    sections = [s for s in segments if s.kind == "answer"]
    if answer is None and sections:
        bare = sections[-1].body.strip()
        if bare and len(bare) <= BARE_ANSWER_CHARS and "\n" not in bare:
            return bare
    return answer


def extract_answer_from_trajectory(traj: Trajectory, tokenizer: Any, dialect: Dialect) -> str | None:
    """Decode only the model's tokens (mask 1) and extract the answer with the dialect's rules.
    Chat dialect: each model turn is read on its own (a call left unclosed ends with its turn, so
    it cannot swallow the answer of a later one). An answer opened by budget forcing is read from
    the forced opening on: a code block the cap cut off before it cannot swallow it either."""
    opened = [(start, end) for start, end, kind in traj.forced if kind == "answer"]
    if opened and not dialect.structured:
        start, end = opened[-1]
        after = [t for t, mask in zip(traj.ids[end:], traj.loss_mask[end:]) if mask]
        text = tokenizer.decode(traj.ids[start:end], skip_special_tokens=True) + tokenizer.decode(
            after, skip_special_tokens=True)
        return extract_answer(text, dialect, outputs=False)
    if dialect.structured:
        turns = [tokenizer.decode(ids, skip_special_tokens=True) for mask, ids in traj.segments() if mask]
        return dialect.answer_in([s for turn in turns for s in dialect.parse(turn, outputs=False)])
    text = tokenizer.decode(traj.model_ids(), skip_special_tokens=True)
    return extract_answer(text, dialect, outputs=False)


# -- the integer / fraction fast path ------------------------------------------------------------

_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|textnormal|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|°|\\degree")
_INT = r"[+-]?(?:\d+|\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+)"
_INT_RE = re.compile(_INT)
_FRAC_RE = re.compile(rf"([+-]?)\\[dt]?frac\s*\{{\s*({_INT})\s*\}}\s*\{{\s*({_INT})\s*\}}")
_FRAC_SHORT_RE = re.compile(r"([+-]?)\\[dt]?frac\s*(\d)\s*(\d)")
_SLASH_RE = re.compile(rf"({_INT})\s*/\s*({_INT})")


def _normalise(s: str) -> str:
    """Cosmetic clean-up for the fast path and the cheap string comparison."""
    s = s.strip().replace("\u2212", "-").replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[()\[\]]", "", s).replace("\\!", "").replace("{,}", ",")
    s = re.sub(r"\\[,;:> ]|~", " ", s)
    for _ in range(3):
        s = _WRAPPERS.sub(r"\1", s)
    s = _DEGREES.sub("", s)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    return s


def _integer(s: str) -> int | None:
    return int(s.replace(",", "").replace(" ", "")) if _INT_RE.fullmatch(s) else None


def _rational(s: str) -> Fraction | None:
    """An integer or a simple fraction of integers, exactly; None for anything else."""
    if (n := _integer(s)) is not None:
        return Fraction(n)
    m = _FRAC_RE.fullmatch(s) or _FRAC_SHORT_RE.fullmatch(s)
    if m:
        sign, num, den = m.group(1), _integer(m.group(2)), _integer(m.group(3))
    elif m := _SLASH_RE.fullmatch(s):
        sign, num, den = "", _integer(m.group(1)), _integer(m.group(2))
    else:
        return None
    if num is None or not den:
        return None
    return -Fraction(num, den) if sign == "-" else Fraction(num, den)


# -- math-verify, strict, without signals ----------------------------------------------------------


def _mv_text(s: str) -> str:
    s = s.strip().replace("\\$", "").replace("$", "").replace("\\!", "").replace("**", "^")
    return re.sub(r"(?<![\\A-Za-z])pi(?![A-Za-z])", r"\\pi", s)


def _mv_parse(s: str) -> list:
    from math_verify import LatexExtractionConfig, parse

    return parse("\\boxed{" + _mv_text(s) + "}", [LatexExtractionConfig(boxed_match_priority=0)],
                 fallback_mode="no_fallback", extraction_mode="first_match", parsing_timeout=None)


def _too_costly(expr: Any) -> bool:
    """Would ``verify`` make sympy evaluate something astronomically large? Checked bottom-up,
    so each ``evalf`` below only sees sub-expressions already known to be of reasonable size."""
    import sympy

    if isinstance(expr, sympy.MatrixBase):
        return any(_too_costly(e) for e in expr)
    if not isinstance(expr, sympy.Basic):
        return False
    combinatorial = (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.binomial, sympy.gamma)
    for node in sympy.postorder_traversal(expr):
        if isinstance(node, sympy.Pow):
            sizes = [node.exp]
        elif isinstance(node, combinatorial):
            sizes = list(node.args)
        elif isinstance(node, (sympy.Sum, sympy.Product)):
            sizes = [hi - lo for _, lo, hi in node.limits]
        else:
            continue
        for size in sizes:
            if size.is_number:
                value = abs(sympy.N(size, 15))
                if not value.is_finite or value > MAX_EXPONENT:
                    return True
            elif isinstance(node, (sympy.Sum, sympy.Product)):
                return True  # a symbolic or infinite range: verify would try to evaluate it
    return False


def _math_verify(pred: str, gold: str) -> bool:
    from math_verify import verify

    gold_parsed, pred_parsed = _mv_parse(gold), _mv_parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    if any(_too_costly(e) for e in gold_parsed + pred_parsed):
        return False
    return bool(verify(gold_parsed, pred_parsed, strict=True, timeout_seconds=None))


@dataclass(frozen=True)
class Verdict:
    """The one grade of one answer: what was extracted, whether it is right, and how that was
    decided (``none``: no answer, ``string``: equal after clean-up, ``fast``: integers/fractions,
    ``too_long``, ``math_verify``)."""

    answer: str | None
    correct: bool
    method: str


def judge_answer(pred: str | None, gold: str) -> Verdict:
    """Is ``pred`` the ``gold`` answer? None (no answer) is never right."""
    if pred is None:
        return Verdict(None, False, "none")
    p, g = _normalise(pred), _normalise(gold)
    if not p:
        return Verdict(pred, False, "none")
    if p == g:
        return Verdict(pred, True, "string")
    if len(pred) > MAX_CHARS or len(gold) > MAX_CHARS:
        return Verdict(pred, False, "too_long")
    rp, rg = _rational(p), _rational(g)
    if rp is not None and rg is not None:
        return Verdict(pred, rp == rg, "fast")
    return Verdict(pred, _math_verify(pred, gold), "math_verify")


def is_equivalent(pred: str | None, gold: str) -> bool:
    """Does the predicted answer equal the gold one? (``judge_answer(...).correct``.)"""
    return judge_answer(pred, gold).correct


def grade_trajectory(traj: Trajectory, tokenizer: Any, dialect: Dialect, gold: str) -> Verdict:
    """The verdict on a trajectory, from the model's own tokens (``extract_answer_from_trajectory``)."""
    return judge_answer(extract_answer_from_trajectory(traj, tokenizer, dialect), gold)


# -- reward and the scored record ----------------------------------------------------------------


@dataclass(frozen=True)
class RewardConfig:
    correct: float = 1.0
    incorrect: float = -1.0
    no_answer: float | None = None  # None: a missing answer is simply incorrect


def reward(verdict: Verdict, config: RewardConfig = RewardConfig()) -> float:
    """ReTool's outcome reward, a pure rule on the verdict: ``correct`` (+1) if right, else
    ``incorrect`` (−1); with ``config.no_answer`` set, a trajectory without an answer gets that."""
    if verdict.answer is None and config.no_answer is not None:
        return config.no_answer
    return config.correct if verdict.correct else config.incorrect


@dataclass(frozen=True)
class ScoredSample:
    """One graded sample, the record ``retool eval`` reports and RL trains on: the problem (its gold
    answer travels with it), the trajectory, the verdict and the reward."""

    problem: Problem
    sample: int
    trajectory: Trajectory
    verdict: Verdict
    reward: float

    @property
    def problem_id(self) -> str:
        return self.problem.id

    @property
    def gold(self) -> str:
        return self.problem.answer

    @property
    def answer(self) -> str | None:
        return self.verdict.answer

    @property
    def correct(self) -> bool:
        return self.verdict.correct


def score(problem: Problem, sample: int, traj: Trajectory, tokenizer: Any, dialect: Dialect,
          config: RewardConfig = RewardConfig()) -> ScoredSample:
    """Grade ``traj`` once and attach the reward: the one path from a trajectory to its score."""
    verdict = grade_trajectory(traj, tokenizer, dialect, problem.answer)
    return ScoredSample(problem, sample, traj, verdict, reward(verdict, config))
