"""A tiny random causal LM and a real byte-level BPE tokenizer, built in-process in a second.

The tokenizer is trained on text full of the protocol's tags, so they split into several tokens
(stop strings split across tokens are the interesting case). Nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Let me compute this with code.\n<code>\n```python\nprint(2 ** 10)\n```\n</code>\n<interpreter>\n1024\n</interpreter>\n",
    "The answer is <answer>\n\\boxed{42}\n</answer> and more text about numbers 0123456789.",
    "```python\nx = sum(range(100))\nprint(x)\n```\n```output\n4950\n```\n",
    "We reason step by step: first, the sum of squares; then the remainder modulo 1000.",
] * 20


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      bos_token="<|im_start|>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


_CHAT_CORPUS = [
    'I will compute it.\n<tool_call>\n{"name": "python", "arguments": {"code": "print(2 ** 10)"}}\n</tool_call>',
    "<tool_call>\n<function=python>\n<parameter=code>\nx = sum(range(100))\nprint(x)\n</parameter>\n</function>\n</tool_call>",
    "user\n<tool_response>\n1024\n</tool_response>\nassistant\n<think>\nLet me work it out.\n</think>\n\n",
    "# Tools\n\nYou may call one or more functions to assist with the user query. The answer is \\boxed{42}.",
    '{"type": "function", "function": {"name": "python", "description": "Run Python code", "parameters": {}}}',
] * 20


def template_file(name: str) -> Path:
    """A real chat template as TRL ships it: ``qwen2_5`` (hermes JSON, Qwen2.5-Instruct's own),
    ``qwen3``, ``qwen3_training``, ``qwen3_6`` (XML calls), ..."""
    import trl

    return Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"


@functools.lru_cache(maxsize=8)
def tiny_chat_tokenizer(template: str = "qwen2_5"):
    """A byte-level BPE tokenizer laid out like Qwen's: ``<|im_start|>``/``<|im_end|>`` special,
    ``<tool_call>``, ``<tool_response>``, ``<think>`` and their closings added (not special), and
    a real chat template (``template_file(template)``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS + _CHAT_CORPUS, trainer)
    tok.add_tokens([AddedToken(t, normalized=False) for t in
                    ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    wrapped.chat_template = template_file(template).read_text()
    return wrapped


def tiny_model(seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4, tokenizer=None):
    """``hidden // heads`` is the head size: vLLM's attention kernels want 64 or more (``hidden=128,
    heads=2``); the CPU tests keep 16. ``tokenizer``: another tokenizer's vocabulary (the chat one)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer
