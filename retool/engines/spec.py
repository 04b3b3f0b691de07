"""``EngineSpec``: which engine serves which model — the one place these settings are declared.

Every command that generates (``solve``, ``chat``, ``serve``, ``eval``, ``coldstart rewrite``,
the benchmarks) holds an ``EngineSpec`` and calls ``build``; the CLI makes its options from these
fields (``retool.cli.options``), so each option exists once, with one help text. An option a
backend does not take is refused, not dropped: ``--base-url`` with the hf engine is an error, not a
server silently ignored.

How many sequences an engine batches is the caller's to say (``build(max_batch=...)``): it follows
from the command (one for ``solve``, the concurrency for ``eval``), not from the user.

Not here: the engines themselves (``hf``, ``vllm``, ``openai``), model resolution (``retool.models``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from retool.engines.base import Engine

ENGINES = ("hf", "vllm", "openai")
# what each backend takes (besides ``kind``)
TAKES = {
    "hf": {"model", "device"},
    "vllm": {"model"},
    "openai": {"model", "base_url", "api_key", "served_model", "token_ids"},
}


@dataclass(frozen=True)
class EngineSpec:
    kind: str = field(default="hf", metadata={"flag": "--engine", "help": "Engine: hf (transformers), vllm (GPU) "
                                                                         "or openai (an OpenAI-compatible server)."})
    model: str | None = field(default=None, metadata={
        "flag": "--model", "short": "-m",
        "help": "Local path, hub name, or the embedded default (for openai: the served model's tokenizer)."})
    base_url: str | None = field(default=None, metadata={
        "help": "openai: the server's base URL (http://HOST:PORT/v1); several, comma-separated: each trajectory "
                "stays on one (its prefix cache), new ones go to the least busy."})
    api_key: str | None = field(default=None, metadata={"help": "openai: the server's API key (default $OPENAI_API_KEY)."})
    served_model: str | None = field(default=None, metadata={"help": "openai: the model's name at the server "
                                                                     "(default: the server's only model)."})
    token_ids: bool = field(default=False, metadata={"help": "openai: exchange token ids (vLLM servers; exact, "
                                                             "with logprobs) instead of text."})
    device: str = field(default="cpu", metadata={"help": "hf: the torch device (cpu, cuda, cuda:1)."})

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ValueError(f"unknown engine {self.kind!r}; choose one of {', '.join(ENGINES)}")
        defaults = {f.name: f.default for f in fields(self)}
        refused = [name for name, default in defaults.items()
                   if name != "kind" and name not in TAKES[self.kind] and getattr(self, name) != default]
        if refused:
            flags = ", ".join("--" + name.replace("_", "-") for name in refused)
            raise ValueError(f"{flags} do(es) not apply to the {self.kind} engine; "
                             f"it takes {', '.join(sorted(TAKES[self.kind]))}")
        if self.kind == "openai" and not self.base_url:
            raise ValueError("the openai engine needs --base-url (e.g. http://127.0.0.1:8000/v1)")

    def build(self, max_batch: int = 32, **options: Any) -> Engine:
        """The engine (loading the model where it runs locally). ``options`` go to the backend."""
        if self.kind == "hf":
            from retool.engines.hf import HFEngine
            from retool.models import load_model

            hf_model, tokenizer = load_model(self.model, device=self.device)
            return HFEngine(hf_model, tokenizer, max_batch=max_batch, **options)
        if self.kind == "vllm":
            from retool.engines.vllm import VLLMEngine
            from retool.models import resolve_model

            return VLLMEngine(str(resolve_model(self.model).path), **options)
        from retool.engines.openai import OpenAIEngine
        from retool.models import load_tokenizer

        # the tokenizer of the served model: prompts and interpreter output become its token ids
        tokenizer = load_tokenizer(self.model)
        urls = [u.strip() for u in self.base_url.split(",") if u.strip()]
        engines = [OpenAIEngine(url, tokenizer, model=self.served_model, api_key=self.api_key, token_ids=self.token_ids,
                                **options) for url in urls]
        if len(engines) == 1:
            return engines[0]
        from retool.engines.routed import RoutedEngine

        return RoutedEngine(engines)  # several servers: a trajectory's requests stay on one
