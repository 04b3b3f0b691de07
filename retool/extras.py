"""Which optional install brings a missing module, so a command that needs one says how to get it.

The core — sandboxes, the rollout, grading, the protocol, the OpenAI-compatible engine — installs
with ``pip install retool``; local models, training, serving and evaluation reports are extras
(``pyproject.toml``). A command whose extra is missing stops with the ``pip install`` that fixes it
instead of a traceback (``retool.cli.main``).
"""

from __future__ import annotations

EXTRA_OF = {
    # local models (the hf engine, the embedded default)
    "torch": "hf", "accelerate": "hf", "gguf": "hf", "safetensors": "hf",
    # training
    "trl": "train", "peft": "hf", "tensorboard": "train", "yaml": "train",
    # the OpenAI-compatible server
    "fastapi": "serve", "uvicorn": "serve",
    # evaluation reports, plots, notebooks, datasets
    "matplotlib": "eval", "nbformat": "eval", "datasets": "eval", "pyarrow": "eval",
    # the rest of the optional backends
    "docker": "docker", "vllm": "gpu", "wandb": "wandb", "deepspeed": "deepspeed",
}


def install_hint(exc: ModuleNotFoundError) -> str | None:
    """The sentence that says which extra brings the module ``exc`` is about; None if it is none of
    ours (a real bug, to be shown as one)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    hint = f"this needs {top!r}, which comes with retool's {extra!r} extra: pip install 'retool[{extra}]'"
    if top == "torch":
        hint += " (on a CPU-only machine install torch first: pip install torch==2.13.0)"
    return hint
