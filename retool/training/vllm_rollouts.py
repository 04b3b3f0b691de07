"""Rollouts on vLLM during RL: TRL's vLLM (weights kept in sync) behind our ``Engine`` contract.

TRL already solves the hard part: ``trl.generation.vllm_generation.VLLMGeneration`` builds a
colocated ``vllm.LLM`` on each training GPU (``mode: colocate``) or connects to ``trl vllm-serve``
on other GPUs (``mode: server``), and ``sync_weights()`` pushes the live policy into it, gathering
ZeRO-3 / FSDP shards and merging LoRA as needed. The GRPO family gets one from ``GRPOTrainer``
(``use_vllm=True``; TRL syncs the weights before each ``rollout_func`` call); PPO builds one with
``open_vllm`` and syncs before each rollout. What TRL's own generation cannot do is our
multi-turn loop (stop at ``</code>``, run the code, continue), so the rollout talks to that vLLM
through an engine of ours:

* colocate: ``ColocatedVLLMEngine`` over ``VLLMGeneration.llm``, on this rank's GPU;
* server: ``OpenAIEngine(token_ids=True)`` against the server's ``/v1/completions`` with token-id
  prompts: every rank sends its own requests (no collectives in a loop whose turn count differs per
  rank) and the server batches them.

Sampling seeds stay ours (per trajectory and turn), so a resumed run draws the same samples when
vLLM's sampling is deterministic for a seed.

Not here: the rollout loop (``rl_rollout``), GRPO settings (``grpo``). This module and ``grpo`` are
the only ones that touch TRL; ``tests/test_grpo_contract.py`` pins the TRL names used here.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from retool.engines.base import Engine
from retool.training.recipe import RecipeError, VLLMSettings


def check_vllm_usable(settings: VLLMSettings) -> None:
    """Fail before any model loads when the recipe asks for vLLM that this machine cannot run."""
    if importlib.util.find_spec("vllm") is None:
        raise RecipeError("the recipe's vllm: section needs vLLM (pip install 'retool[gpu]', on a CUDA machine); "
                          "remove the section to sample with the transformers engine instead")
    import torch

    if settings.mode == "colocate" and not torch.cuda.is_available():
        raise RecipeError("vllm mode colocate needs a CUDA GPU on every training process")


def server_url(settings: VLLMSettings) -> str:
    return settings.server_base_url or f"http://{settings.server_host}:{settings.server_port}"


def rollout_engine(settings: VLLMSettings, vllm_generation: Any, tokenizer: Any) -> Engine:
    """The engine our interpreter loop samples with, over the trainer's (already synced) vLLM."""
    if settings.mode == "colocate":
        from retool.engines.vllm_colocated import ColocatedVLLMEngine

        return ColocatedVLLMEngine(vllm_generation.llm, tokenizer)
    from retool.engines.openai import OpenAIEngine

    return OpenAIEngine(server_url(settings), tokenizer, token_ids=True)


def grpo_vllm_args(settings: VLLMSettings) -> dict[str, Any]:
    """``GRPOConfig`` keywords for TRL's vLLM (ours samples; TRL builds the vLLM and syncs weights)."""
    args = {
        "use_vllm": True, "vllm_mode": settings.mode, "vllm_gpu_memory_utilization": settings.gpu_memory_utilization,
        "vllm_tensor_parallel_size": settings.tensor_parallel_size, "vllm_max_model_length": settings.max_model_length,
        "vllm_server_timeout": settings.server_timeout,
    }
    if settings.server_base_url:
        args["vllm_server_base_url"] = settings.server_base_url
    else:
        args.update(vllm_server_host=settings.server_host, vllm_server_port=settings.server_port)
    return args


def vllm_generation_kwargs(settings: VLLMSettings, max_tokens: int) -> dict[str, Any]:
    """``VLLMGeneration`` keywords for PPO (sampling settings are ours, per request; these only size it)."""
    return dict(mode=settings.mode, server_base_url=server_url(settings), server_timeout=settings.server_timeout,
                tensor_parallel_size=settings.tensor_parallel_size,
                gpu_memory_utilization=settings.gpu_memory_utilization, max_model_length=settings.max_model_length,
                max_completion_length=max_tokens)


def open_vllm(settings: VLLMSettings, model: Any, accelerator: Any, tokenizer: Any, max_tokens: int) -> Any:
    """A ``VLLMGeneration`` for PPO's policy (``model`` unwrapped; ``sync_weights()`` before sampling)."""
    from trl.generation.vllm_generation import VLLMGeneration

    return VLLMGeneration(model=model, accelerator=accelerator, processing_class=tokenizer,
                          **vllm_generation_kwargs(settings, max_tokens))
