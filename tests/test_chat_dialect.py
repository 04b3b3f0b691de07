"""The chat dialect: tool calls in real chat templates (TRL's Qwen2.5 hermes, Qwen3, Qwen3.6 XML) on
an in-process tokenizer, a scripted model and a real Jupyter sandbox. The trajectory must be the
template's rendering of the whole conversation, character for character and id for id."""

from __future__ import annotations

import pytest

from retool.engines.base import SamplingParams
from retool.protocol import CHAT
from retool.protocol.chat import ChatFormat, ChatTemplateError, call_item
from retool.protocol.tool_calls import call_source, parse_calls
from retool.rollout import Rollout, RolloutConfig
from retool.sandbox import SandboxPool
from retool.trajectory_stats import trajectory_stats
from scripted import ScriptedEngine
from tiny import tiny_chat_tokenizer, tiny_tokenizer

TEMPLATES = ["qwen2_5", "qwen3_training", "qwen3_6"]  # hermes JSON, hermes + thinking, XML + thinking


@pytest.fixture(scope="module")
def pool():
    with SandboxPool("jupyter", size=1) as pool:
        yield pool


def call(code: str) -> dict:
    return call_item("python", {"code": code})


def assistant(content: str, *codes: str) -> dict:
    message = {"role": "assistant", "content": content}
    if codes:
        message["tool_calls"] = [call(c) for c in codes]
    return message


def run_chat(pool, template: str, turns: list[str], **config):
    tok = tiny_chat_tokenizer(template)
    engine = ScriptedEngine(turns, tokenizer=tok)
    rollout = Rollout(engine, pool, RolloutConfig(dialect="chat", few_shot=False,
                                                  sampling=SamplingParams(temperature=0), **config))
    problem = "What is 2**10 + 1?"
    traj = rollout.run([rollout.prompt_ids(problem)])[0]
    return traj, rollout, engine


# the conversations: a turn is (assistant message the model writes, tool replies that follow it)
ONE = [(assistant("I will compute.", "x = 2**10\nprint(x)"), ["1024"]),
       (assistant("The answer is \\boxed{1024}."), [])]
TWO = [(assistant("I will compute.", "x = 2**10\nprint(x)"), ["1024"]),
       (assistant("Now two at once.", "print(x + 1)", 'print("a\\"b")'), ["1025", 'a"b']),
       (assistant("The answer is \\boxed{1025}."), [])]
THREE = [(assistant("Step one.", "x = 2**10\nprint(x)"), ["1024"]),
         (assistant("Step two.", "y = x + 1\nprint(y)"), ["1025"]),
         (assistant("", "print(y * 2)"), ["2050"]),
         (assistant("The answer is \\boxed{1025}."), [])]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("conversation", [ONE, TWO, THREE], ids=["1-tool-turn", "2-tool-turns", "3-tool-turns"])
def test_the_trajectory_is_the_templates_rendering_of_the_whole_conversation(pool, template, conversation):
    fmt = ChatFormat.of(tiny_chat_tokenizer(template))
    turns = [fmt.model_turn(message) for message, _ in conversation]
    traj, rollout, engine = run_chat(pool, template, turns)
    tok = rollout.tokenizer

    messages = CHAT.messages("What is 2**10 + 1?", few_shot=False)
    for message, replies in conversation:
        messages.append(message)
        messages += [{"role": "tool", "content": r} for r in replies]
    full = tok.apply_chat_template(messages, tools=list(fmt.tools), tokenize=False)
    assert tok.decode(traj.input_ids, skip_special_tokens=False) == full
    assert traj.input_ids == tok.apply_chat_template(messages, tools=list(fmt.tools), tokenize=True)["input_ids"]
    assert traj.finish_reason == "answer"
    assert [c.result.stdout.strip() for c in traj.tool_calls] == [r for _, rs in conversation for r in rs]

    # masks: the model's tokens (its end-of-turn token included) are exactly the sampled turns
    sampled = [t for turn in turns for t in tok.encode(turn, add_special_tokens=False)]
    assert traj.model_ids() == sampled
    assert [t for t, m in zip(traj.ids, traj.loss_mask) if m and t == tok.convert_tokens_to_ids("<|im_end|>")] \
        == [tok.convert_tokens_to_ids("<|im_end|>")] * len(turns)
    # the newline after each end-of-turn token is the loop's (mask 0), not dropped
    first_end = traj.loss_mask.index(0)
    assert tok.decode(traj.ids[first_end:first_end + 1]) == "\n"
    # each turn was generated from exactly what came before: nothing re-tokenized
    assert len(engine.calls) == len(turns)
    for fed in engine.calls:
        assert fed == traj.input_ids[:len(fed)]
    # the spans of one turn's calls partition what the loop inserted, and hold their replies
    for c in traj.tool_calls:
        assert c.response in tok.decode(traj.ids[slice(*c.output_span)])


@pytest.mark.parametrize("template", ["qwen2_5", "qwen3_6"])
def test_malformed_calls_are_answered_with_one_line_and_counted(pool, template):
    bad_json = "I try.\n<tool_call>\n{\"name\": \"python\", \"arguments\": {\"code\": print(1)}\n</tool_call><|im_end|>"
    if template == "qwen3_6":
        bad_json = "I try.\n\n<tool_call>\n<parameter=code>\nprint(1)\n</parameter>\n</tool_call><|im_end|>"
    fmt = ChatFormat.of(tiny_chat_tokenizer(template))
    unknown = fmt.model_turn({"role": "assistant", "content": "Search.",
                              "tool_calls": [call_item("search", {"query": "x"})]})
    missing = fmt.model_turn({"role": "assistant", "content": "Hm.", "tool_calls": [call_item("python", {"source": "1"})]})
    unclosed = "Last.\n<tool_call>\n{\"name\": \"python\"<|im_end|>"
    answer = fmt.model_turn(assistant("The answer is \\boxed{1}."))
    traj, rollout, _ = run_chat(pool, template, [bad_json, unknown, missing, unclosed, answer])

    assert traj.finish_reason == "answer"
    invalid = [c.invalid for c in traj.tool_calls]
    assert all(invalid) and len(invalid) == 4
    assert ("not valid JSON" in invalid[0]) if template == "qwen2_5" else ("<function=NAME>" in invalid[0])
    assert "unknown function 'search'" in invalid[1] and "python" in invalid[1]
    assert "string argument 'code'" in invalid[2]
    assert "not closed" in invalid[3]
    for c in traj.tool_calls:  # the model read the reason, in one line, as the tool's message
        assert c.response == f"Error: {c.invalid}" and "\n" not in c.response
        assert c.response in rollout.tokenizer.decode(traj.ids[slice(*c.output_span)])
    assert trajectory_stats([traj]).invalid_call_rate == 1.0


def test_code_written_carelessly_in_json_still_runs(pool):
    raw_newline = 'Go.\n<tool_call>\n{"name": "python", "arguments": {"code": "a = 20\nprint(a + 1)"}}\n</tool_call><|im_end|>'
    bare_quotes = 'Go.\n<tool_call>\n{"name": "python", "arguments": {"code": "print("hi" + str(a))"}}\n</tool_call><|im_end|>'
    as_string = ('Go.\n<tool_call>\n{"name": "python", "arguments": "{\\"code\\": \\"print(a * 2)\\"}"}\n'
                 '</tool_call><|im_end|>')
    traj, _, _ = run_chat(pool, "qwen2_5", [raw_newline, bare_quotes, as_string, "Done \\boxed{42}.<|im_end|>"])
    assert [c.result.stdout for c in traj.tool_calls] == ["21\n", "hi20\n", "40\n"]
    assert not any(c.invalid for c in traj.tool_calls)
    assert trajectory_stats([traj]).invalid_call_rate == 0.0


def test_thinking_is_kept_in_the_trajectory(pool):
    tok = tiny_chat_tokenizer("qwen3_training")
    fmt = ChatFormat.of(tok)
    assert fmt.thinking
    turn = fmt.model_turn(assistant("<think>\nSquare it with code.\n</think>\n\nComputing.", "print(12 ** 2)"))
    final = fmt.model_turn(assistant("<think>\nIt printed 144.\n</think>\n\n\\boxed{144}"))
    assert turn.startswith("<think>\nSquare it")
    traj, rollout, _ = run_chat(pool, "qwen3_training", [turn, final])
    text = tok.decode(traj.ids, skip_special_tokens=False)
    assert "<think>\nSquare it with code.\n</think>" in text and "<think>\nIt printed 144.\n</think>" in text
    assert traj.finish_reason == "answer" and traj.tool_calls[0].result.stdout == "144\n"


def test_a_template_that_is_not_prefix_preserving_is_refused_with_the_fix():
    tok = tiny_chat_tokenizer("qwen3")  # Qwen3's own template, thinking off: it drops the empty <think> block
    with pytest.raises(ChatTemplateError, match="not prefix-preserving.*--chat-template"):
        ChatFormat.of(tok, options={"enable_thinking": False})
    ChatFormat.of(tok)  # with thinking (reasoning in every turn) the same template is exact
    with pytest.raises(ChatTemplateError, match="does not render tools"):
        ChatFormat.of(tiny_tokenizer())  # a template without tools


def test_the_rollout_refuses_before_any_work(pool):
    engine = ScriptedEngine(["never"], tokenizer=tiny_chat_tokenizer("qwen3"))
    with pytest.raises(ChatTemplateError, match="qwen3_training"):
        Rollout(engine, pool, RolloutConfig(dialect="chat", thinking="off"))
    assert engine.calls == []


def test_the_override_template_and_format_are_used(pool, tmp_path):
    from tiny import template_file

    path = tmp_path / "train.jinja"
    path.write_text(template_file("qwen3_training").read_text())
    tok = tiny_chat_tokenizer("qwen3")
    fmt = ChatFormat.of(tok)
    engine = ScriptedEngine([fmt.model_turn(assistant("\\boxed{1}"))], tokenizer=tok)
    rollout = Rollout(engine, pool, RolloutConfig(dialect="chat", thinking="off", chat_template=str(path)))
    assert rollout.chat.template == path.read_text()
    with pytest.raises(ChatTemplateError, match="no chat template file"):
        Rollout(engine, pool, RolloutConfig(dialect="chat", chat_template=str(tmp_path / "missing.jinja")))


def test_call_parsers():
    hermes = '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>'
    xml = "<tool_call>\n<function=python>\n<parameter=code>\nfor i in range(2):\n    print(i)\n</parameter>\n</function>\n</tool_call>"
    (h,) = parse_calls("text " + hermes, "hermes")
    assert (h.name, h.arguments, h.error, h.start) == ("python", {"code": "print(1)"}, None, 5)
    (x,) = parse_calls(xml, "xml")
    assert x.arguments == {"code": "for i in range(2):\n    print(i)"}
    assert [c.arguments["code"] for c in parse_calls(hermes + "\n" + hermes, "hermes")] == ["print(1)", "print(1)"]
    assert call_source(hermes[len("<tool_call>"):-len("</tool_call>")]) == "print(1)"
    assert parse_calls("no calls here", "hermes") == []
    # escapes where valid, bare quotes kept
    (loose,) = parse_calls('<tool_call>{"name": "python", "arguments": {"code": "s = "a\\tb"\nprint(s)"}}</tool_call>', "hermes")
    assert loose.arguments["code"] == 's = "a\tb"\nprint(s)'
