"""The text protocol between the model and the interpreter: one ``Dialect`` owns every tag, the
prompts that teach it, and the one grammar that reads a transcript back.

ReTool's dialect (the default)::

    ...reasoning...
    <code>
    ```python
    print(2**100 % 97)
    ```
    </code>                 <- generation stops here ("</code>" is kept in the output)
    <interpreter>
    22
    </interpreter>          <- appended by the loop (loss-mask 0)
    ...more reasoning...
    <answer>
    \\boxed{22}
    </answer>

The fenced dialect (ToRA / Qwen-TIR style) writes ```` ```python … ``` ```` and stops at
```` ```output ````; the loop appends the output and closes the fence.

**One grammar** (``grammar.py``): ``Dialect.parse`` turns a transcript into typed ``Segment``\\ s
(text, code, interpreter output, answer, with spans); ``TranscriptParser`` does the same
incrementally, for streams. Everything that reads a transcript goes through it.
``outputs=False`` reads the *model's* text alone (the trajectory's mask-1 tokens): there the
interpreter's replies are absent, so a fenced ```` ```output ```` is followed by the model again.

Not here: tokenizing (``retool.trajectory``), grading (``retool.grading`` decides whether an answer
is right), running code (``retool.sandbox``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from retool.protocol.grammar import LOOKAHEAD, Segment, SegmentKind, TranscriptError, TranscriptParser
from retool.protocol.render import last_boxed, output_text, truncate_middle
from retool.protocol.tool_calls import call_source
from retool.sandbox.base import ExecResult
from typing import Any, Callable

__all__ = ["CHAT", "DIALECTS", "FENCED", "LOOKAHEAD", "RETOOL", "Dialect", "Segment", "SegmentKind", "TranscriptError",
           "TranscriptParser", "detect_dialect", "get_dialect", "last_boxed", "output_text", "truncate_middle"]


@dataclass(frozen=True)
class Dialect:
    """How code, its output and the answer are written in one protocol, and how it is taught."""

    name: str
    code_open: str  # what the model writes to start a block (for prompts and conversion)
    code_close: str  # what ends a block; the stop string is its last part
    stop: str  # generation stops once this appears; it stays in the model's output
    output_open: str  # appended by the loop before the interpreter output
    output_close: str  # appended after it
    answer_open: str  # written around the final \\boxed{} ("" where the box stands in the prose)
    answer_close: str
    answer_stop: str | None  # a string after which the answer is complete (stop there too)
    tokens: re.Pattern[str]  # every marker, one named group per role
    system_prompt: str
    text_system_prompt: str  # text-only reasoning (no interpreter): the baseline tool RL is measured against
    # chat: calls and outputs are chat messages rendered by the tokenizer's template
    # (``retool.protocol.chat``), not tags the loop writes; the markers above only read transcripts
    structured: bool = False
    source_reader: Callable[[str], str] | None = None  # a block's body → its source, where not a fence

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) + ((self.answer_stop,) if self.answer_stop else ())

    @property
    def stop_opens_output(self) -> bool:
        """Whether the stop string itself opens the output block (fenced: ```` ```output ````)."""
        return not self.output_open.strip()

    def parse(self, text: str, *, strict: bool = False, outputs: bool = True) -> list[Segment]:
        """``text`` as typed segments; ``strict`` raises ``TranscriptError`` on a misplaced marker."""
        parser = TranscriptParser(self, strict=strict, outputs=outputs)
        parser.text = text
        return parser.close()

    def code_source(self, inner: str) -> str:
        """The source inside a block's markers (ReTool's optional ```` ```python ```` fence dropped)."""
        if self.source_reader is not None:
            return self.source_reader(inner)
        if self.stop_opens_output:
            return inner.strip("\n")
        fenced = re.fullmatch(r"\s*(?:```(?:python|py)?[ \t]*\n)?(?P<code>.*?)(?:\n?```\s*)?", inner, re.DOTALL)
        return (fenced.group("code") if fenced else inner).strip("\n")

    def extract_code(self, text: str) -> str | None:
        """The source of the code block that ``text`` ends with (the turn just generated), if any."""
        segments = [s for s in self.parse(text, outputs=False) if s.kind != "text" or s.body.strip()]
        if segments and segments[-1].kind == "code" and segments[-1].closed:
            return segments[-1].body
        return None

    def render_output(self, result: ExecResult, head: int = 1024, tail: int = 1024) -> str:
        """The text appended after a block: the interpreter's output in this dialect's wrapper."""
        return f"{self.output_open}{output_text(result, head, tail)}{self.output_close}"

    def render_code(self, source: str) -> str:
        return f"{self.code_open}{source}{self.code_close}"

    def format_answer(self, value: str) -> str:
        return f"{self.answer_open}\\boxed{{{value}}}{self.answer_close}"

    def find_answer(self, text: str, *, outputs: bool = False) -> str | None:
        """The final answer: the last ``\\boxed{}`` of the last answer section if there is one, else
        the last one in the prose. Code and interpreter output never count (``print("\\boxed{7}")``
        is not an answer). ``outputs=False``: ``text`` is the model's alone (no interpreter replies)."""
        return self.answer_in(self.parse(text, outputs=outputs))

    @staticmethod
    def answer_in(segments: list[Segment]) -> str | None:
        sections = [s for s in segments if s.kind == "answer"]
        if sections:
            return last_boxed(sections[-1].body)
        return last_boxed("".join(s.body for s in segments if s.kind == "text"))

    def example_turns(self) -> list[dict[str, Any]]:
        """A one-shot demonstration of the dialect, as a user/assistant exchange (chat: with a
        tool call and the tool's message, for the template to render)."""
        if self.structured:
            call = {"type": "function", "function": {"name": "python", "arguments": {"code": _EXAMPLE_CODE}}}
            return [{"role": "user", "content": _EXAMPLE_PROBLEM},
                    {"role": "assistant", "content": _EXAMPLE_REASONING, "tool_calls": [call]},
                    {"role": "tool", "content": _EXAMPLE_OUTPUT},
                    {"role": "assistant", "content": f"{_EXAMPLE_CONCLUSION}\n{self.format_answer(_EXAMPLE_OUTPUT)}"}]
        reply = (f"{_EXAMPLE_REASONING}\n{self.render_code(_EXAMPLE_CODE)}{self.output_open}{_EXAMPLE_OUTPUT}"
                 f"{self.output_close}{_EXAMPLE_CONCLUSION}\n{self.format_answer(_EXAMPLE_OUTPUT)}")
        return [{"role": "user", "content": _EXAMPLE_PROBLEM}, {"role": "assistant", "content": reply}]

    def messages(self, problem: str, few_shot: bool = True, tools: bool = True,
                 system_prompt: str | None = None) -> list[dict[str, Any]]:
        """The chat messages that open a trajectory: system prompt, optional demonstration, problem.
        ``tools=False`` is the text-only prompt (no interpreter, no demonstration of one);
        ``system_prompt`` replaces the dialect's (a model trained under another keeps its own)."""
        if not tools:
            system = system_prompt if system_prompt is not None else self.text_system_prompt
            return [{"role": "system", "content": system}, {"role": "user", "content": problem}]
        system = system_prompt if system_prompt is not None else self.system_prompt
        return [{"role": "system", "content": system}, *(self.example_turns() if few_shot else []),
                {"role": "user", "content": problem}]


# A worked example shown before the problem: small models follow a demonstration far better than
# instructions (the embedded 135M model writes no code without it).
_EXAMPLE_PROBLEM = "What is the sum of the squares of the first 20 positive integers?"
_EXAMPLE_REASONING = "I will compute the sum directly."
_EXAMPLE_CODE = "print(sum(k * k for k in range(1, 21)))"
_EXAMPLE_OUTPUT = "2870"
_EXAMPLE_CONCLUSION = "The sum is 2870."

_INTRO = "You solve math problems by reasoning step by step"
_TOOLS = f"{_INTRO} and running Python when a computation helps."
_TEXT_ONLY = f"{_INTRO}. You cannot run code."

RETOOL = Dialect(
    name="retool",
    code_open="<code>\n```python\n",
    code_close="\n```\n</code>",
    stop="</code>",
    output_open="\n<interpreter>\n",
    output_close="\n</interpreter>\n",
    answer_open="<answer>\n",
    answer_close="\n</answer>",
    answer_stop="</answer>",
    tokens=re.compile(r"(?P<code_open><code>)|(?P<stop></code>)|(?P<output_open><interpreter>)"
                      r"|(?P<output_close></interpreter>)|(?P<answer_open><answer>)|(?P<answer_close></answer>)"),
    system_prompt=f"""{_TOOLS}

To run code, write it in a block like this, and stop:
<code>
```python
print(2**10 - 1)
```
</code>
The interpreter then replies with what the code printed:
<interpreter>
1023
</interpreter>
Variables persist between blocks. Print every value you need to see. Check your reasoning with \
code whenever a calculation is long or error-prone.

When you are sure, give the final answer as a number in this form and stop:
<answer>
\\boxed{{1023}}
</answer>""",
    text_system_prompt=f"""{_TEXT_ONLY}

When you are sure, give the final answer as a number in this form and stop:
<answer>
\\boxed{{1023}}
</answer>""",
)

FENCED = Dialect(
    name="fenced",
    code_open="```python\n",
    code_close="\n```\n```output",
    stop="```output",
    output_open="\n",
    output_close="\n```\n",
    answer_open="",
    answer_close="",
    answer_stop=None,
    # prose may sit between the closing fence and the output fence ("This prints the sum.\n```output")
    tokens=re.compile(r"(?P<stop>```output)|(?P<code_open>```(?:python|py)[ \t]*\n)|(?P<fence>```)"),
    system_prompt=f"""{_TOOLS}

To run code, write a python block and open an output block; the interpreter fills it in:
```python
print(2**10 - 1)
```
```output
1023
```
Variables persist between blocks. Print every value you need to see.

When you are sure, put the final answer in \\boxed{{}}, for example \\boxed{{1023}}.""",
    text_system_prompt=f"""{_TEXT_ONLY}

When you are sure, put the final answer in \\boxed{{}}, for example \\boxed{{1023}}.""",
)

CHAT = Dialect(
    name="chat",
    code_open="<tool_call>\n",
    code_close="\n</tool_call>",
    stop="</tool_call>",
    output_open="<tool_response>\n",
    output_close="\n</tool_response>",
    answer_open="",
    answer_close="",
    answer_stop=None,
    tokens=re.compile(r"(?P<code_open><tool_call>)|(?P<stop></tool_call>)|(?P<output_open><tool_response>)"
                      r"|(?P<output_close></tool_response>)"),
    system_prompt=f"""{_TOOLS}

To run code, call the python tool; it replies with what the code printed. Variables persist between \
calls. Print every value you need to see.

When you are sure, put the final answer in \\boxed{{}}, for example \\boxed{{1023}}.""",
    text_system_prompt=f"""{_TEXT_ONLY}

When you are sure, put the final answer in \\boxed{{}}, for example \\boxed{{1023}}.""",
    structured=True,
    source_reader=call_source,
)

DIALECTS = {d.name: d for d in (RETOOL, FENCED, CHAT)}


def get_dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; choose one of {', '.join(DIALECTS)}") from None


def detect_dialect(text: str) -> Dialect:
    """The dialect a complete trace is written in: the one whose grammar reads it strictly and finds
    the most markers in it (a trace with none is read as a bare ``\\boxed{}`` in the prose)."""
    def markers(dialect: Dialect) -> int:
        try:
            return sum(s.kind != "text" for s in dialect.parse(text, strict=True))
        except TranscriptError:
            return -1
    return max(DIALECTS.values(), key=lambda d: (markers(d), not d.answer_open))
