"""The terminal chat through a pseudo-terminal (pexpect): streaming, one sandbox session for the
whole conversation, /save, /notebook, /reset, Ctrl-C during generation and during a running cell."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pexpect
import pytest

from retool.apps.conversation import TextStream
from tiny import tiny_model, tiny_tokenizer

HERE = Path(__file__).parent
PROMPT = "you>"


def code(source: str) -> str:
    return f"Let me compute.\n<code>\n```python\n{source}\n```\n</code>"


def answer(value: str) -> str:
    return f"Done.\n<answer>\n\\boxed{{{value}}}\n</answer>"


def spawn_driver(turns: list, delay: float = 0.0) -> pexpect.spawn:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = pexpect.spawn(sys.executable, [str(HERE / "chat_driver.py"), str(delay), json.dumps(turns)],
                          env=env, encoding="utf-8", timeout=90, dimensions=(40, 120))
    child.expect(PROMPT)
    return child


def test_text_stream_holds_back_a_split_multibyte_character():
    tokenizer = tiny_tokenizer()
    ids = tokenizer.encode("naïve ∑ done", add_special_tokens=False)
    stream = TextStream(tokenizer)
    pieces = [stream.feed([i]) for i in ids]
    assert "".join(pieces) + stream.flush() == "naïve ∑ done"
    assert not any("\ufffd" in p for p in pieces)


def test_variables_persist_across_turns_and_save_and_notebook_hold_the_real_outputs(tmp_path):
    turns = [code("x = 41\nprint('stored', x)"), answer("41"), code("print(x + 1)"), answer("42")]
    child = spawn_driver(turns)
    child.sendline("Store 41 in x.")
    child.expect("stored 41")
    child.expect(r"answer: 41 · finish: answer · tool calls: 1 \(ok\)")
    child.expect(PROMPT)
    child.sendline("Now add one.")
    child.expect("42")  # only there if x survived from the first turn
    child.expect(r"answer: 42 · finish: answer · tool calls: 1 \(ok\)")
    child.expect(PROMPT)
    child.sendline(f"/save {tmp_path / 'chat.jsonl'}")
    child.expect("saved 4 messages")
    child.sendline(f"/notebook {tmp_path / 'chat.ipynb'}")
    child.expect("wrote a notebook")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    lines = [json.loads(line) for line in (tmp_path / "chat.jsonl").read_text().splitlines()]
    assert [m["role"] for m in lines] == ["user", "assistant", "user", "assistant"]
    assert lines[3]["tool_calls"][0]["result"]["stdout"] == "42\n" and lines[3]["answer"] == "42"
    assert "<interpreter>\n42\n</interpreter>" in lines[3]["content"]
    notebook = json.loads((tmp_path / "chat.ipynb").read_text())
    code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert ["".join(c["source"]) for c in code_cells] == ["x = 41\nprint('stored', x)", "print(x + 1)"]
    assert "".join(code_cells[1]["outputs"][0]["text"]) == "42\n"


def test_ctrl_c_stops_generation_and_a_running_cell_but_keeps_the_session():
    turns = [code("kept = 'yes'\nprint('set')"), answer("0"),
             None,  # babbles slowly until stopped
             code("import time\nprint('sleeping', flush=True)\ntime.sleep(120)"),
             code("print(kept)"), answer("1")]
    child = spawn_driver(turns, delay=0.02)
    child.sendline("Set a variable.")
    child.expect("finish: answer")
    child.expect(PROMPT)
    child.sendline("Talk for a long time.")
    child.expect("la la la")
    child.sendintr()
    child.expect("stopped")
    child.expect(PROMPT)
    child.sendline("Sleep.")
    child.expect("time.sleep")
    child.expect("```")  # the block is closed: the cell starts now
    child.sendintr()
    child.expect("stopped", timeout=15)
    child.expect(PROMPT)
    child.sendline("Is it still there?")
    child.expect("yes")  # the interpreter kept its variables through both interruptions
    child.expect("finish: answer")
    child.expect(PROMPT)
    child.sendintr()  # at the prompt: a fresh prompt, not an exit
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_retool_chat_command_with_a_local_model(tmp_path):
    model, tokenizer = tiny_model()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    child = pexpect.spawn(sys.executable, ["-m", "retool.cli", "chat", "--model", str(tmp_path / "model"),
                                           "--sandbox", "subprocess", "--max-total-tokens", "12"],
                          encoding="utf-8", timeout=120, dimensions=(40, 160))
    child.expect(PROMPT)
    child.sendline("What is 2+2?")
    child.expect(r"finish: (length|eos|answer)")
    child.expect(PROMPT)
    child.sendline("/frobnicate")
    child.expect(r"unknown command /frobnicate")
    child.sendline("/reset")
    child.expect("new conversation")
    child.sendline("/save")
    child.expect(r"usage:\S* /save PATH")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.parametrize("missing", ["nowhere"])
def test_retool_chat_reports_a_missing_model(tmp_path, missing):
    child = pexpect.spawn(sys.executable, ["-m", "retool.cli", "chat", "--model", str(tmp_path / missing)],
                          encoding="utf-8", timeout=120)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3 and missing in child.before


def test_escape_sequences_from_the_cell_and_the_model_are_shown_not_obeyed():
    turns = [code("print('\\x1b]52;c;cHduZWQ=\\x07' + '\\x1b[2J')"), "The screen: \x1b[2J\x1b]0;title\x07 ok.\n"
             "<answer>\n\\boxed{0}\n</answer>"]
    child = spawn_driver(turns)
    child.sendline("Print something.")
    child.expect("finish: answer")
    shown = child.before
    child.expect(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert "\x1b]52" not in shown and "\x1b[2J" not in shown and "\x1b]0;" not in shown
    assert "\\x1b]52;c;cHduZWQ=\\x07" in shown and "\\x1b[2J" in shown  # the cell's and the model's, visible


def test_a_failure_that_is_not_the_models_is_said_so():
    child = spawn_driver(["!raise the model server went away", answer("7")])
    child.sendline("Hello?")
    child.expect("the turn was stopped")
    child.expect("went away")
    child.expect("not the model's doing")
    child.expect(PROMPT)
    child.sendline("Again?")
    child.expect(r"answer: 7 · finish: answer")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
