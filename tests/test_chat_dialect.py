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


def test_consecutive_invalid_calls_are_capped(pool):
    """``max_invalid_calls_in_a_row``: three unreadable calls in a row end the answer (finish
    ``invalid_calls``) and the model is not asked again; a call that runs resets the count."""
    fmt = ChatFormat.of(tiny_chat_tokenizer("qwen2_5"))
    unknown = fmt.model_turn({"role": "assistant", "content": "Search.", "tool_calls": [call_item("search", {"q": "x"})]})
    good = fmt.model_turn(assistant("Compute.", "print(1)"))
    answer = fmt.model_turn(assistant("The answer is \\boxed{1}."))
    traj, _, engine = run_chat(pool, "qwen2_5", [unknown, unknown, good, unknown, unknown, unknown, answer],
                               max_invalid_calls_in_a_row=3)
    assert traj.finish_reason == "invalid_calls" and len(traj.tool_calls) == 6 and len(engine.calls) == 6
    assert [c.malformed for c in traj.tool_calls] == [True, True, False, True, True, True]
    traj, _, _ = run_chat(pool, "qwen2_5", [unknown, unknown, good, unknown, unknown, answer],
                          max_invalid_calls_in_a_row=3)
    assert traj.finish_reason == "answer"
    with pytest.raises(ValueError, match="max_invalid_calls_in_a_row"):
        RolloutConfig(max_invalid_calls_in_a_row=0)


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


def test_a_chat_conversation_keeps_calls_and_tool_messages_as_history(pool, tmp_path):
    """Two user turns in one session: the second prompt is the template's rendering of the history
    (calls and tool messages, not a flattened transcript) and extends the first trajectory exactly."""
    import asyncio

    from retool.apps.conversation import Conversation

    tok = tiny_chat_tokenizer("qwen2_5")
    fmt = ChatFormat.of(tok)
    turns = [fmt.model_turn(assistant("Storing.", "x = 41\nprint(x)")), fmt.model_turn(assistant("Stored \\boxed{41}.")),
             fmt.model_turn(assistant("Adding.", "print(x + 1)")), fmt.model_turn(assistant("So \\boxed{42}."))]
    engine = ScriptedEngine(turns, tokenizer=tok)
    rollout = Rollout(engine, pool, RolloutConfig(dialect="chat", few_shot=False, sampling=SamplingParams(temperature=0)))
    session = pool.acquire()
    try:
        chat = Conversation(rollout, session)
        shown = []
        first = asyncio.run(chat.send("Store 41 in x.", shown.append))
        second = asyncio.run(chat.send("Now add one."))
    finally:
        pool.release(session)
    assert (first.answer, second.answer) == ("41", "42")
    assert second.tool_calls[0].result.stdout == "42\n"  # x survived: one session for the conversation
    assert [m["role"] for m in chat.messages] == ["user", "assistant", "tool", "assistant"] * 2
    history = CHAT.messages("Store 41 in x.", few_shot=False) + chat.messages[1:5]
    assert second.trajectory.prompt_ids == tok.apply_chat_template(history, tools=list(fmt.tools),
                                                                   add_generation_prompt=True)["input_ids"]
    assert second.trajectory.prompt_ids[:len(first.trajectory.input_ids)] == first.trajectory.input_ids
    # what the chat showed: the code and the tool's output, not the template around them
    output = "".join(c.text for c in shown if c.kind == "output")
    assert output.strip() == "41" and "<|im_start|>" not in "".join(c.text for c in shown)
    assert chat.save_jsonl(tmp_path / "chat.jsonl") == 8


SYNTH_TRACE = ("I will compute it.\n<code>\n```python\nx = 2**10\nprint(x)\n```\n</code>\n<interpreter>\n1024\n"
               "</interpreter>\nThen one more.\n<code>\n```python\nprint(x + 1)\n```\n</code>\n<interpreter>\n1025\n"
               "</interpreter>\nSo it is 1025.\n<answer>\n\\boxed{1025}\n</answer>")


@pytest.mark.parametrize("template", TEMPLATES)
def test_sft_renders_a_converted_trace_as_the_templates_ids_with_exact_masks(template):
    from retool.coldstart.convert import trace_messages
    from retool.training.sft_data import render_trajectory, to_example, IGNORE_INDEX

    tok = tiny_chat_tokenizer(template)
    rollout = RolloutConfig(dialect="chat", few_shot=False)
    messages = trace_messages(SYNTH_TRACE)
    assert [m["role"] for m in messages] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == {"code": "x = 2**10\nprint(x)"}
    assert messages[0]["content"] == "I will compute it." and messages[-1]["content"] == "So it is 1025.\n\\boxed{1025}"
    traj = render_trajectory("What is 2**10 + 1?", SYNTH_TRACE, tok, rollout)
    fmt = ChatFormat.of(tok)
    full = CHAT.messages("What is 2**10 + 1?", few_shot=False) + messages
    assert traj.input_ids == tok.apply_chat_template(full, tools=list(fmt.tools))["input_ids"]
    # trained on: exactly the model's turns (end-of-turn included), not the tool messages nor the scaffolding
    turns = [fmt.model_turn(m) for m in messages if m["role"] == "assistant"]
    assert traj.model_ids() == [t for turn in turns for t in tok.encode(turn, add_special_tokens=False)]
    example = to_example(traj)
    assert [t for t in example.labels if t != IGNORE_INDEX] == traj.model_ids()
    # a chat record (the converter's output) renders the same
    assert render_trajectory("What is 2**10 + 1?", messages, tok, rollout).ids == traj.ids


def test_coldstart_convert_to_chat_verifies_and_writes_conversations(tmp_path):
    import json

    from typer.testing import CliRunner

    from retool.cli import app

    tok = tiny_chat_tokenizer("qwen2_5")
    tok.save_pretrained(tmp_path / "tokenizer")
    source = tmp_path / "code.jsonl"
    wrong = SYNTH_TRACE.replace("1025\n</interpreter>", "1026\n</interpreter>")
    rows = [{"id": "a", "messages": [{"role": "user", "content": "What is 2**10 + 1?"},
                                     {"role": "assistant", "content": SYNTH_TRACE}], "answer": "1025"},
            {"id": "b", "messages": [{"role": "user", "content": "What is 2**10 + 1?"},
                                     {"role": "assistant", "content": wrong}], "answer": "1025"}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["coldstart", "convert", "--input", str(source), "--to", "chat", "--out",
                                      str(tmp_path / "chat"), "--model", str(tmp_path / "tokenizer"),
                                      "--sandbox", "jupyter"])
    assert result.exit_code == 0, result.output
    kept = [json.loads(line) for line in (tmp_path / "chat" / "code.jsonl").read_text().splitlines()]
    assert [r["id"] for r in kept] == ["a"] and kept[0]["dialect"] == "chat"
    assert [m["role"] for m in kept[0]["messages"]] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    rejects = (tmp_path / "chat" / "code.rejects.jsonl").read_text()
    assert "execution" in rejects  # the trace that claims an output its code does not print
    missing = CliRunner().invoke(app, ["coldstart", "convert", "--input", str(source), "--to", "chat", "--out",
                                       str(tmp_path / "x"), "--sandbox", "subprocess"])
    assert missing.exit_code != 0 and "--model" in missing.output


def test_an_rl_step_with_a_scripted_policy_writing_hermes_calls(tmp_path):
    """Sampling (loop, sandbox, grading) in the chat dialect with a policy whose words are given,
    then a real PPO update of a tiny model: the parameters move, the interpreter's and the
    template's tokens carry no gradient, the numbers count the calls (one of them invalid)."""
    import json

    import torch

    from retool.datasets import Problem
    from retool.training.ppo import PPOTrainer
    from retool.training.recipe import RLRecipe
    from retool.training.rl_rollout import sample
    from tiny import tiny_model

    tok = tiny_chat_tokenizer("qwen2_5")
    fmt = ChatFormat.of(tok)
    scripts = {"What is 3 plus 4?": [fmt.model_turn(assistant("Compute.", "print(3 + 4)")),
                                     fmt.model_turn(assistant("\\boxed{7}"))],
               "What is 2 plus 5?": ['<tool_call>\n{"name": "calc", "arguments": {}}\n</tool_call><|im_end|>',
                                     fmt.model_turn(assistant("Compute.", "print(2 + 5)")),
                                     fmt.model_turn(assistant("\\boxed{8}"))]}

    def respond(text: str) -> str:
        problem = next(p for p in scripts if p in text)
        return scripts[problem][text.split(problem)[-1].count("<tool_response>")]  # one turn per tool reply so far

    model, _ = tiny_model(tokenizer=tok)
    data = tmp_path / "problems.jsonl"
    data.write_text(json.dumps({"id": "a", "problem": "What is 3 plus 4?", "answer": "7"}) + "\n")
    recipe = RLRecipe(algorithm="ppo", data=[str(data)], output_dir=str(tmp_path / "ppo"), steps=1, prompts_per_step=2,
                      group_size=1, rollout={"dialect": "chat", "few_shot": False, "max_total_tokens": 600},
                      micro_batch_size=2, learning_rate=1e-3, sandbox={"backend": "jupyter"}, report_to=[],
                      ppo={"minibatch_size": 2, "ppo_epochs": 1})
    problems = [Problem("a", "What is 3 plus 4?", "7"), Problem("b", "What is 2 plus 5?", "7")]
    with recipe.sandbox.pool(size=2) as pool:
        batch = sample(model, tok, pool, problems, recipe, step=0,
                       engine=ScriptedEngine(respond=respond, tokenizer=tok))
    assert [(s.problem_id, s.answer, s.correct) for s in batch.samples] == [("a", "7", True), ("b", "8", False)]
    scalars = batch.metrics.as_scalars()
    assert scalars["tools/calls_per_answer"] == 1.5 and scalars["tools/invalid_call_rate"] == pytest.approx(1 / 3)
    for traj in batch.trajectories:  # the template's rendering of the conversation, as in inference
        assert tok.decode(traj.input_ids, skip_special_tokens=False).count("<tool_response>") == len(traj.tool_calls)

    trainer = PPOTrainer(recipe, model, tok, problems, pool=None, run_log=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads: list[torch.Tensor] = []

    def keep(module, args, kwargs, output):
        if torch.is_grad_enabled():
            output.logits.retain_grad()
            grads.append((kwargs["input_ids"], output.logits))

    handle = trainer.policy.register_forward_hook(keep, with_kwargs=True)
    try:
        trainer.update(batch)
    finally:
        handle.remove()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    (ids, logits), = grads
    for row in range(len(ids)):
        traj = next(t for t in batch.trajectories if torch.equal(torch.tensor(t.input_ids), ids[row][:len(t.input_ids)]))
        start = len(traj.prompt_ids)
        for i, m in enumerate(traj.loss_mask):  # logits[t - 1] predicts token t
            nonzero = torch.count_nonzero(logits.grad[row, start + i - 1])
            assert (nonzero > 0) if m else (nonzero == 0)


def test_retool_eval_in_the_chat_dialect_grades_and_counts_calls(tmp_path):
    """The harness with the chat dialect: answers graded from the model's turns, the tool analytics
    (code ratio, invalid calls) as for the other dialects, a report and notebooks written."""
    from dataclasses import replace

    from retool.datasets import Problem
    from retool.evals.harness import EVAL_ROLLOUT, EvalConfig, run_eval

    tok = tiny_chat_tokenizer("qwen2_5")
    fmt = ChatFormat.of(tok)
    problems = [Problem("p1", "What is 5 squared?", "25"), Problem("p2", "What is 3+4?", "7")]
    scripts = {"What is 5 squared?": [fmt.model_turn(assistant("Compute.", "print(5 * 5)")),
                                      fmt.model_turn(assistant("\\boxed{25}"))],
               "What is 3+4?": ['<tool_call>\n{"name": "python"}\n</tool_call><|im_end|>',
                                fmt.model_turn(assistant("\\boxed{8}"))]}

    def respond(text: str) -> str:
        problem = next(p for p in scripts if p in text)
        return scripts[problem][text.split(problem)[-1].count("<tool_response>")]

    rollout = replace(EVAL_ROLLOUT, dialect="chat", few_shot=False, max_total_tokens=300)
    config = EvalConfig(benchmark="constructed", k=1, out=str(tmp_path / "run"), concurrency=2, rollout=rollout,
                        notebooks=True)
    result = run_eval(config, engine=ScriptedEngine(respond=respond, tokenizer=tok), problems=problems,
                      show_progress=False)
    assert result.metrics["avg@1"] == 0.5
    assert result.analytics["code_ratio"] == 1.0 and result.analytics["invalid_call_rate"] == 0.5
    notebooks = list((tmp_path / "run" / "notebooks").glob("*.ipynb"))
    assert notebooks and "print(5 * 5)" in "".join(n.read_text() for n in notebooks)


def test_a_turn_ended_by_eos_rather_than_the_stop_string_renders_the_same(pool):
    """vLLM ends a Qwen turn on <|im_end|> as EOS, the hf engine as a stop string: same trajectory."""
    from dataclasses import replace as with_end

    class EosEngine(ScriptedEngine):
        async def agenerate(self, prompt_ids, params, stop=()):
            completion = self._next(prompt_ids, params, stop)
            return with_end(completion, end="eos", stop=None) if completion.end == "stop" else completion

    tok = tiny_chat_tokenizer("qwen2_5")
    fmt = ChatFormat.of(tok)
    turns = [fmt.model_turn(m) for m, _ in ONE]
    by_stop, _, _ = run_chat(pool, "qwen2_5", list(turns))
    engine = EosEngine(list(turns), tokenizer=tok)
    rollout = Rollout(engine, pool, RolloutConfig(dialect="chat", few_shot=False, sampling=SamplingParams(temperature=0)))
    by_eos = rollout.run([rollout.prompt_ids("What is 2**10 + 1?")])[0]
    assert by_eos.ids == by_stop.ids and by_eos.loss_mask == by_stop.loss_mask
    assert by_eos.finish_reason == "answer"


def test_grpo_through_trl_samples_in_the_chat_dialect(tmp_path, monkeypatch):
    """TRL's GRPOTrainer with retool's rollout in the chat dialect: a real step on a tiny model whose
    prompts declare the python tool through the template."""
    import json

    from retool.training.recipe import RLRecipe
    from retool.training.rl import run_rl
    from tiny import tiny_model

    tok = tiny_chat_tokenizer("qwen2_5")
    model, _ = tiny_model(tokenizer=tok)
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"id": f"p{i}", "problem": "What is 3 plus 4?", "answer": "7"}) + "\n"
                            for i in range(4)))
    recipe = RLRecipe(algorithm="grpo", data=[str(data)], output_dir=str(tmp_path / "grpo"), steps=1, prompts_per_step=1,
                      group_size=2, micro_batch_size=2, rollout={"dialect": "chat", "few_shot": False, "max_total_tokens": 16},
                      learning_rate=1e-3, sandbox={"backend": "subprocess"}, report_to=[], mask_truncated=False, save_steps=1)
    prompts: list[str] = []
    original = Rollout.prompt_ids
    monkeypatch.setattr(Rollout, "prompt_ids", lambda self, problem: prompts.append(
        tok.decode(ids := original(self, problem), skip_special_tokens=False)) or ids)
    result = run_rl(recipe, model=model, tokenizer=tok)
    assert result.steps == 1
    lines = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("tools/invalid_call_rate" in x for x in lines)
    assert prompts and all('"name": "python"' in p and "<tools>" in p for p in prompts)  # the template declared the tool
