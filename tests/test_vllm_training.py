"""RL steps whose rollouts run on a real vLLM (``-m gpu``; skipped without a CUDA GPU and vLLM).

A tiny model is taught (by our SFT) to answer 7, saved, and loaded by TRL's colocated vLLM; one
DAPO step (TRL's GRPOTrainer) and one PPO step (ours) then sample through ``ColocatedVLLMEngine``
with the interpreter in the loop and must change the weights. The engines themselves are tested on
CPU in ``test_vllm_colocated.py`` and ``test_openai_engine.py``.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from test_training import ANSWER_ONLY, VARIED, _changed, _rl_recipe, _state, _write_records
from tiny import tiny_model
from retool.training.recipe import SFTRecipe
from retool.training.rl import run_rl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                       reason="needs a CUDA GPU and vLLM (pip install 'retool[gpu]')"),
]

VLLM = {"mode": "colocate", "gpu_memory_utilization": 0.15, "max_model_length": 1024}


@pytest.fixture(scope="module")
def sharpened_dir(tmp_path_factory):
    from retool.training.sft import run_sft

    tmp = tmp_path_factory.mktemp("sharp")
    model, tok = tiny_model(hidden=128, heads=2)  # head size 64 for vLLM's kernels
    recipe = SFTRecipe(data=[str(_write_records(tmp / "sharp.jsonl", ANSWER_ONLY, 8))], output_dir=str(tmp / "run"),
                       max_steps=30, batch_size=8, learning_rate=3e-3, lr_scheduler="constant", report_to=[],
                       max_length=4096)
    return run_sft(recipe, model=model, tokenizer=tok).final_dir


@pytest.mark.parametrize("algorithm", ["dapo", "ppo"])
def test_one_step_with_rollouts_on_colocated_vllm(tmp_path, sharpened_dir, algorithm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(sharpened_dir, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(sharpened_dir)
    before = _state(model)
    changes = {k: v for k, v in VARIED.items() if algorithm == "ppo" or k != "ppo"}
    result = run_rl(_rl_recipe(tmp_path, algorithm, vllm=VLLM, **changes), model=model, tokenizer=tok)
    assert result.steps == 1 and not result.interrupted
    assert _changed({k: v.to(model.device) for k, v in before.items()}, model) > 0
    lines = [json.loads(x) for x in (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()]
    rollout = next(x for x in lines if "accuracy" in x)
    assert 0 < rollout["accuracy"] < 1 and rollout["tokens/model_mean"] > 0
