"""Multi-step problems: two or three dependent code cells per solution, each after its own sentence.

``synth`` and ``synth_general`` solve every problem in one block, so a process reward model (a
verifier that scores each step, ``retool.prm``) has one step to judge and nothing to tell apart.
Here each problem needs a chain: find a quantity, then use it in a second computation (and a
third). The question never states the intermediate value, so a later step can only be right if the
earlier one was. Each later cell uses the *names* the earlier cells defined, as a model does in a
stateful interpreter (``retool.sandbox``: names persist between cells; the rollout and the
pipeline's default Jupyter session are stateful), and prints its own result, so every step has an
interpreter output of its own for a step-level verifier to check against.

The text-only solution writes the same chain by hand, one sentence per step with its exact value.
Everything else (ids, held-out split, verification) is ``synth``'s: ``generate(n, seed,
MULTISTEP_FAMILIES)``, then ``retool.coldstart.pipeline``. Families: the n-th prime, then the digit
sum of a power of it, then a modular power of both; a 2×2 linear system, then a polynomial at its
solution; lattice paths through or around a point, then a modular power of their number; a sum of
a series, then its largest prime factor or its number of divisors.

Not here: floats, and any wording of ``evals/benchmarks/novel20.jsonl`` (checked by a test).
"""

from __future__ import annotations

import math
import random
from typing import Callable

from retool.coldstart.synth import _equation, _is_prime, _Steps
from retool.coldstart.synth_general import _prime_number

MULTISTEP_VERSION = "multistep-1"

_MODULI = [p for p in range(101, 10_000) if _is_prime(p)]


def _ordinal(k: int) -> str:
    """``1`` → ``1st``, ``12`` → ``12th``, ``1023`` → ``1023rd``: the questions read as English."""
    suffix = "th" if k % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _factorize(n: int) -> dict[int, int]:
    """Trial division (the generator's own value, independent of the sympy the code uses)."""
    factors: dict[int, int] = {}
    d = 2
    while d * d <= n:
        while n % d == 0:
            factors[d] = factors.get(d, 0) + 1
            n //= d
        d += 1
    if n > 1:
        factors[n] = factors.get(n, 0) + 1
    return factors


def _repeated_squaring(base: int, exponent: int, m: int) -> str:
    """The hand computation of ``pow(base, exponent, m)``, as the text solution writes it."""
    squares, power = [], base % m
    for _ in range(exponent.bit_length()):
        squares.append(power)
        power = power * power % m
    bits = [bit for bit in range(exponent.bit_length()) if exponent >> bit & 1]
    chosen = " + ".join(str(1 << bit) for bit in bits)
    used = ", ".join(str(squares[bit]) for bit in bits)
    reduced = f" ({base} ≡ {base % m})" if base >= m else ""
    return (f"by repeated squaring modulo {m}{reduced}, with {exponent} = {chosen}, the product of "
            f"{used} modulo {m} is {pow(base, exponent, m)}")


# -- families -----------------------------------------------------------------------------------


def _prime_digit_power(rng: random.Random) -> _Steps:
    """Three cells: p = the k-th prime; s = digit sum of p^e; s^p mod m (uses p and s)."""
    k, e, m = rng.randint(200, 3000), rng.randint(8, 40), rng.choice(_MODULI)
    p = _prime_number(k)
    power = str(p**e)
    s = sum(int(d) for d in power)
    value = pow(s, p, m)
    question = rng.choice([
        (f"Let p be the {_ordinal(k)} prime and let s be the sum of the decimal digits of p^{e}. "
         f"What is the remainder when s^p is divided by {m}?"),
        (f"Take the {_ordinal(k)} prime number p, raise it to the power {e}, and add up the digits of the result "
         f"to get s. Find s to the power p, modulo {m}."),
        f"If p is prime number {k} (counting 2 as the first) and s is the digit sum of p**{e}, compute s^p mod {m}.",
    ])
    text = (f"Listing primes in order, the {_ordinal(k)} prime is p = {p}. Then {p}^{e} has {len(power)} digits, "
            f"which add up to s = {s}. Finally, {_repeated_squaring(s, p, m)}.")
    return _Steps(question, f"First I need the {_ordinal(k)} prime; sympy can find it.",
                  f"from sympy import prime\np = prime({k})\nprint(p)", text, f"So s^p mod {m} = {value}.", value,
                  more=((f"Next, the digit sum of p^{e}, with p from the cell above.",
                         f"s = sum(int(d) for d in str(p**{e}))\nprint(s)"),
                        (f"Finally the modular power s^p mod {m}, using both p and s.", f"print(pow(s, p, {m}))")))


_MONOMIALS = [(3, 0), (2, 1), (1, 2), (0, 3), (2, 0), (1, 1), (0, 2), (1, 0), (0, 1), (4, 0), (0, 4), (2, 2)]


def _term(c: int, i: int, j: int, caret: bool) -> str:
    """One monomial: ``3x^2y`` (question, ``caret``) or ``3*x**2*y`` (code)."""
    parts = [v if n == 1 else (f"{v}^{n}" if caret else f"{v}**{n}") for v, n in (("x", i), ("y", j)) if n]
    body = ("" if caret else "*").join(parts)
    if not parts:
        return str(abs(c))
    return body if abs(c) == 1 else (f"{abs(c)}{body}" if caret else f"{abs(c)}*{body}")


def _polynomial(terms: list[tuple[int, int, int]], caret: bool) -> str:
    """``[(3, 2, 0), (-1, 0, 1)]`` → ``3x^2 - y`` (or ``3*x**2 - y``)."""
    text = ""
    for index, (c, i, j) in enumerate(terms):
        sign = ("-" if c < 0 else "") if index == 0 else (" - " if c < 0 else " + ")
        text += sign + _term(c, i, j, caret)
    return text


def _system_poly(rng: random.Random) -> _Steps:
    """Two cells: solve a 2×2 system (x, y); evaluate a polynomial at (x, y) (uses x and y)."""
    while True:
        x, y = rng.randint(-9, 9), rng.randint(-9, 9)
        matrix = [[rng.randint(-9, 9) for _ in range(2)] for _ in range(2)]
        det = matrix[0][0] * matrix[1][1] - matrix[0][1] * matrix[1][0]
        if det and all(any(row) for row in matrix) and (x, y) != (0, 0):
            break
    rhs = [row[0] * x + row[1] * y for row in matrix]
    monomials = rng.sample(_MONOMIALS, rng.randint(3, 4)) + [(0, 0)] * (rng.random() < 0.5)
    terms = [(rng.choice([c for c in range(-9, 10) if c]), i, j) for i, j in monomials]
    values = [c * x**i * y**j for c, i, j in terms]
    value = sum(values)
    eq1, eq2 = (_equation(row, b) for row, b in zip(matrix, rhs))
    poly = _polynomial(terms, caret=True)
    question = rng.choice([f"The numbers x and y satisfy {eq1} and {eq2}. What is the value of {poly}?",
                           f"Solve the system {eq1}; {eq2}, then evaluate {poly} at the solution.",
                           f"Find {poly}, where (x, y) is the solution of {eq1}, {eq2}."])
    dx, dy = rhs[0] * matrix[1][1] - matrix[0][1] * rhs[1], matrix[0][0] * rhs[1] - rhs[0] * matrix[1][0]
    text = (f"By Cramer's rule the determinant is {det}, and replacing each column by the right-hand side gives "
            f"{dx} and {dy}, so x = {dx}/{det} = {x} and y = {dy}/{det} = {y}. Substituting term by term: "
            + " + ".join(f"({v})" for v in values) + f" = {value}.")
    code = f"from sympy import Matrix\nA = Matrix({matrix})\nb = Matrix({rhs})\nx, y = A.LUsolve(b)\nprint(x, y)"
    return _Steps(question, "First I solve the linear system exactly.", code, text, f"So the value is {value}.", value,
                  more=(("Now I evaluate the polynomial at that solution, with x and y from the cell above.",
                         f"print({_polynomial(terms, caret=False)})"),))


def _paths_modpow(rng: random.Random) -> _Steps:
    """Two cells: N = lattice paths through (or avoiding) a point; N^e mod m (uses N)."""
    a, b = rng.randint(6, 30), rng.randint(6, 30)
    c, d = rng.randint(1, a - 1), rng.randint(1, b - 1)
    e, m = rng.randint(20, 400), rng.choice(_MODULI)
    first, second = math.comb(c + d, c), math.comb(a - c + b - d, a - c)
    through = rng.random() < 0.5
    total = math.comb(a + b, a)
    n = first * second if through else total - first * second
    value = pow(n, e, m)
    condition = f"pass through ({c}, {d})" if through else f"avoid the point ({c}, {d})"
    question = rng.choice([
        (f"Let N be the number of shortest lattice paths from (0, 0) to ({a}, {b}) that {condition}. "
         f"Compute N^{e} mod {m}."),
        (f"A walker takes unit steps east or north from (0, 0) to ({a}, {b}) and must {condition} on the way. "
         f"If N is the number of possible walks, what is the remainder of N^{e} upon division by {m}?"),
        (f"Count the up/right paths from (0, 0) to ({a}, {b}) that {condition}; call the count N. "
         f"Find N to the power {e} modulo {m}."),
    ])
    split = f"C({c + d}, {c}) · C({a - c + b - d}, {a - c}) = {first} · {second} = {first * second}"
    count = (f"Paths through ({c}, {d}): {split}, so N = {n}." if through else
             f"All paths: C({a + b}, {a}) = {total}; those through ({c}, {d}): {split}; so N = {total} − "
             f"{first * second} = {n}.")
    text = f"{count} Then, {_repeated_squaring(n, e, m)}."
    formula = f"comb({c} + {d}, {c}) * comb({a - c} + {b - d}, {a - c})"
    formula = formula if through else f"comb({a} + {b}, {a}) - {formula}"
    code = f"from math import comb\nN = {formula}\nprint(N)"
    return _Steps(question, "First I count the paths with binomial coefficients (split at the point).", code, text,
                  f"So N^{e} mod {m} = {value}.", value,
                  more=(("Now the modular power of that count, with N from the cell above.",
                         f"print(pow(N, {e}, {m}))"),))


def _series_factor(rng: random.Random) -> _Steps:
    """Two cells: S = a sum of a series; its largest prime factor or divisor count (uses S)."""
    n, c = rng.randint(50, 3000), rng.randint(1, 99)
    square = rng.random() < 0.5
    s1, s2, s3 = n * (n + 1) // 2, n * (n + 1) * (2 * n + 1) // 6, (n * (n + 1) // 2) ** 2
    total = s2 + c * n if square else s3 + c * s1
    factors = _factorize(total)
    largest = rng.random() < 0.5
    value = max(factors) if largest else math.prod(k + 1 for k in factors.values())
    term, code_term = (f"(k^2 + {c})", f"k**2 + {c}") if square else (f"(k^3 + {c}k)", f"k**3 + {c}*k")
    lead, name = rng.choice([(f"Let S be the sum of {term} for k = 1, 2, ..., {n}.", "S"),
                             (f"Add up {term} over every integer k from 1 to {n}.", "that total")])
    ask = rng.choice(["What is the largest prime factor of {}?", "Find the greatest prime dividing {}."] if largest
                     else ["How many positive divisors does {} have?", "Find the number of positive divisors of {}."])
    question = f"{lead} {ask.format(name)}"
    closed = (f"Σk² = {s2} and {c}·{n} = {c * n}, so S = {total}." if square else
              f"Σk³ = {s3} and {c}·Σk = {c}·{s1} = {c * s1}, so S = {total}.")
    factored = " × ".join(f"{p}^{k}" if k > 1 else str(p) for p, k in factors.items())
    finish = (f"the largest prime is {value}." if largest else
              "the divisor count is " + " · ".join(str(k + 1) for k in factors.values()) + f" = {value}.")
    text = f"{closed} Dividing out primes in turn, S = {factored}; {finish}"
    last = "print(max(f))" if largest else "from math import prod\nprint(prod(k + 1 for k in f.values()))"
    first = f"S = sum({code_term} for k in range(1, {n} + 1))\nprint(S)"
    return _Steps(question, "First I add up the series exactly.", first, text, f"The answer is {value}.", value,
                  more=(("Now I factor that sum with sympy, using S from the cell above.",
                         f"from sympy import factorint\nf = factorint(S)\nprint(f)\n{last}"),))


MULTISTEP_FAMILIES: dict[str, Callable[[random.Random], _Steps]] = {
    "prime_digit_power": _prime_digit_power, "system_poly": _system_poly, "paths_modpow": _paths_modpow,
    "series_factor": _series_factor,
}
