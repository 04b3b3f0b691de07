"""Synthetic tool-necessary problems, each with a code-integrated and a text-only solution.

A deterministic generator (no LLM) of problems a small model cannot do in its head but can do
with a line of code: multi-digit arithmetic, modular powers, factorisation, counting by
enumeration, linear systems, sums of series, small combinatorics, each with several wordings.

Both solutions follow the same steps. The **code** one writes the computation as a block (or, for
multi-step problems, several dependent blocks, each after its own sentence: ``_Steps.more``); its
interpreter output comes from really running it (``verify_trace`` inserts it). The **text** one
writes the same steps out by hand with their exact values. Every example is verified (format,
execution, answer against the generator's own value) before it is written, so text-only and
tool-integrated training can be compared on equal, correct data. A held-out split (by a hash of
the question, so it is stable when ``n`` grows) is never used for training.

Not here: writing files (``retool.coldstart.build``), LLM rewriting (``rewrite``).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

GENERATOR_VERSION = "synth-1"


@dataclass(frozen=True)
class Example:
    id: str
    family: str
    question: str
    answer: str
    code_solution: str  # interpreter spans are filled in by verification
    text_solution: str


@dataclass(frozen=True)
class _Steps:
    question: str
    plan: str  # one sentence before the code
    code: str
    text_steps: str  # the same computation by hand
    conclusion: str
    answer: int
    # later (sentence, code) cells; they run in the same session, so they may use the names the
    # cells before them defined (``synth_multistep``). Empty for single-cell families.
    more: tuple[tuple[str, str], ...] = ()


def _answer_section(value: int) -> str:
    return f"<answer>\n\\boxed{{{value}}}\n</answer>"


def _arithmetic(rng: random.Random) -> _Steps:
    a, b, c = rng.randint(10_000, 9_999_999), rng.randint(1_000, 999_999), rng.randint(100, 99_999)
    sign = rng.choice(["+", "-"])
    product = a * b
    value = product + c if sign == "+" else product - c
    question = rng.choice([
        f"What is {a} × {b} {sign} {c}?",
        f"Compute {a} times {b}, then {'add' if sign == '+' else 'subtract'} {c}.",
        f"A warehouse ships {b} crates of {a} items each, then {'receives' if sign == '+' else 'loses'} {c} "
        f"more items. How many items is that in total?",
    ])
    return _Steps(question, "I will compute the product and the final sum exactly.",
                  f"print({a} * {b} {sign} {c})",
                  f"{a} × {b} = {product}. Then {product} {sign} {c} = {value}.",
                  f"The result is {value}.", value)


def _modpow(rng: random.Random) -> _Steps:
    a, e, m = rng.randint(2, 99), rng.randint(40, 400), rng.choice([p for p in range(11, 1000) if _is_prime(p)])
    value = pow(a, e, m)
    question = rng.choice([
        f"What is the remainder when {a}^{e} is divided by {m}?",
        f"Find {a} to the power {e} modulo {m}.",
        f"Compute {a}^{{{e}}} mod {m}.",
    ])
    squares, power, lines = [], a % m, []
    for bit in range(e.bit_length()):
        squares.append(power)
        lines.append(f"{a}^{1 << bit} ≡ {power}")
        power = power * power % m
    used = [squares[bit] for bit in range(e.bit_length()) if e >> bit & 1]
    chosen = " + ".join(str(1 << bit) for bit in range(e.bit_length()) if e >> bit & 1)
    text = (f"By repeated squaring modulo {m}: " + ", ".join(lines) + f". Since {e} = {chosen}, the result is the "
            f"product of {', '.join(map(str, used))} modulo {m}, which is {value}.")
    return _Steps(question, "Modular exponentiation by computer is exact and fast.",
                  f"print(pow({a}, {e}, {m}))", text, f"The remainder is {value}.", value)


def _factor(rng: random.Random) -> _Steps:
    primes = [p for p in range(2, 400) if _is_prime(p)]
    chosen = sorted(rng.sample(primes, rng.randint(2, 4)))
    powers = {p: rng.choice([1, 1, 1, 2, 3]) for p in chosen}
    n = math.prod(p**k for p, k in powers.items())
    largest = rng.random() < 0.5
    value = max(chosen) if largest else sum(chosen)
    question = (rng.choice([f"What is the largest prime factor of {n}?", f"Find the greatest prime dividing {n}."])
                if largest else
                rng.choice([f"What is the sum of the distinct prime factors of {n}?",
                            f"Add up the different primes that divide {n}. What do you get?"]))
    factored = " × ".join(f"{p}^{k}" if k > 1 else str(p) for p, k in powers.items())
    text = (f"Dividing out small primes in turn: {n} = {factored}. The distinct primes are "
            f"{', '.join(map(str, chosen))}; " + (f"the largest is {value}." if largest else
                                                 f"their sum is {' + '.join(map(str, chosen))} = {value}."))
    code = (f"from sympy import factorint\nf = factorint({n})\nprint(f)\n"
            + ("print(max(f))" if largest else "print(sum(f))"))
    return _Steps(question, "I will factor the number with sympy.", code, text, f"So the answer is {value}.", value)


def _counting(rng: random.Random) -> _Steps:
    n, a = rng.randint(1_000, 99_999), rng.randint(3, 30)
    b = rng.choice([k for k in range(3, 40) if k != a])
    lcm = a * b // math.gcd(a, b)
    value = n // a + n // b - n // lcm
    question = rng.choice([
        f"How many integers from 1 to {n} are divisible by {a} or by {b}?",
        f"Count the whole numbers k with 1 ≤ k ≤ {n} such that {a} divides k or {b} divides k.",
    ])
    text = (f"Multiples of {a}: ⌊{n}/{a}⌋ = {n // a}. Multiples of {b}: ⌊{n}/{b}⌋ = {n // b}. Both means multiples "
            f"of lcm({a}, {b}) = {lcm}: ⌊{n}/{lcm}⌋ = {n // lcm}. By inclusion–exclusion, "
            f"{n // a} + {n // b} − {n // lcm} = {value}.")
    code = f"print(sum(1 for k in range(1, {n} + 1) if k % {a} == 0 or k % {b} == 0))"
    return _Steps(question, "I will count by checking every number.", code, text, f"There are {value} such integers.",
                  value)


def _linear(rng: random.Random) -> _Steps:
    while True:
        solution = [rng.randint(-12, 12) for _ in range(3)]
        matrix = [[rng.randint(-9, 9) for _ in range(3)] for _ in range(3)]
        if _det(matrix) != 0:
            break
    rhs = [sum(c * s for c, s in zip(row, solution)) for row in matrix]
    weights, target, target_code = rng.choice([((1, 1, 1), "x + y + z", "x + y + z"),
                                               ((1, 2, 3), "x + 2y + 3z", "x + 2*y + 3*z"),
                                               ((2, -1, 1), "2x - y + z", "2*x - y + z")])
    value = sum(w * s for w, s in zip(weights, solution))
    system = "; ".join(_equation(row, b) for row, b in zip(matrix, rhs))
    question = rng.choice([f"Solve the system {system}. What is {target}?",
                           f"Real numbers x, y, z satisfy {system}. Find {target}."])
    d = _det(matrix)
    dets = [_det([[rhs[i] if j == col else matrix[i][j] for j in range(3)] for i in range(3)]) for col in range(3)]
    text = (f"By Cramer's rule: the determinant is {d}; replacing columns by the right-hand side gives "
            f"{dets[0]}, {dets[1]}, {dets[2]}, so x = {Fraction(dets[0], d)}, y = {Fraction(dets[1], d)}, "
            f"z = {Fraction(dets[2], d)}. Then {target} = {value}.")
    code = (f"from sympy import Matrix\nA = Matrix({matrix})\nb = Matrix({rhs})\nx, y, z = A.LUsolve(b)\n"
            f"print(x, y, z)\nprint({target_code})")
    return _Steps(question, "I will solve the linear system exactly.", code, text, f"So {target} = {value}.", value)


def _series(rng: random.Random) -> _Steps:
    n, c = rng.randint(20, 400), rng.randint(1, 30)
    kind = rng.choice(["square", "cube"])
    s1, s2, s3 = n * (n + 1) // 2, n * (n + 1) * (2 * n + 1) // 6, (n * (n + 1) // 2) ** 2
    if kind == "square":
        value = s2 + c * s1
        question = rng.choice([f"What is the sum of k^2 + {c}k for k = 1 to {n}?",
                               f"Evaluate the sum over k from 1 to {n} of (k² + {c}k)."])
        text = (f"Σk² = {n}·{n + 1}·{2 * n + 1}/6 = {s2} and Σk = {n}·{n + 1}/2 = {s1}, so the sum is "
                f"{s2} + {c}·{s1} = {value}.")
        code = f"print(sum(k**2 + {c}*k for k in range(1, {n} + 1)))"
    else:
        value = s3 - c * n
        question = rng.choice([f"What is the sum of k^3 - {c} for k = 1 to {n}?",
                               f"Evaluate Σ (k³ − {c}) for k from 1 to {n}."])
        text = f"Σk³ = ({n}·{n + 1}/2)² = {s3}, and subtracting {c} a total of {n} times gives {s3} − {c * n} = {value}."
        code = f"print(sum(k**3 - {c} for k in range(1, {n} + 1)))"
    return _Steps(question, "I will add up the terms directly.", code, text, f"The sum is {value}.", value)


def _combinatorics(rng: random.Random) -> _Steps:
    n = rng.randint(12, 40)
    k = rng.randint(3, min(9, n - 3))
    if rng.random() < 0.5:
        value = math.comb(n, k)
        question = rng.choice([f"In how many ways can a committee of {k} be chosen from {n} people?",
                               f"How many {k}-element subsets does a set of {n} elements have?"])
        text = f"C({n}, {k}) = {n}! / ({k}! · {n - k}!) = {value}."
        code = f"from math import comb\nprint(comb({n}, {k}))"
    else:
        together = math.comb(n - 2, k - 2)
        value = math.comb(n, k) - together
        question = (f"A committee of {k} is chosen from {n} people, two of whom refuse to serve together. "
                    f"How many committees are possible?")
        text = (f"All committees: C({n}, {k}) = {math.comb(n, k)}. Those with both of the two: C({n - 2}, {k - 2}) = "
                f"{together}. So {math.comb(n, k)} − {together} = {value}.")
        code = f"from math import comb\nprint(comb({n}, {k}) - comb({n - 2}, {k - 2}))"
    return _Steps(question, "I will count with binomial coefficients.", code, text, f"There are {value} ways.", value)


FAMILIES: dict[str, Callable[[random.Random], _Steps]] = {
    "arithmetic": _arithmetic, "modpow": _modpow, "factor": _factor, "counting": _counting,
    "linear": _linear, "series": _series, "combinatorics": _combinatorics,
}


def _equation(row: list[int], b: int) -> str:
    """``[2, -1, 0], 5`` → ``2x - y = 5``."""
    terms = ""
    for c, v in zip(row, "xyz"):
        if c:
            terms += f" {'-' if c < 0 else '+'} {'' if abs(c) == 1 else abs(c)}{v}"
    terms = terms.strip()
    terms = terms[2:] if terms.startswith("+ ") else "-" + terms[2:]
    return f"{terms} = {b}"


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _det(m: list[list[int]]) -> int:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


def _cell(code: str) -> str:
    """One block in ReTool's tags, without its output: verification runs it and inserts that."""
    return f"<code>\n```python\n{code}\n```\n</code>\n"


def make_example(steps: _Steps, family: str) -> Example:
    digest = hashlib.sha256(steps.question.encode()).hexdigest()[:12]
    later = "".join(f"{sentence}\n{_cell(code)}" for sentence, code in steps.more)
    code_solution = (f"{steps.plan}\n{_cell(steps.code)}{later}"
                     f"{steps.conclusion}\n{_answer_section(steps.answer)}")
    text_solution = f"{steps.text_steps}\n{steps.conclusion}\n{_answer_section(steps.answer)}"
    return Example(f"{family}-{digest}", family, steps.question, str(steps.answer), code_solution, text_solution)


def generate(n: int, seed: int = 0, families: dict[str, Callable[[random.Random], _Steps]] | None = None) -> list[Example]:
    """``n`` distinct examples, families in rotation (``FAMILIES`` unless given); the same
    ``(n, seed, families)`` gives the same list."""
    rng = random.Random(seed)
    families = FAMILIES if families is None else families
    names = list(families)
    examples, seen = [], set()
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise RuntimeError(f"could not make {n} distinct problems")
        family = names[len(examples) % len(names)]
        steps = families[family](rng)
        if steps.question in seen:
            continue
        seen.add(steps.question)
        examples.append(make_example(steps, family))
    return examples


def is_heldout(example: Example, fraction: float) -> bool:
    """Stable split: a hash of the question, not the position, decides."""
    bucket = int(hashlib.sha256(("heldout:" + example.question).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < fraction
