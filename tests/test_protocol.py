"""Dialects: code extraction, output rendering, answers."""

from retool.protocol import FENCED, RETOOL, build_messages, get_dialect, last_boxed, output_text, truncate_middle
from retool.sandbox.base import ExecResult, ExecStatus

import pytest


def test_retool_code_block_is_extracted_only_when_the_turn_ends_with_it():
    turn = "Reasoning.\n<code>\n```python\nx = 2\nprint(x ** 10)\n```\n</code>"
    assert RETOOL.extract_code(turn) == "x = 2\nprint(x ** 10)"
    assert RETOOL.extract_code(turn + "\n") == "x = 2\nprint(x ** 10)"
    assert RETOOL.extract_code(turn + " and then more") is None
    assert RETOOL.extract_code("no code here </code>") is None
    assert RETOOL.extract_code("<code>\nprint(1)\n</code>") == "print(1)"  # fence optional
    two = "<code>\n```python\na = 1\n```\n</code> ok <code>\n```python\nb = 2\n```\n</code>"
    assert RETOOL.extract_code(two) == "b = 2"


def test_fenced_code_block_ends_at_the_output_fence():
    turn = "Compute:\n```python\nprint(2**10)\n```\n```output"
    assert FENCED.extract_code(turn) == "print(2**10)"
    chatty = "```python\nprint(2**100 % 97)\n```\nThis will give us the remainder.\n```output"
    assert FENCED.extract_code(chatty) == "print(2**100 % 97)"
    assert FENCED.extract_code("```python\na = 1\n```\n```python\nb = 2\n```\n```output") == "b = 2"
    assert FENCED.stop_strings == ("```output",)
    assert RETOOL.stop_strings == ("</code>", "</answer>")


def test_rendering_by_status():
    ok = ExecResult(ExecStatus.OK, stdout="22\n")
    assert RETOOL.render_output(ok) == "\n<interpreter>\n22\n</interpreter>\n"
    assert FENCED.render_output(ok) == "\n22\n```\n"
    assert output_text(ExecResult(ExecStatus.OK)) == "(no output)"
    err = ExecResult(ExecStatus.ERROR, stdout="partial\n", error="ZeroDivisionError: division by zero")
    assert output_text(err) == "partial\nZeroDivisionError: division by zero"
    reset = ExecResult(ExecStatus.CRASHED, error="KernelDied: the interpreter died (exit status 1)", session_reset=True)
    assert output_text(reset).endswith("(the interpreter was restarted: earlier variables are gone)")


def test_long_output_keeps_head_and_tail():
    text = "".join(f"{i}\n" for i in range(1000))
    cut = truncate_middle(text, 20, 10)
    assert cut.startswith(text[:20]) and cut.endswith(text[-10:])
    assert f"[{len(text) - 30} characters truncated]" in cut
    assert truncate_middle("short", 20, 10) == "short"


def test_last_boxed_matches_braces():
    assert last_boxed(r"\boxed{\frac{1}{2}} then \boxed{721} wait no \boxed{720}") == "720"
    assert last_boxed(r"\boxed{\frac{a}{b^{2}}}") == r"\frac{a}{b^{2}}"
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed{unclosed") is None


def test_answer_prefers_the_answer_section_and_ignores_code():
    text = "<code>\n```python\nprint('\\boxed{7}')\n```\n</code> \\boxed{3}\n<answer>\n\\boxed{42}\n</answer>"
    assert RETOOL.find_answer(text) == "42"
    assert RETOOL.find_answer("<code>\n```python\nprint('\\boxed{7}')\n```\n</code>") is None
    assert FENCED.find_answer("```python\nprint('\\boxed{7}')\n```\n```output So \\boxed{9}") == "9"


def test_open_block_detection_and_dialect_lookup():
    assert RETOOL.has_open_code("text <code>\n```python\nprint(1")
    assert not RETOOL.has_open_code("<code>\nprint(1)\n</code>")
    assert get_dialect("fenced") is FENCED
    with pytest.raises(ValueError, match="unknown dialect"):
        get_dialect("nope")


def test_prompt_messages_teach_the_dialect():
    messages = build_messages("What is 1+1?", RETOOL)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "<code>" in messages[0]["content"] and "<answer>" in messages[0]["content"]
    example = messages[2]["content"]
    assert RETOOL.extract_code(example[: example.index("</code>") + len("</code>")]) is not None
    assert build_messages("q", FENCED, few_shot=False)[-1] == {"role": "user", "content": "q"}
