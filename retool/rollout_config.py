"""How a trajectory is written: ``RolloutConfig``, the one place the loop's settings are declared
(the CLI's rollout options and the recipes' ``rollout:`` sections are made from its fields), and
``render_prompt``. Re-exported by ``retool.rollout``; here so the loop itself stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from retool.engines.base import SamplingParams
from retool.protocol import get_dialect
from retool.protocol.chat import ChatFormat, load_template
from retool.protocol.tool_calls import SYNTAXES


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Chat messages as the token ids that open an assistant turn."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@dataclass(frozen=True)
class RolloutConfig:
    """How a trajectory is written — the one place these settings are declared (the CLI's options
    and the recipes' ``rollout:`` section come from these fields). ``max_total_tokens`` is the
    whole trajectory's budget (model and interpreter tokens after the prompt); each generate call
    gets what is left of it as ``SamplingParams.max_new_tokens``. ``max_tool_calls: 0`` is
    text-only reasoning: the text-only prompt, and a code block ends the answer. The cell timeout
    is the sandbox's (``SandboxLimits.timeout_s``). Sampling is greedy unless a caller says
    otherwise (``retool eval`` uses ReTool's temperature 1.0 and top-p 0.7, RL its recipe's)."""

    dialect: str = field(default="retool", metadata={"cli": True, "help": "Protocol dialect: retool "
                                                                          "(<code>…</code>), fenced (```python), or chat "
                                                                          "(tool calls in the model's chat template)."})
    max_tool_calls: int = field(default=8, metadata={"cli": True, "help": "Most code executions per answer."})
    max_total_tokens: int = field(default=1024, metadata={
        "cli": True, "help": "Most tokens after the prompt, model and interpreter together."})
    # a model stuck writing calls that cannot run (code that does not parse, unreadable chat calls:
    # ``ToolCall.malformed``) is stopped after this many in a row (finish "invalid_calls"); None: never
    max_invalid_calls_in_a_row: int | None = field(default=None, metadata={
        "cli": True, "help": "End an answer after this many malformed tool calls in a row (code that does not "
                             "parse, unreadable calls)."})
    sampling: SamplingParams = SamplingParams(temperature=0.0)
    output_head_chars: int = 1024  # the model-facing cut of long interpreter output: head and tail kept
    output_tail_chars: int = 1024
    few_shot: bool = field(default=True, metadata={
        "cli": True, "help": "Show the dialect's one worked example (--no-few-shot for models trained without it)."})
    # None: the dialect's own (its text-only one when max_tool_calls is 0). A retool-trained model
    # records the one it was trained under in its prompt card (``retool.models.PromptCard``).
    system_prompt: str | None = None
    # the chat dialect (``retool.protocol.chat``): which template, which call format, the tool's text
    chat_template: str | None = field(default=None, metadata={
        "cli": True, "help": "Chat dialect: a Jinja chat template file to use instead of the tokenizer's own."})
    tool_format: str = field(default="auto", metadata={
        "cli": True, "help": "Chat dialect: how calls are written: auto (from the template), hermes (JSON) or xml."})
    tool_description: str | None = field(default=None, metadata={
        "cli": True, "help": "Chat dialect: the python tool's description shown to the model."})
    # functions a client declared (OpenAI tool dicts, ``retool serve``): a call to one ends the turn
    client_tools: tuple[dict[str, Any], ...] = ()
    thinking: str = field(default="auto", metadata={
        "cli": True, "help": "Chat dialect, Qwen3-style templates: on / off sets enable_thinking; auto keeps the "
                             "template's default."})

    # budget forcing (``retool.budget``, s1): thinking = model tokens before the answer opens
    max_thinking_tokens: int | None = field(default=None, metadata={
        "cli": True, "help": "Cap the model's thinking tokens (across tool turns); at the cap the answer is opened "
                             "for it."})
    min_thinking_tokens: int = field(default=0, metadata={
        "cli": True, "help": "Suppress an answer opened before this many thinking tokens (appending --extend-with)."})
    extend: int = field(default=0, metadata={
        "cli": True, "help": "Suppress the model's answer opening this many times, appending --extend-with each time."})
    extend_with: str = field(default="Wait", metadata={
        "cli": True, "help": "What is appended when an answer opening is suppressed."})
    forced_answer_tokens: int = 64  # the most the model writes once its answer is open under budget forcing

    @property
    def budget_forcing(self) -> bool:
        return self.max_thinking_tokens is not None or self.min_thinking_tokens > 0 or self.extend > 0

    def __post_init__(self) -> None:
        get_dialect(self.dialect)  # an unknown name fails here, with the known ones
        if self.max_tool_calls < 0 or self.max_total_tokens <= 0:
            raise ValueError("max_tool_calls must be >= 0 and max_total_tokens > 0")
        if self.max_invalid_calls_in_a_row is not None and self.max_invalid_calls_in_a_row < 1:
            raise ValueError("max_invalid_calls_in_a_row must be >= 1 (or None: no cap)")
        if (self.max_thinking_tokens is not None and self.max_thinking_tokens < 1) or self.min_thinking_tokens < 0 \
                or self.extend < 0 or self.forced_answer_tokens < 1:
            raise ValueError("max_thinking_tokens and forced_answer_tokens must be >= 1, min_thinking_tokens and "
                             "extend >= 0")
        if self.tool_format not in ("auto", *SYNTAXES) or self.thinking not in ("auto", "on", "off"):
            raise ValueError(f"tool_format must be auto, hermes or xml and thinking auto, on or off: "
                             f"{self.tool_format!r}, {self.thinking!r}")

    def chat_format(self, tokenizer) -> "ChatFormat":
        """The chat dialect's template for ``tokenizer``, checked (``ChatTemplateError`` if unusable)."""
        options = {} if self.thinking == "auto" else {"enable_thinking": self.thinking == "on"}
        return ChatFormat.of(tokenizer, template=load_template(self.chat_template), syntax=self.tool_format,
                             description=self.tool_description, options=options, extra_tools=self.client_tools)

    @property
    def client_tool_names(self) -> frozenset[str]:
        return frozenset(t.get("function", {}).get("name", "") for t in self.client_tools)

    @property
    def tools(self) -> bool:
        return self.max_tool_calls > 0
