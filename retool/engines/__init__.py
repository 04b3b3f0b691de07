"""Engines: transformers (``hf``), vLLM (``vllm``, GPU) and any OpenAI-compatible server (``openai``).

``EngineSpec`` (``spec.py``) says which one serves which model and builds it; each backend module
is imported only when asked for (vLLM and the openai client are optional dependencies).
"""

from __future__ import annotations

from retool.engines.base import Completion, Engine, EngineStats, SamplingParams
from retool.engines.spec import ENGINES, EngineSpec

__all__ = ["ENGINES", "Completion", "Engine", "EngineSpec", "EngineStats", "SamplingParams"]
