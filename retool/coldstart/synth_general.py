"""General computational problems: many everyday kinds of counting and arithmetic, several wordings each.

``synth`` makes seven tightly templated families, good for measuring what RL changes but narrow:
a model trained only on them answers "modular power" to everything. These families are broader —
digit sums, primes, divisors, gcd/lcm, recurrences, growth, totals of purchases, lattice paths,
factorials, conditions on digits, sums of multiples — so that SFT teaches the translation from an
unfamiliar sentence into a short program rather than seven programs. Each still has one exact
integer answer, a one-sentence plan, a small program and a worked text solution, and goes through
the same verification as ``synth`` (``retool.coldstart.pipeline``).

Deliberately not here: any wording of the hand-written probe set ``evals/benchmarks/novel20.jsonl``
(that set measures wording the generators never show), and families that need floats.
"""

from __future__ import annotations

import math
import random
from typing import Callable

from retool.coldstart.synth import _is_prime, _Steps

GENERAL_VERSION = "general-1"


def _digit_sum(rng: random.Random) -> _Steps:
    a, e = rng.randint(2, 19), rng.randint(30, 300)
    value = sum(int(d) for d in str(a**e))
    question = rng.choice([f"Add up the digits of {a}^{e}.", f"Find the digit sum of {a} to the power {e}.",
                           f"If you write out {a}**{e} in full, what do its decimal digits sum to?"])
    return _Steps(question, "The number is too long to expand by hand, so I will let Python write it out.",
                  f"n = {a}**{e}\nprint(sum(int(d) for d in str(n)))",
                  f"{a}^{e} has {len(str(a**e))} digits; adding them one by one gives {value}.",
                  f"The digits add up to {value}.", value)


def _prime_count(rng: random.Random) -> _Steps:
    lo = rng.randint(1, 50_000)
    hi = lo + rng.randint(100, 20_000)
    value = sum(1 for k in range(lo, hi + 1) if _is_prime(k))
    question = rng.choice([f"Count the primes between {lo} and {hi}, inclusive.",
                           f"How many primes does the interval [{lo}, {hi}] contain?",
                           f"Among the integers {lo}, {lo + 1}, ..., {hi}, how many are prime?"])
    return _Steps(question, "I will test every number in the range with sympy's isprime.",
                  f"from sympy import isprime\nprint(sum(1 for k in range({lo}, {hi} + 1) if isprime(k)))",
                  f"Sieving the range from {lo} to {hi} leaves {value} primes.", f"There are {value} primes.", value)


def _nth_prime(rng: random.Random) -> _Steps:
    if rng.random() < 0.5:
        k = rng.randint(100, 5000)
        value = _prime_number(k)
        question = rng.choice([f"Find the {k}th prime number.", f"Which prime is number {k} in the list 2, 3, 5, 7, 11, ...?"])
        code = f"from sympy import prime\nprint(prime({k}))"
        text = f"Listing primes in order, the {k}th one is {value}."
    else:
        n = rng.randint(10_000, 5_000_000)
        value = next(p for p in range(n + 1, 2 * n + 2) if _is_prime(p))
        question = rng.choice([f"What is the first prime after {n}?", f"Find the least prime exceeding {n}."])
        code = f"from sympy import nextprime\nprint(nextprime({n}))"
        text = f"Testing {n + 1}, {n + 2}, ... in turn, the first prime is {value}."
    return _Steps(question, "I will ask sympy for the prime.", code, text, f"The prime is {value}.", value)


def _prime_number(k: int) -> int:
    count, n = 0, 1
    while count < k:
        n += 1
        count += _is_prime(n)
    return n


def _gcd_lcm(rng: random.Random) -> _Steps:
    common = rng.randint(2, 500)
    a, b = common * rng.randint(2, 3000), common * rng.randint(2, 3000)
    if rng.random() < 0.5:
        value = math.gcd(a, b)
        question = rng.choice([f"Find gcd({a}, {b}).", f"What is the highest common factor of {a} and {b}?",
                               f"What is the largest whole number dividing both {a} and {b}?"])
        code, text = f"from math import gcd\nprint(gcd({a}, {b}))", f"By Euclid's algorithm on {a} and {b}, the gcd is {value}."
    else:
        c = rng.randint(2, 60)
        value = math.lcm(a, b, c)
        question = rng.choice([f"Find the lowest common multiple of {a}, {b} and {c}.",
                               f"What is the smallest positive number that {a}, {b} and {c} all divide?"])
        code, text = f"from math import lcm\nprint(lcm({a}, {b}, {c}))", f"lcm({a}, {b}, {c}) = {value}."
    return _Steps(question, "Python's math module computes this exactly.", code, text, f"The answer is {value}.", value)


def _recurrence(rng: random.Random) -> _Steps:
    x, y, n = rng.randint(1, 9), rng.randint(1, 9), rng.randint(15, 70)
    c = rng.choice([0, 0, 1, 2])
    terms = [x, y]
    while len(terms) < n:
        terms.append(terms[-1] + terms[-2] + c)
    value = terms[n - 1]
    rule = "the sum of the two before it" + (f" plus {c}" if c else "")
    question = rng.choice([f"A sequence has a_1 = {x}, a_2 = {y}, and every later term is {rule}. Find a_{n}.",
                           f"Start with {x} and {y}; each next number is {rule}. What is number {n} in the list?"])
    code = (f"a, b = {x}, {y}\nfor _ in range({n} - 2):\n    a, b = b, a + b{f' + {c}' if c else ''}\nprint(b)")
    text = f"Writing the terms out: {', '.join(map(str, terms[:6]))}, ... ; term {n} is {value}."
    return _Steps(question, "I will run the recurrence in a loop.", code, text, f"Term {n} is {value}.", value)


def _divisors(rng: random.Random) -> _Steps:
    n = math.prod(rng.choice([2, 3, 5, 7, 11, 13]) for _ in range(rng.randint(3, 9))) * rng.randint(1, 50)
    divisors = [d for d in range(1, n + 1) if n % d == 0] if n < 3_000_000 else None
    if divisors is None:
        return _divisors(rng)
    if rng.random() < 0.5:
        value = len(divisors)
        question = rng.choice([f"Count the divisors of {n}.", f"How many whole numbers divide {n} exactly?",
                               f"Find the number of positive factors of {n}."])
        code = f"from sympy import divisors\nprint(len(divisors({n})))"
    else:
        value = sum(divisors)
        question = rng.choice([f"What is the sum of all positive divisors of {n}?",
                               f"Add up every positive integer that divides {n}."])
        code = f"from sympy import divisors\nprint(sum(divisors({n})))"
    return _Steps(question, "I will list the divisors with sympy.", code,
                  f"The divisors of {n} are {', '.join(map(str, divisors[:5]))}, ..., {n}; the answer is {value}.",
                  f"The answer is {value}.", value)


def _big_product(rng: random.Random) -> _Steps:
    nums = [rng.randint(1000, 99_999_999) for _ in range(rng.randint(2, 3))]
    value = math.prod(nums)
    joined = " · ".join(map(str, nums))
    question = rng.choice([f"Evaluate {joined} exactly.", f"What is the product of {', '.join(map(str, nums))}?",
                           f"Work out {' times '.join(map(str, nums))}."])
    return _Steps(question, "Long multiplication is error-prone, so I will compute it.", f"print({' * '.join(map(str, nums))})",
                  f"Multiplying step by step gives {value}.", f"The product is {value}.", value)


def _power_offset(rng: random.Random) -> _Steps:
    a, e, c = rng.randint(2, 13), rng.randint(20, 90), rng.randint(1, 999)
    sign = rng.choice(["+", "-"])
    value = a**e + c if sign == "+" else a**e - c
    question = rng.choice([f"Find the exact value of {a}^{e} {sign} {c}.",
                           f"What number is {a} to the {e}th power {'plus' if sign == '+' else 'minus'} {c}?"])
    return _Steps(question, "Python integers are exact at any size.", f"print({a}**{e} {sign} {c})",
                  f"{a}^{e} = {a**e}, and {sign} {c} gives {value}.", f"The value is {value}.", value)


def _power_sum(rng: random.Random) -> _Steps:
    n, p = rng.randint(10, 500), rng.randint(2, 6)
    value = sum(k**p for k in range(1, n + 1))
    question = rng.choice([f"Find 1^{p} + 2^{p} + ... + {n}^{p}.",
                           f"What is the total of the {p}th powers of the whole numbers from 1 to {n}?"])
    return _Steps(question, "I will add the powers in a loop.", f"print(sum(k**{p} for k in range(1, {n} + 1)))",
                  f"Adding k^{p} for k = 1..{n} gives {value}.", f"The sum is {value}.", value)


def _factorial(rng: random.Random) -> _Steps:
    n = rng.randint(20, 400)
    kind = rng.choice(["zeros", "digits", "digitsum"])
    f = math.factorial(n)
    if kind == "zeros":
        value = len(str(f)) - len(str(f).rstrip("0"))
        question = rng.choice([f"How many trailing zeros does {n}! end with?", f"With how many zeros does {n} factorial end?"])
        code = f"import math\ns = str(math.factorial({n}))\nprint(len(s) - len(s.rstrip('0')))"
    elif kind == "digits":
        value = len(str(f))
        question = rng.choice([f"How many digits does {n}! have?", f"Written in decimal, how long is {n} factorial?"])
        code = f"import math\nprint(len(str(math.factorial({n}))))"
    else:
        value = sum(map(int, str(f)))
        question = f"What is the sum of the digits of {n}!?"
        code = f"import math\nprint(sum(int(d) for d in str(math.factorial({n}))))"
    return _Steps(question, "I will compute the factorial exactly.", code, f"{n}! has {len(str(f))} digits; the answer is {value}.",
                  f"The answer is {value}.", value)


def _growth(rng: random.Random) -> _Steps:
    start, factor, n = rng.randint(2, 900), rng.randint(2, 7), rng.randint(5, 40)
    value = start * factor**n
    thing, period = rng.choice([("cells", "hour"), ("followers", "month"), ("coins", "round"), ("copies", "day")])
    question = rng.choice([f"Starting from {start}, a number is multiplied by {factor} a total of {n} times. What is the result?",
                           f"There are {start} {thing}, and their number is multiplied by {factor} every {period}. "
                           f"How many {thing} are there after {n} {period}s?"])
    return _Steps(question, "Repeated multiplication is a power; I will compute it.", f"print({start} * {factor}**{n})",
                  f"{start} · {factor}^{n} = {value}.", f"The result is {value}.", value)


def _purchase_total(rng: random.Random) -> _Steps:
    items = rng.sample(["pens", "books", "chairs", "lamps", "tickets", "boxes", "shirts"], rng.randint(2, 3))
    counts = [rng.randint(3, 900) for _ in items]
    prices = [rng.randint(2, 999) for _ in items]
    value = sum(c * p for c, p in zip(counts, prices))
    each = [f"{c} {item} at {p} dollars each" for c, item, p in zip(counts, items, prices)]
    parts = ", ".join(each[:-1]) + " and " + each[-1]
    question = rng.choice([f"A store sells {parts}. How many dollars does it take in?",
                           f"What is the total cost of buying {parts}?"])
    code = "print(" + " + ".join(f"{c} * {p}" for c, p in zip(counts, prices)) + ")"
    text = " + ".join(f"{c}·{p}" for c, p in zip(counts, prices)) + f" = {value}."
    return _Steps(question, "The total is a sum of count times price.", code, text, f"The total is {value} dollars.", value)


def _lattice_paths(rng: random.Random) -> _Steps:
    a, b = rng.randint(3, 20), rng.randint(3, 20)
    value = math.comb(a + b, a)
    question = rng.choice([f"How many shortest grid paths go from (0, 0) to ({a}, {b}) using unit steps right and up?",
                           f"A robot moves only east or north along streets. How many routes take it {a} blocks east "
                           f"and {b} blocks north?"])
    return _Steps(question, "A path is a choice of which steps go right: a binomial coefficient.",
                  f"from math import comb\nprint(comb({a} + {b}, {a}))", f"C({a + b}, {a}) = {value}.",
                  f"There are {value} paths.", value)


def _digit_condition(rng: random.Random) -> _Steps:
    digits = rng.choice([3, 4, 5])
    lo, hi = 10 ** (digits - 1), 10**digits - 1
    if rng.random() < 0.5:
        s = rng.randint(3, 9 * digits - 3)
        value = sum(1 for k in range(lo, hi + 1) if sum(map(int, str(k))) == s)
        question = rng.choice([f"How many {digits}-digit numbers have digit sum {s}?",
                               f"Count the integers from {lo} to {hi} whose digits total {s}."])
        code = f"print(sum(1 for k in range({lo}, {hi} + 1) if sum(map(int, str(k))) == {s}))"
    else:
        value = sum(1 for k in range(lo, hi + 1) if len(set(str(k))) == digits)
        question = rng.choice([f"How many {digits}-digit numbers have all their digits different?",
                               f"Count the integers from {lo} to {hi} in which no digit repeats."])
        code = f"print(sum(1 for k in range({lo}, {hi} + 1) if len(set(str(k))) == {digits}))"
    return _Steps(question, "I will check every number of that length.", code, f"Checking each number gives {value}.",
                  f"There are {value} such numbers.", value)


def _multiples_sum(rng: random.Random) -> _Steps:
    n, a = rng.randint(100, 100_000), rng.randint(2, 15)
    b = rng.choice([k for k in range(2, 20) if k != a])
    value = sum(k for k in range(1, n) if k % a == 0 or k % b == 0)
    question = rng.choice([f"What is the sum of all positive integers below {n} that are multiples of {a} or {b}?",
                           f"Add up every number less than {n} divisible by {a} or by {b}."])
    return _Steps(question, "I will add the qualifying numbers in a loop.",
                  f"print(sum(k for k in range(1, {n}) if k % {a} == 0 or k % {b} == 0))",
                  f"By inclusion–exclusion over multiples of {a}, {b} and their lcm, the sum is {value}.",
                  f"The sum is {value}.", value)


def _residue_count(rng: random.Random) -> _Steps:
    n, m = rng.randint(100, 50_000), rng.randint(3, 13)
    r = rng.randint(0, m - 1)
    power = rng.choice([1, 2, 3])
    value = sum(1 for k in range(1, n + 1) if k**power % m == r)
    expr, code_expr = {1: ("k", "k"), 2: ("k²", "k**2"), 3: ("k³", "k**3")}[power]
    question = rng.choice([f"For how many k with 1 ≤ k ≤ {n} does {expr} leave remainder {r} on division by {m}?",
                           f"Count the integers k from 1 to {n} with {expr} ≡ {r} (mod {m})."])
    return _Steps(question, "I will test each k.", f"print(sum(1 for k in range(1, {n} + 1) if {code_expr} % {m} == {r}))",
                  f"Checking the residues modulo {m} and counting full periods gives {value}.",
                  f"There are {value} such k.", value)


def _box(rng: random.Random) -> _Steps:
    a, b, c = rng.randint(2, 300), rng.randint(2, 300), rng.randint(2, 300)
    volume, surface = a * b * c, 2 * (a * b + b * c + a * c)
    if rng.random() < 0.5:
        value = volume + surface
        question = f"A box measures {a} by {b} by {c}. What is its volume plus its surface area?"
        code = f"a, b, c = {a}, {b}, {c}\nprint(a*b*c + 2*(a*b + b*c + a*c))"
    else:
        value = volume
        question = rng.choice([f"How many unit cubes fill a {a} × {b} × {c} block?",
                               f"A tank is {a} cm long, {b} cm wide and {c} cm deep. What is its volume in cubic cm?"])
        code = f"print({a} * {b} * {c})"
    return _Steps(question, "I will compute it from the side lengths.", code,
                  f"Volume {a}·{b}·{c} = {volume}, surface 2({a}·{b} + {b}·{c} + {a}·{c}) = {surface}; answer {value}.",
                  f"The answer is {value}.", value)


def _stepped_product(rng: random.Random) -> _Steps:
    step = rng.choice([2, 3, 4])
    start, count = rng.randint(1, 9), rng.randint(5, 15)
    stop = start + step * (count - 1)
    value = math.prod(range(start, stop + 1, step))
    question = rng.choice([f"Multiply together the numbers {start}, {start + step}, {start + 2 * step}, ..., {stop}.",
                           f"What is the product of every {step}nd number from {start} up to {stop}?".replace("3nd", "3rd")
                           .replace("4nd", "4th")])
    return _Steps(question, "I will multiply the terms with math.prod.",
                  f"import math\nprint(math.prod(range({start}, {stop} + 1, {step})))",
                  f"The {count} terms multiply to {value}.", f"The product is {value}.", value)


GENERAL_FAMILIES: dict[str, Callable[[random.Random], _Steps]] = {
    "digit_sum": _digit_sum, "prime_count": _prime_count, "nth_prime": _nth_prime, "gcd_lcm": _gcd_lcm,
    "recurrence": _recurrence, "divisors": _divisors, "big_product": _big_product, "power_offset": _power_offset,
    "power_sum": _power_sum, "factorial": _factorial, "growth": _growth, "purchase_total": _purchase_total,
    "lattice_paths": _lattice_paths, "digit_condition": _digit_condition, "multiples_sum": _multiples_sum,
    "residue_count": _residue_count, "box": _box, "stepped_product": _stepped_product,
}
