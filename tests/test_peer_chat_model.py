"""The peer model's data step (``retool.training.peer_chat_model``), for real: cold-start traces of
the repository converted to tool-call conversations on TRL's ``qwen2_5.jinja`` with the base's own
tokenizer and a Jupyter sandbox, then rendered as the SFT recipe renders them. What is checked: the
conversations render ``<tool_call>`` through the template, the SFT labels are exactly the model's
turns (never the prompt, the tool replies or the scaffolding), the bench and the SFT use one
template file, and ``coldstart convert --chat-template`` writes the same conversations."""

from __future__ import annotations

import json

import pytest

from retool.bench.peer import peer_config
from retool.protocol.chat import ChatFormat, template_message
from retool.training import peer_chat_model as pcm
from retool.training.sft_data import IGNORE_INDEX, iter_examples

SOURCES = {name: (path, 2) for name, (path, _) in pcm.SOURCES.items()}  # two traces of each source


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("peer-chat")
    data = pcm.write_data(root, SOURCES)
    return root, data, [json.loads(line) for line in data.read_text().splitlines()]


def test_the_traces_become_conversations_the_template_renders_with_tool_calls(built):
    root, data, records = built
    assert data == root / "data" / "chat" / "source.jsonl" and len(records) == 4
    heads = [json.loads(line) for path, n in SOURCES.values() for line in path.read_text().splitlines()[:n]]
    assert [r["id"] for r in records] == [r["id"] for r in heads]  # the heads of both sources, in order
    tokenizer = pcm.chat_tokenizer()
    assert tokenizer.chat_template == pcm.template_file().read_text()
    fmt = ChatFormat.of(tokenizer)
    for record in records:
        assert record["dialect"] == "chat"
        roles = [m["role"] for m in record["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant" and "tool" in roles
        text = fmt.render(record["messages"], generation_prompt=False)
        assert "<tool_call>" in text and '"name": "python"' in text and "<tool_response>" in text
    assert pcm.write_data(root, SOURCES) == data  # done: not converted again


def test_sft_trains_only_the_model_turns_on_the_benchs_template(built):
    root, data, records = built
    recipe = pcm.sft_recipe(root, data)
    assert recipe.rollout.dialect == "chat" and not recipe.rollout.few_shot
    assert recipe.rollout.chat_template == peer_config().chat_template == str(pcm.template_file())
    assert (recipe.lora.r, recipe.lora.alpha, recipe.max_length, recipe.batch_size) == (16, 32, 512, 8)
    tokenizer = pcm.chat_tokenizer()
    fmt = recipe.rollout.chat_format(tokenizer)
    examples = list(iter_examples(recipe.data, tokenizer, recipe.rollout))
    assert len(examples) == len(records)
    for example, record in zip(examples, records):
        turns = [fmt.model_turn(template_message(m)) for m in record["messages"] if m["role"] == "assistant"]
        trained = [t for t in example.labels if t != IGNORE_INDEX]
        assert trained == [t for turn in turns for t in tokenizer.encode(turn, add_special_tokens=False)]
        text = tokenizer.decode(trained)
        assert "<tool_call>" in text and text.endswith("<|im_end|>")
        assert "<tool_response>" not in text and "<|im_start|>" not in text  # replies, scaffolding: mask 0
        masked = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX])
        assert "<tool_response>" in masked and record["messages"][0]["content"] in masked


def test_the_cli_converts_with_the_same_template(built, tmp_path):
    from typer.testing import CliRunner

    from retool.cli import app

    root, data, records = built
    result = CliRunner().invoke(app, ["coldstart", "convert", "--input", str(root / "data" / "source.jsonl"), "--to",
                                      "chat", "--out", str(tmp_path), "--model", "smollm2-135m-instruct",
                                      "--chat-template", str(pcm.template_file()), "--sandbox", "jupyter"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in (tmp_path / "source.jsonl").read_text().splitlines()] == records
    assert (tmp_path / "chat_template.jinja").read_text() == pcm.template_file().read_text()
