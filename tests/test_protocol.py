"""Dialects: code extraction, output rendering, answers."""

from retool.protocol import (FENCED, RETOOL, TranscriptError, TranscriptParser, get_dialect, last_boxed, output_text,
                             truncate_middle)
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
    assert RETOOL.parse("text <code>\n```python\nprint(1")[-1].closed is False  # cut by the budget: never run
    assert RETOOL.parse("<code>\nprint(1)\n</code>")[-1].closed
    assert get_dialect("fenced") is FENCED
    with pytest.raises(ValueError, match="unknown dialect"):
        get_dialect("nope")


def test_prompt_messages_teach_the_dialect():
    messages = RETOOL.messages("What is 1+1?")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "<code>" in messages[0]["content"] and "<answer>" in messages[0]["content"]
    example = messages[2]["content"]
    assert RETOOL.extract_code(example[: example.index("</code>") + len("</code>")]) is not None
    assert FENCED.messages("q", few_shot=False)[-1] == {"role": "user", "content": "q"}


# -- the one grammar ---------------------------------------------------------------------------

RETOOL_TRACE = ("Let me compute.\n<code>\n```python\nprint(2**10)\n```\n</code>\n<interpreter>\n1024\n</interpreter>\n"
                "So it is 1024.\n<answer>\n\\boxed{1024}\n</answer>")
FENCED_TRACE = "Let me compute.\n```python\nprint(2**10)\n```\n```output\n1024\n```\nSo it is 1024.\n\\boxed{1024}"


def test_both_dialects_parse_into_the_same_typed_segments():
    def shape(dialect, text):
        return [(s.kind, s.body.strip() if s.kind != "text" else None) for s in dialect.parse(text, strict=True)
                if s.kind != "text" or s.body.strip()]
    retool, fenced = shape(RETOOL, RETOOL_TRACE), shape(FENCED, FENCED_TRACE)
    assert retool[:3] == fenced[:3] == [("text", None), ("code", "print(2**10)"), ("output", "1024")]
    assert retool[-1] == ("answer", "\\boxed{1024}")
    for segment in RETOOL.parse(RETOOL_TRACE):  # spans cover the text exactly, in order
        assert RETOOL_TRACE[segment.start:segment.end].strip() or segment.kind == "text"
    assert "".join(RETOOL_TRACE[s.start:s.end] for s in RETOOL.parse(RETOOL_TRACE)) == RETOOL_TRACE


@pytest.mark.parametrize("bad, fault", [
    ("<code>\nprint(1)\n<answer>", "inside a code block"),
    ("text </interpreter>", "unexpected"),
    ("<code>\nprint(1)\n</code> words <interpreter>\n1\n</interpreter>", "does not follow a code block"),
    ("<answer>\n\\boxed{1}", "unclosed answer"),
])
def test_strict_parsing_names_the_fault(bad, fault):
    with pytest.raises(TranscriptError, match=fault):
        RETOOL.parse(bad, strict=True)
    RETOOL.parse(bad)  # the lenient reading never raises


def test_a_fenced_answer_after_a_tool_call_is_found_in_the_models_own_text():
    # the model's tokens alone: the interpreter's reply is not there, so the text after the stop is the model's
    model_text = "```python\nprint(2)\n```\n```outputSo the answer is \\boxed{2}."
    assert FENCED.find_answer(model_text) == "2"
    # in a whole transcript, the output block is the interpreter's: a box printed there is no answer
    assert FENCED.find_answer("```python\nprint(2)\n```\n```output\n\\boxed{5}\n```\nHmm.", outputs=True) is None


def test_the_stream_parser_tags_chunks_like_the_whole_parse():
    retool = TranscriptParser(RETOOL, outputs=False)
    assert [retool.feed(t) for t in ["Let me ", "<code>", "\nprint(1)", "\n</code>", " then"]] == [
        "text", "code", "code", "code", "text"]
    fenced = TranscriptParser(FENCED, outputs=False)
    assert [fenced.feed(t) for t in ["So ", "```python\n", "print(1)\n", "```", "\nprose"]] == [
        "text", "code", "code", "code", "text"]
    streamed = TranscriptParser(RETOOL)
    for i in range(0, len(RETOOL_TRACE), 3):  # markers split across chunks
        streamed.feed(RETOOL_TRACE[i:i + 3])
    assert streamed.close() == RETOOL.parse(RETOOL_TRACE)


def test_a_fenced_block_shown_but_not_run_is_code_that_never_ran():
    text = "Like this:\n```python\nx = 1\n```\nand then\n```python\nprint(x)\n```\n```output"
    code = [s for s in FENCED.parse(text, outputs=False) if s.kind == "code"]
    assert [(c.body, c.closed) for c in code] == [("x = 1", False), ("print(x)", True)]
    assert FENCED.extract_code(text) == "print(x)"
    assert FENCED.parse("```python\nprint(1", outputs=False)[-1].closed is False


def test_a_dialect_owns_its_prompts_and_answer_format():
    for dialect in (RETOOL, FENCED):
        system = dialect.messages("q")[0]["content"]
        assert dialect.code_open.split("\n")[0] in system
        assert dialect.format_answer("1023") in system
        text_only = dialect.messages("q", tools=False)
        assert len(text_only) == 2 and dialect.stop not in text_only[0]["content"]
        example = dialect.example_turns()[1]["content"]
        assert dialect.find_answer(example, outputs=True) == "2870"
