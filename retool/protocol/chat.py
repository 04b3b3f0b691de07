"""The ``chat`` dialect's other half: tool calls through the tokenizer's own chat template.

The interpreter is offered as one function tool (``python``, one string parameter ``code``) in
``apply_chat_template(messages, tools=[...])``; the model calls it in its template's format
(hermes JSON or XML, ``retool.protocol.tool_calls``) and ends its turn; the loop answers with the
template's ``tool`` message and opens the next assistant turn. Everything the loop inserts comes
from the template itself, so a trajectory is, character for character, the template's rendering
of the whole conversation::

    prompt: apply_chat_template([system, user], tools, add_generation_prompt=True)
    model:  I will compute it.\\n<tool_call>\\n{"name": "python", ...}\\n</tool_call><|im_end|>   mask 1
    loop:   \\n<|im_start|>user\\n<tool_response>\\n2\\n</tool_response><|im_end|>\\n<|im_start|>assistant\\n   mask 0
    model:  The answer is \\boxed{2}.<|im_end|>                                                   mask 1
    loop:   \\n                                                                                 mask 0

The inserted text (``tool_reply``) is the difference between the template's rendering of a
fixed base conversation with and without the tool messages (plus the generation prompt), taken
from just after the model's end-of-turn token: the newline after ``<|im_end|>`` that the template
writes and the model never samples belongs to it. The model's own tokens are never re-rendered.

That is exact only if the template is **prefix-preserving** for this conversation shape
(appending a tool message leaves earlier turns as they were rendered, and an assistant turn
starts with the generation prompt). ``ChatFormat.of`` checks it on a probe conversation at start-up
and refuses a template that is not, naming the fix; Qwen3's own template fails it in its
non-thinking shape (it re-renders the last assistant turn without its empty ``<think>`` block),
and TRL ships training templates that pass.

Not here: running the calls (``retool.rollout``), the tag dialects (``retool.protocol``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retool.protocol.tool_calls import SYNTAXES, ParsedCall, ToolSyntax, parse_calls

TOOL_NAME = "python"
TOOL_DESCRIPTION = ("Run Python code in a stateful interpreter (variables persist between calls) and return what it "
                    "printed. Print every value you need to see.")
FIX = ("use a prefix-preserving training template (TRL ships several, e.g. trl/chat_templates/qwen3_training.jinja) "
       "with --chat-template FILE")


class ChatTemplateError(ValueError):
    """A chat template that the chat dialect cannot use exactly; the message names the fix."""


def python_tool(description: str | None = None) -> dict[str, Any]:
    """The code interpreter as an OpenAI-style function tool."""
    return {"type": "function", "function": {
        "name": TOOL_NAME, "description": description or TOOL_DESCRIPTION,
        "parameters": {"type": "object", "properties": {"code": {"type": "string", "description": "The Python code to run."}},
                       "required": ["code"]}}}


def call_item(name: str, arguments: dict[str, Any], call_id: str | None = None) -> dict[str, Any]:
    """One entry of an assistant message's ``tool_calls`` as templates read it (arguments a dict)."""
    item: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        item["id"] = call_id
    return item


def template_message(message: dict[str, Any]) -> dict[str, Any]:
    """A message as templates read it: OpenAI writes a call's arguments as a JSON string, templates
    render a dict."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    fixed = []
    for item in calls:
        function = dict(item.get("function", item))
        if isinstance(function.get("arguments"), str):
            try:
                function["arguments"] = json.loads(function["arguments"] or "{}")
            except json.JSONDecodeError:
                raise ValueError(f"the arguments of tool call {item.get('id', '?')} are not JSON") from None
        fixed.append({**item, "function": function})
    return {**message, "tool_calls": fixed}


def load_template(path: str | None) -> str | None:
    """The text of a ``--chat-template FILE`` (None: the tokenizer's own)."""
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise ChatTemplateError(f"no chat template file at {path}")
    return file.read_text()


@dataclass(frozen=True)
class ChatFormat:
    """A tokenizer's chat template, checked and read for tool calls. Build with ``ChatFormat.of``."""

    tokenizer: Any
    template: str | None  # None: the tokenizer's own
    syntax: ToolSyntax
    tools: tuple[dict[str, Any], ...]
    end_of_turn: str  # the special token that ends an assistant turn ("<|im_end|>"): generation stops there
    after_turn: str  # what the template writes after it ("\n"): inserted by the loop, mask 0
    thinking: bool  # assistant turns open with a <think> block the template keeps
    options: tuple[tuple[str, Any], ...] = ()  # the template's own switches (enable_thinking=False)

    @classmethod
    def of(cls, tokenizer, *, template: str | None = None, syntax: str = "auto", description: str | None = None,
           extra_tools: tuple[dict[str, Any], ...] = (), options: dict[str, Any] | None = None) -> "ChatFormat":
        """Read and check ``tokenizer``'s template (or ``template``); raises ``ChatTemplateError``
        when it renders no tools, writes calls in no format retool reads, or is not prefix-preserving."""
        if template is None and not getattr(tokenizer, "chat_template", None):
            raise ChatTemplateError("the tokenizer has no chat template; pass one with --chat-template FILE")
        if syntax not in ("auto", *SYNTAXES):
            raise ChatTemplateError(f"unknown tool-call format {syntax!r}; choose auto, {', '.join(SYNTAXES)}")
        tools = (python_tool(description), *extra_tools)
        options_ = tuple(sorted((options or {}).items()))
        draft = cls(tokenizer, template, "hermes", tools, "", "", False, options_)
        end_of_turn, after_turn = draft._turn_end()
        source = template if template is not None else str(tokenizer.chat_template)
        generation = draft.render([{"role": "user", "content": "x"}], generation_prompt=True)
        thinking = "<think>" in source and not generation.rstrip().endswith("</think>")
        draft = cls(tokenizer, template, "hermes", tools, end_of_turn, after_turn, thinking, options_)
        if generation == draft.render([{"role": "user", "content": "x"}], generation_prompt=True, tools=False):
            raise ChatTemplateError("the chat template does not render tools (no function tool appears in the prompt); "
                                    "pass a tool-calling template with --chat-template FILE")
        chosen = draft._detect_syntax() if syntax == "auto" else syntax
        if chosen is None:
            raise ChatTemplateError("the chat template writes tool calls in no format retool reads (hermes JSON or "
                                    "<function=…> XML inside <tool_call>); pass --tool-format or --chat-template FILE")
        fmt = cls(tokenizer, template, chosen, tools, end_of_turn, after_turn, thinking, options_)  # type: ignore[arg-type]
        fmt.check()
        return fmt

    # -- rendering ----------------------------------------------------------------------------------

    def render(self, messages: list[dict[str, Any]], *, generation_prompt: bool, tools: bool = True) -> str:
        kwargs: dict[str, Any] = dict(self.options)
        if self.template is not None:
            kwargs["chat_template"] = self.template
        try:
            text = self.tokenizer.apply_chat_template(messages, tools=list(self.tools) if tools else None, tokenize=False,
                                                      add_generation_prompt=generation_prompt, **kwargs)
        except Exception as exc:  # noqa: BLE001 - jinja raises whatever the template raises
            raise ChatTemplateError(f"the chat template failed to render: {type(exc).__name__}: {exc}") from exc
        return str(text)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The token ids that open an assistant turn after ``messages``, the tools declared."""
        return self.encode(self.render(messages, generation_prompt=True))

    def tool_reply(self, responses: list[str]) -> str:
        """The text the loop appends after the model's end-of-turn token when its turn made
        ``len(responses)`` calls: the template's tool messages and the next generation prompt."""
        base = [{"role": "user", "content": "x"}, self._assistant("x", [("x",)] * len(responses))]
        without = self.render(base, generation_prompt=False)
        with_tools = self.render(base + [{"role": "tool", "content": r} for r in responses], generation_prompt=True)
        if not without.endswith(self.end_of_turn + self.after_turn) or not with_tools.startswith(without):
            raise ChatTemplateError(f"the chat template renders earlier turns differently once a tool message "
                                    f"follows them; {FIX}")
        return self.after_turn + with_tools[len(without):]

    def model_turn(self, message: dict[str, Any]) -> str:
        """The text a model trained on this template writes for the assistant ``message``, through
        its end-of-turn token (for demonstrations, SFT data and scripted tests)."""
        before = self.render([{"role": "user", "content": "x"}], generation_prompt=True)
        through = self.render([{"role": "user", "content": "x"}, message], generation_prompt=False)
        if not through.startswith(before) or not through.endswith(self.after_turn):
            raise ChatTemplateError(f"the chat template does not start an assistant turn with its generation prompt; {FIX}")
        return through[len(before):len(through) - len(self.after_turn)]

    # -- reading the model's turn -----------------------------------------------------------------------

    def turn_text(self, ids: list[int]) -> str:
        """One model turn's text, its end-of-turn token cut off."""
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return text[:-len(self.end_of_turn)] if text.endswith(self.end_of_turn) else text

    def calls(self, text: str) -> list[ParsedCall]:
        return parse_calls(text, self.syntax)

    def assistant_message(self, text: str) -> dict[str, Any]:
        """The assistant message a turn's text (end-of-turn cut) stands for: the content before the
        first call, and the calls. Text between or after calls has no place in a message."""
        calls = self.calls(text)
        if not calls:
            return {"role": "assistant", "content": text}
        items = [call_item(c.name or "", c.arguments) for c in calls]
        return {"role": "assistant", "content": text[:calls[0].start].rstrip("\n"), "tool_calls": items}

    def messages_of(self, traj) -> list[dict[str, Any]]:
        """A trajectory's side of the conversation as messages (assistant turns with their calls,
        the tool messages the model read): what a chat records as history, and what the template
        renders back to exactly the trajectory (``trajectory_text == render(prompt + these)``)."""
        messages: list[dict[str, Any]] = []
        at = 0
        for mask, ids in traj.segments():
            if mask:
                messages.append(self.assistant_message(self.turn_text(ids)))
            else:
                messages += [{"role": "tool", "content": c.response or ""} for c in traj.tool_calls if c.code_end == at]
            at += len(ids)
        return messages

    # -- the start-up check -----------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse a template that cannot give exact trajectories for the conversation shape the
        loop writes (calls, tool messages, several calls in a turn, a final answer)."""
        conversation = self._probe()
        full = self.render(conversation, generation_prompt=False)
        for i, message in enumerate(conversation):
            if message["role"] != "assistant":
                continue
            before = self.render(conversation[:i], generation_prompt=True)
            through = self.render(conversation[:i + 1], generation_prompt=False)
            if not through.startswith(before):
                raise ChatTemplateError(f"the chat template renders an assistant turn differently from its "
                                        f"generation prompt ({_difference(before, through)}); {FIX}")
            if not through.endswith(self.end_of_turn + self.after_turn):
                raise ChatTemplateError(f"the chat template does not end assistant turns with {self.end_of_turn!r}")
            if not full.startswith(through):
                raise ChatTemplateError(f"the chat template is not prefix-preserving: appending a tool message changes "
                                        f"how earlier turns are rendered ({_difference(through, full)}); {FIX}")
            responses = []
            for later in conversation[i + 1:]:
                if later["role"] != "tool":
                    break
                responses.append(later["content"])
            if responses:
                reply = self.tool_reply(responses)
                expected = full[len(through) - len(self.after_turn):len(through) - len(self.after_turn) + len(reply)]
                if reply != expected:
                    raise ChatTemplateError(f"the chat template renders tool messages differently by position "
                                            f"({_difference(expected, reply)}); {FIX}")

    def _probe(self) -> list[dict[str, Any]]:
        return [{"role": "system", "content": "You solve problems."}, {"role": "user", "content": "What is 1 + 1?"},
                self._assistant("I will compute it.", [("print(1 + 1)",)]), {"role": "tool", "content": "2"},
                self._assistant("Twice more.", [("x = 2\nprint(x)",), ('print("a\\"b")',)]),
                {"role": "tool", "content": "2"}, {"role": "tool", "content": 'a"b'},
                self._assistant("The answer is \\boxed{2}.", [])]

    def _assistant(self, content: str, codes: list[tuple[str]]) -> dict[str, Any]:
        reasoning = "<think>\nLet me work it out.\n</think>\n\n" if self.thinking else ""
        message: dict[str, Any] = {"role": "assistant", "content": reasoning + content}
        if codes:
            message["tool_calls"] = [call_item(TOOL_NAME, {"code": code}) for (code,) in codes]
        return message

    def _turn_end(self) -> tuple[str, str]:
        mark = "MARK-7f3a"
        text = self.render([{"role": "user", "content": "x"}, {"role": "assistant", "content": mark}],
                           generation_prompt=False, tools=False)
        if mark not in text:
            raise ChatTemplateError("the chat template does not render the assistant's content")
        after = text[text.rindex(mark) + len(mark):]
        ids = self.encode(after)
        special = set(getattr(self.tokenizer, "all_special_ids", [])) | set(getattr(self.tokenizer, "added_tokens_decoder", {}))
        if not ids or ids[0] not in special:
            raise ChatTemplateError(f"the chat template ends an assistant turn with {after!r}, not a special token: "
                                    "generation cannot stop there exactly")
        end = self.tokenizer.decode(ids[:1], skip_special_tokens=False)
        if not after.startswith(end):
            raise ChatTemplateError(f"the chat template's end of turn {after!r} does not start with {end!r}")
        return end, after[len(end):]

    def _detect_syntax(self) -> ToolSyntax | None:
        text = self.model_turn(self._assistant("", [("print(1)",)]))
        if "<function=" in text:
            return "xml"
        if '"name"' in text and "<tool_call>" in text:
            return "hermes"
        return None


def call_code(call: ParsedCall) -> tuple[str, str | None]:
    """A parsed chat call's code, or why it cannot run (the model's mistake, answered in one line)."""
    if call.error is not None:
        return "", call.error
    if call.name != TOOL_NAME:
        return "", f"unknown function {call.name!r}; the only tool is {TOOL_NAME}"
    code = call.arguments.get("code")
    if not isinstance(code, str):
        return "", f"the {TOOL_NAME} tool needs a string argument 'code'"
    return code, None


def encode_spans(tokenizer, text: str, pieces: list[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """``text`` tokenized once (never piece by piece: the ids must be the template's), and for each
    of ``pieces`` (in order in ``text``) the token range from where it starts to where the next one
    starts, the first from 0 and the last to the end: the calls' output spans partition the reply."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    starts, at = [], 0
    for piece in pieces:
        found = text.find(piece, at)
        at = found + len(piece) if found >= 0 else at
        starts.append(max(found, 0))
    token_at = [sum(1 for lo, _ in offsets if lo < c) for c in starts]
    token_at[0] = 0
    bounds = [(token_at[i], token_at[i + 1] if i + 1 < len(pieces) else len(ids)) for i in range(len(pieces))]
    return ids, bounds


def _difference(a: str, b: str) -> str:
    """Where two renderings part, in a few characters each."""
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"at character {at}: {json.dumps(a[at:at + 30])} vs {json.dumps(b[at:at + 30])}"
