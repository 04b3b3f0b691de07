"""Engines: transformers (``hf``), vLLM (``vllm``, GPU) and any OpenAI-compatible server (``openai``)."""

from retool.engines.base import Completion, Engine, EngineStats, SamplingParams

__all__ = ["Completion", "Engine", "EngineStats", "SamplingParams"]
