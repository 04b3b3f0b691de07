"""Grading: answer extraction (model text only), equivalence (integer fast path, strict math-verify),
reward. Every expectation below was checked by hand."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from retool.grading import (RewardConfig, Verdict, extract_answer, extract_answer_from_trajectory,
                            grade_trajectory, is_equivalent, judge_answer, reward)
from retool.protocol import FENCED, RETOOL
from retool.trajectory import Trajectory

from tiny import tiny_tokenizer

# -- extraction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    (r"first \boxed{3}, then \boxed{4}, finally \boxed{5}", "5"),  # several boxes: the last wins
    (r"\boxed{721} wait no \boxed{720}", "720"),
    (r"so \boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
    (r"\boxed{\frac{\sqrt{2}}{2}} done", r"\frac{\sqrt{2}}{2}"),
    (r"\fbox{17}", "17"),
    (r"\boxed {9}", "9"),
    ("no box here, the answer is 42", None),
    ("", None),
    (r"\boxed{unclosed", None),
])
def test_extract_answer_boxes(text, expected):
    assert extract_answer(text) == expected


def test_answer_section_wins_over_a_later_box():
    # Decision: the answer section is the model's declared answer; prose after it does not change it.
    assert extract_answer("<answer>\n\\boxed{5}\n</answer>\nActually maybe \\boxed{6}") == "5"


def test_box_in_answer_section_wins_over_earlier_boxes():
    text = "Try \\boxed{1}. No: \\boxed{2}.\n<answer>\n\\boxed{3}\n</answer>"
    assert extract_answer(text) == "3"


def test_last_answer_section_and_its_last_box():
    text = "<answer>\\boxed{1}</answer> hmm <answer>\\boxed{2} or \\boxed{7}</answer>"
    assert extract_answer(text) == "7"


def test_bare_answer_section():
    assert extract_answer("<answer>42</answer>") == "42"
    assert extract_answer("<answer>\n  42 \n</answer>") == "42"
    assert extract_answer("<answer>\n</answer>") is None
    long_prose = "<answer>\n" + "I think it is probably forty-two but " * 5 + "\n</answer>"
    assert extract_answer(long_prose) is None


def test_interpreter_output_and_code_never_count_in_text():
    text = ("Compute.\n<code>\n```python\nprint('\\\\boxed{7}')\n```\n</code>\n<interpreter>\n\\boxed{7}\n"
            "</interpreter>\nThat is the value.")
    assert extract_answer(text) is None
    assert extract_answer(text + " So \\boxed{7}.") == "7"


def test_fenced_dialect_output_never_counts():
    tool_call = "```python\nprint(r'\\boxed{9}')\n```\n```output\n\\boxed{9}\n```\n"
    assert extract_answer(tool_call + "So the answer is \\boxed{8}.", FENCED) == "8"
    assert extract_answer(tool_call + "So that is it.", FENCED) is None


# -- trajectories: only mask-1 tokens are read ---------------------------------------------------


def _traj(*parts: tuple[str, str]) -> Trajectory:
    tok = tiny_tokenizer()
    traj = Trajectory(prompt_ids=tok.encode("problem", add_special_tokens=False))
    for who, text in parts:
        ids = tok.encode(text, add_special_tokens=False)
        traj.append_model(ids) if who == "model" else traj.append_tool(ids)
    return traj


def test_number_only_in_interpreter_output_is_no_answer():
    traj = _traj(("model", "Let me compute.\n<code>\n```python\nprint(6 * 7)\n```\n</code>"),
                 ("tool", "\n<interpreter>\n\\boxed{42}\n</interpreter>\n"),
                 ("model", "The interpreter printed the value, so that is it."))
    tok = tiny_tokenizer()
    assert "\\boxed{42}" in tok.decode(traj.ids)  # it is in the trajectory...
    assert extract_answer_from_trajectory(traj, tok, RETOOL) is None  # ...but not the model's
    verdict = grade_trajectory(traj, tok, RETOOL, "42")
    assert verdict == Verdict(None, False, "none")
    assert reward(verdict) == -1.0 and reward(verdict, RewardConfig(no_answer=0.0)) == 0.0


def test_model_answer_after_tool_call_counts():
    traj = _traj(("model", "Let me compute.\n<code>\n```python\nprint(6 * 7)\n```\n</code>"),
                 ("tool", "\n<interpreter>\n42\n</interpreter>\n"),
                 ("model", "So:\n<answer>\n\\boxed{42}\n</answer>"))
    tok = tiny_tokenizer()
    assert extract_answer_from_trajectory(traj, tok, RETOOL) == "42"
    assert grade_trajectory(traj, tok, RETOOL, "42") == Verdict("42", True, "string")
    assert reward(grade_trajectory(traj, tok, RETOOL, "42")) == 1.0
    assert grade_trajectory(traj, tok, RETOOL, "041") == Verdict("42", False, "fast")


# -- equivalence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pred, gold, expected", [
    ("025", "25", True), ("-025", "-25", True), (r"\text{25}", "25", True), (r"\textbf{25}", "25", True),
    (r"\mathrm{25}", "25", True), (r"25^\circ", "25", True), (r"25^{\circ}", "25", True), ("25°", "25", True),
    ("$25$", "25", True), ("25.", "25", True), (" 25 ", "25", True), (r"\frac{50}{2}", "25", True),
    (r"\dfrac{50}{2}", "25", True), ("50/2", "25", True), ("1,000", "1000", True), ("1,000,000", "1000000", True),
    (r"1\,000", "1000", True), (r"1\!000", "1000", True), ("1{,}000", "1000", True),
    ("12,5", "125", False),  # not 3-digit groups: not a thousands separator
    ("24", "25", False), ("-25", "25", False), ("250", "25", False), (r"\frac{1}{2}", r"\frac{2}{4}", True),
    (r"-\frac{3}{4}", r"\frac{-3}{4}", True), (r"\frac{1}{3}", "1/3", True), (r"\frac{1}{0}", "5", False),
])
def test_fast_path_cases(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


@pytest.mark.parametrize("pred, gold, expected", [
    (r"\frac{1}{2}", "0.5", True), ("0.5", r"\frac{1}{2}", True),
    (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}", True), (r"2\sqrt{3}", r"\sqrt{12}", True),
    (r"\frac{1+\sqrt{5}}{2}", r"\frac{\sqrt5+1}{2}", True),
    (r"2\pi", "6.28", False), ("6.28", r"2\pi", False),  # strict: no loose numeric match
    ("0.333", r"\frac{1}{3}", False),
    ("pi/2", r"\frac{\pi}{2}", True), ("2**10", "1024", True), (r"2^{10}", "1024", True),
    ("x+1", "1+x", True), ("y+1", "x+1", False), (r"x^2-1", "(x-1)(x+1)", True),
    ("[1,2)", "[1,2)", True), ("(1,2]", "[1,2)", False), ("(1,2)", "(2,1)", False),  # intervals / tuples
    (r"\{1,2\}", r"\{2,1\}", True), ("1,2", "2,1", True),  # sets
    (r"\begin{pmatrix}1\\2\end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
    ("x=25", "25", True), (r"25\%", "25", True), ("2.5", "2.50", True),
    (r"\sqrt{2}", r"\sqrt{3}", False), (r"\frac{\pi}{3}", r"\frac{\pi}{4}", False),
])
def test_math_verify_cases(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


def test_no_answer_and_junk():
    assert is_equivalent(None, "25") is False
    assert is_equivalent("", "25") is False
    assert is_equivalent(r"\frac{1}{", "25") is False
    assert is_equivalent("7" * 2000, "25") is False  # over MAX_CHARS: string comparison only
    assert judge_answer("7" * 2000, "25") == Verdict("7" * 2000, False, "too_long")


def test_paths_are_reported():
    assert judge_answer("025", "25").method == "fast"
    assert judge_answer(r"\text{25}", "25") == Verdict(r"\text{25}", True, "string")
    assert judge_answer(r"\frac{1}{2}", "0.5") == Verdict(r"\frac{1}{2}", True, "math_verify")
    assert judge_answer(None, "25") == Verdict(None, False, "none")


@pytest.mark.parametrize("pred", [r"10^{10^{10}}", "1000000!", r"2^{2^{2^{2^{2}}}}", r"9^{9^{9}}",
                                  r"\sum_{k=1}^{10^{9}} k"])
def test_astronomical_expressions_are_refused_quickly(pred):
    # math-verify's signal timeout is off, so without the guard sympy would evaluate these forever.
    start = time.perf_counter()
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(is_equivalent(pred, "5")), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert result == [False]
    assert time.perf_counter() - start < 10


THREAD_CASES = [
    ("025", "25"), (r"\frac{1}{2}", "0.5"), (r"\sqrt{2}/2", r"\frac{\sqrt{2}}{2}"), (r"2\pi", "6.28"),
    ("0.333", r"\frac{1}{3}"), ("x+1", "1+x"), ("[1,2)", "[1,2)"), ("(1,2]", "[1,2)"), ("24", "25"),
    (r"\frac{50}{2}", "25"), (r"2\sqrt{3}", r"\sqrt{12}"), (r"x^2-1", "(x-1)(x+1)"), ("pi/2", r"\frac{\pi}{2}"),
    (r"\{1,2\}", r"\{2,1\}"), (r"\sqrt{2}", r"\sqrt{3}"), (r"25\%", "25"), (r"10^{10^{10}}", "5"),
]


def test_is_equivalent_from_8_threads_matches_main_thread():
    expected = [is_equivalent(p, g) for p, g in THREAD_CASES]
    work = THREAD_CASES * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda pg: is_equivalent(*pg), work))
    assert got == expected * 8


# -- reward ----------------------------------------------------------------------------------------


def test_reward_is_a_pure_rule_on_the_verdict():
    def grade_text(text: str) -> Verdict:
        return judge_answer(extract_answer(text), "25")

    right, wrong = grade_text("So\n<answer>\n\\boxed{025}\n</answer>"), grade_text("<answer>\\boxed{24}</answer>")
    missing = grade_text("no answer at all")
    assert (right.correct, wrong.correct, missing.answer) == (True, False, None)
    assert [reward(v) for v in (right, wrong, missing)] == [1.0, -1.0, -1.0]
    scaled = RewardConfig(correct=2.0, incorrect=0.0)
    assert [reward(v, scaled) for v in (right, wrong, missing)] == [2.0, 0.0, 0.0]
    config = RewardConfig(correct=1.0, incorrect=0.0, no_answer=-0.5)
    assert [reward(v, config) for v in (right, wrong, missing)] == [1.0, 0.0, -0.5]
    assert reward(Verdict("7", True, "stored"), config) == 1.0  # the rule reads nothing but the verdict


def test_reward_config_is_frozen():
    with pytest.raises(Exception):
        RewardConfig().correct = 5.0  # type: ignore[misc]
