"""Engines: transformers (``hf``), vLLM (``vllm``, GPU) and any OpenAI-compatible server (``openai``).

``create_engine`` builds one from command-line style arguments; each backend module is imported
only when asked for (vLLM and the openai client are optional dependencies).
"""

from __future__ import annotations

from typing import Any

from retool.engines.base import Completion, Engine, EngineStats, SamplingParams

ENGINES = ("hf", "vllm", "openai")


def create_engine(
    kind: str = "hf",
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    device: str = "cpu",
    max_batch: int = 32,
    **options: Any,
) -> Engine:
    """An engine of ``kind`` serving ``model`` (None: the embedded default)."""
    if kind == "hf":
        from retool.engines.hf import HFEngine
        from retool.models import load_model

        hf_model, tokenizer = load_model(model, device=device)
        return HFEngine(hf_model, tokenizer, max_batch=max_batch, **options)
    if kind == "vllm":
        from retool.engines.vllm import VLLMEngine
        from retool.models import resolve_model

        return VLLMEngine(str(resolve_model(model).path), **options)
    if kind == "openai":
        if not base_url:
            raise ValueError("the openai engine needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        from retool.engines.openai import OpenAIEngine
        from retool.models import load_tokenizer

        # the tokenizer of the served model, to turn token ids into the text the server takes
        return OpenAIEngine(base_url, load_tokenizer(model), model=options.pop("served_model", None), api_key=api_key,
                            **options)
    raise ValueError(f"unknown engine {kind!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Completion", "Engine", "EngineStats", "SamplingParams", "create_engine"]
