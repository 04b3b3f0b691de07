"""What ``retool.training.grpo`` relies on in TRL's GRPOTrainer (``rollout_func`` is experimental).

If TRL changes any of this, these tests fail before a training run silently trains on the wrong
tokens: the keyword exists, prompts arrive repeated ``num_generations`` times in a row, our
``env_mask`` becomes TRL's ``tool_mask``, and a position with mask 0 gets no gradient in TRL's loss.
"""

from __future__ import annotations

import inspect
import json

import torch

from tiny import tiny_model
from retool.training.grpo import build_trainer
from retool.training.recipe import RLRecipe
from retool.training.rl import load_problems, open_pool


def _trainer(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"p{i}", "problem": f"What is {i} plus 1?", "answer": str(i + 1)})
                              for i in range(4)))
    recipe = RLRecipe(algorithm="dapo", data=[str(data)], output_dir=str(tmp_path / "run"), steps=1,
                      prompts_per_step=1, group_size=4, micro_batch_size=4, rollout={"max_total_tokens": 12},
                      sandbox={"backend": "subprocess"},
                      report_to=[], mask_truncated=False)
    model, tok = tiny_model()
    model.train()
    pool = open_pool(recipe)
    return build_trainer(recipe, model, tok, load_problems(recipe), pool, run_log=None), pool, model


def test_grpo_trainer_still_takes_a_rollout_func():
    from trl import GRPOTrainer

    assert "rollout_func" in inspect.signature(GRPOTrainer.__init__).parameters


def test_env_mask_becomes_tool_mask_and_masked_tokens_get_no_gradient(tmp_path):
    trainer, pool, model = _trainer(tmp_path)
    seen = {}
    ours = trainer.rollout_func

    def recording(prompts, trl_trainer):
        seen["prompts"] = list(prompts)
        out = ours(prompts, trl_trainer)
        seen["env_mask"] = [list(m) for m in out["env_mask"]]
        out["env_mask"] = [[0] * len(m) for m in out["env_mask"]]  # as if every token were interpreter output
        return out

    trainer.rollout_func = recording
    try:
        inputs = [dict(trainer.train_dataset[0]) for _ in range(4)]  # the sampler's repeat of one prompt
        batch = trainer._generate_and_score_completions(inputs)
    finally:
        pool.close()
    assert seen["prompts"] == [inputs[0]["prompt"]] * 4
    assert "tool_mask" in batch and batch["tool_mask"].shape == batch["completion_mask"].shape
    assert int(batch["tool_mask"].sum()) == 0
    assert any(1 in m for m in seen["env_mask"])  # ours marked the model's tokens 1
    # fake a nonzero advantage so only the mask can make the gradient vanish
    batch["advantages"] = torch.linspace(-1, 1, len(batch["advantages"]))
    model.zero_grad(set_to_none=True)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop; we call the loss alone
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.count_nonzero(g) == 0 for g in grads)


# -- TRL's vLLM integration (retool.training.vllm_rollouts) -------------------------------------------


def test_trl_vllm_names_we_use_still_exist():
    from trl import GRPOConfig, GRPOTrainer
    from trl.generation.vllm_generation import VLLMGeneration

    from retool.training.recipe import VLLMSettings
    from retool.training.vllm_rollouts import grpo_vllm_args, vllm_generation_kwargs

    for settings in (VLLMSettings(), VLLMSettings(mode="server", server_base_url="http://gpu-node:8000")):
        assert set(grpo_vllm_args(settings)) <= set(GRPOConfig.__dataclass_fields__)
        inspect.signature(VLLMGeneration.__init__).bind(None, model=None, accelerator=None, processing_class=None,
                                                        **vllm_generation_kwargs(settings, 512))
    assert callable(VLLMGeneration.sync_weights)
    # colocate: the LLM we drive is `VLLMGeneration.llm`, with the logprobs TRL's IS correction expects
    init = inspect.getsource(VLLMGeneration._init_vllm)
    assert "self.llm = LLM(" in init and 'logprobs_mode="processed_logprobs"' in init
    # GRPO: TRL pushes the weights into its vLLM before it calls our rollout_func
    generate = inspect.getsource(GRPOTrainer._generate)
    assert generate.index("self.vllm_generation.sync_weights()") < generate.index("self.rollout_func(prompts, self)")


def test_a_vllm_recipe_gives_trl_its_vllm_settings(tmp_path):
    from retool.training.grpo import grpo_config

    recipe = RLRecipe(data=["x.jsonl"], output_dir=str(tmp_path), prompts_per_step=2, group_size=4, micro_batch_size=4,
                      vllm={"mode": "server", "server_host": "10.0.0.7", "server_port": 8123})
    config = grpo_config(recipe)
    assert (config.use_vllm, config.vllm_mode, config.vllm_server_host, config.vllm_server_port) == (
        True, "server", "10.0.0.7", 8123)
    assert grpo_config(recipe.model_copy(update={"vllm": None})).use_vllm is False
