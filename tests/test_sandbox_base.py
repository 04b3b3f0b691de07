"""The backend-independent pieces: output capping, error summaries, result serialisation."""

from retool.sandbox.base import CappedText, ExecResult, ExecStatus, status_for_exception, summarize_error
from retool.sandbox.subprocess import exception_from_stderr


def test_capped_text_keeps_everything_under_the_limit():
    buf = CappedText(limit=100)
    buf.write("hello ")
    buf.write(b"world")
    assert buf.text() == "hello world"
    assert not buf.overflowed


def test_capped_text_keeps_head_and_tail_and_counts_what_it_dropped():
    buf = CappedText(limit=100)  # 75 bytes of head, 25 of tail
    buf.write("a" * 75 + "b" * 1000 + "c" * 25)
    assert buf.overflowed and buf.dropped == 1000
    text = buf.text()
    assert text.startswith("a" * 75) and text.endswith("c" * 25)
    assert "1,000 bytes of output truncated" in text


def test_capped_text_tail_follows_many_small_writes():
    buf = CappedText(limit=8)  # head 6, tail 2
    for ch in "0123456789":
        buf.write(ch)
    assert buf.head == bytearray(b"012345") and buf.tail == bytearray(b"89") and buf.dropped == 2


def test_error_summary_is_one_line_without_colours():
    assert summarize_error("ZeroDivisionError", "division by zero") == "ZeroDivisionError: division by zero"
    assert summarize_error("ValueError", "\x1b[31mbad\x1b[0m\nsecond line") == "ValueError: bad"
    assert summarize_error("MemoryError", "") == "MemoryError"


def test_limit_exceptions_map_to_their_status():
    assert status_for_exception("MemoryError") is ExecStatus.OOM
    assert status_for_exception("KeyboardInterrupt") is ExecStatus.TIMEOUT
    assert status_for_exception("NameError") is ExecStatus.ERROR


def test_exec_result_round_trips_through_json_types():
    result = ExecResult(ExecStatus.TIMEOUT, "out", "err", "TimeoutError: x", 1.5, True, True)
    data = result.to_dict()
    assert data["status"] == "timeout"
    assert ExecResult.from_dict(data) == result


def test_exception_parsed_from_a_python_traceback():
    tb = 'Traceback (most recent call last):\n  File "<cell>", line 1, in <module>\nZeroDivisionError: division by zero\n'
    assert exception_from_stderr(tb) == ("ZeroDivisionError", "division by zero")
    syntax = '  File "<cell>", line 1\n    def f(:\n          ^\nSyntaxError: invalid syntax\n'
    assert exception_from_stderr(syntax) == ("SyntaxError", "invalid syntax")
    assert exception_from_stderr("just some warning text\n") is None
