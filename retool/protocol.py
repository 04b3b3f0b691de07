"""The text protocol between the model and the interpreter: one ``Dialect`` owns every tag.

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

A ``Dialect`` knows its markers, its stop strings, how to find the code that just ended, how to
render an ``ExecResult`` for the model (head + tail truncated), and where the answer is. It does
not tokenize, and it does not grade (``retool.grading`` decides whether an answer is right).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from retool.sandbox.base import ExecResult, ExecStatus


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (or ``\\fbox{…}``), braces matched, or None."""
    best = None
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    best = text[start:i]
                    break
    return best.strip() if best is not None else None


def truncate_middle(text: str, head: int, tail: int) -> str:
    """Keep ``head`` characters and the last ``tail``, with a marker saying what was cut."""
    if len(text) <= head + tail:
        return text
    cut = len(text) - head - tail
    return f"{text[:head]}\n… [{cut} characters truncated] …\n{text[len(text) - tail:]}"


def output_text(result: ExecResult, head: int = 1024, tail: int = 1024) -> str:
    """What the model reads of a cell: its output, then one line saying what went wrong (if anything).

    Interpreter-side truncation (``ExecResult.truncated``) already happened in the sandbox; this is
    the second, model-facing cut, sized for the context window.
    """
    body = result.stdout
    if result.stderr and not result.ok:
        body += result.stderr if not body else "\n" + result.stderr
    body = body.rstrip("\n")
    if result.status is not ExecStatus.OK and result.error:
        note = result.error
        if result.session_reset:
            note += " (the interpreter was restarted: earlier variables are gone)"
        body = f"{body}\n{note}" if body else note
    for note in result.notes:  # what the sandbox did beside the cell (a thread it stopped, say)
        body = f"{body}\n[sandbox: {note}]" if body else f"[sandbox: {note}]"
    if not body:
        body = "(no output)"
    return truncate_middle(body, head, tail)


@dataclass(frozen=True)
class Dialect:
    """How code, its output and the answer are written in one protocol."""

    name: str
    code_open: str  # what the model writes to start a block (for prompts and parsing)
    code_close: str  # what ends a block; the stop string is its last part
    stop: str  # generation stops once this appears; it stays in the model's output
    output_open: str  # appended by the loop before the interpreter output
    output_close: str  # appended after it
    answer_stop: str | None  # a string after which the answer is complete (stop there too)
    code_pattern: re.Pattern[str]  # matches a whole block; group "code" is the source
    answer_pattern: re.Pattern[str] | None = None  # the answer section; group 1 is its content

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) + ((self.answer_stop,) if self.answer_stop else ())

    def extract_code(self, text: str) -> str | None:
        """The source of the code block that ``text`` ends with (the turn just generated), if any."""
        matches = list(self.code_pattern.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        if text[last.end():].strip():
            return None  # the text does not end with this block
        return last.group("code").strip("\n")

    def render_output(self, result: ExecResult, head: int = 1024, tail: int = 1024) -> str:
        """The text appended after a block: the interpreter's output in this dialect's wrapper."""
        return f"{self.output_open}{output_text(result, head, tail)}{self.output_close}"

    def find_answer(self, model_text: str) -> str | None:
        """The final answer in text the *model* wrote (never pass interpreter output here): the
        last ``\\boxed{}`` of the last answer section if the dialect has one and it is there, else
        the last one in the prose — code blocks never count (``print("\\boxed{7}")`` is not an answer)."""
        if self.answer_pattern is not None:
            sections = self.answer_pattern.findall(model_text)
            if sections:
                return last_boxed(sections[-1])
        return last_boxed(self.code_pattern.sub("", model_text))

    def has_open_code(self, text: str) -> bool:
        """A block was opened but not closed (the token budget cut it): it must not run."""
        opened = text.rfind(self.code_open.strip())
        return opened >= 0 and text.find(self.stop, opened) < 0


RETOOL = Dialect(
    name="retool",
    code_open="<code>\n```python\n",
    code_close="\n```\n</code>",
    stop="</code>",
    output_open="\n<interpreter>\n",
    output_close="\n</interpreter>\n",
    answer_stop="</answer>",
    code_pattern=re.compile(r"<code>\s*(?:```(?:python|py)?[ \t]*\n)?(?P<code>.*?)(?:\n?```\s*)?</code>", re.DOTALL),
    answer_pattern=re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL),
)

FENCED = Dialect(
    name="fenced",
    code_open="```python\n",
    code_close="\n```\n```output",
    stop="```output",
    output_open="\n",
    output_close="\n```\n",
    answer_stop=None,
    # prose may sit between the closing fence and the output fence ("This prints the sum.\n```output")
    code_pattern=re.compile(r"```(?:python|py)[ \t]*\n(?P<code>(?:(?!```).)*?)\n?```(?:(?!```).)*?```output", re.DOTALL),
)

DIALECTS = {d.name: d for d in (RETOOL, FENCED)}


def get_dialect(name: str) -> Dialect:
    try:
        return DIALECTS[name]
    except KeyError:
        raise ValueError(f"unknown dialect {name!r}; choose one of {', '.join(DIALECTS)}") from None


# -- prompts -----------------------------------------------------------------------------------

_RETOOL_SYSTEM = """You solve math problems by reasoning step by step and running Python when a \
computation helps.

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
\\boxed{1023}
</answer>"""

_FENCED_SYSTEM = """You solve math problems by reasoning step by step and running Python when a \
computation helps.

To run code, write a python block and open an output block; the interpreter fills it in:
```python
print(2**10 - 1)
```
```output
1023
```
Variables persist between blocks. Print every value you need to see.

When you are sure, put the final answer in \\boxed{}, for example \\boxed{1023}."""

SYSTEM_PROMPTS = {"retool": _RETOOL_SYSTEM, "fenced": _FENCED_SYSTEM}

# Text-only reasoning (no interpreter): the baseline that tool-integrated RL is measured against.
TEXT_SYSTEM_PROMPTS = {
    "retool": """You solve math problems by reasoning step by step. You cannot run code.

When you are sure, give the final answer as a number in this form and stop:
<answer>
\\boxed{1023}
</answer>""",
    "fenced": """You solve math problems by reasoning step by step. You cannot run code.

When you are sure, put the final answer in \\boxed{}, for example \\boxed{1023}.""",
}

# A worked example shown before the problem: small models follow a demonstration far better than
# instructions (the embedded 135M model writes no code without it).
_EXAMPLE_PROBLEM = "What is the sum of the squares of the first 20 positive integers?"
_EXAMPLE_REASONING = "I will compute the sum directly."
_EXAMPLE_CODE = "print(sum(k * k for k in range(1, 21)))"
_EXAMPLE_OUTPUT = "2870"
_EXAMPLE_CONCLUSION = "The sum is 2870."


def example_turns(dialect: Dialect) -> list[dict[str, str]]:
    """A one-shot demonstration of the dialect, as a user/assistant exchange."""
    block = f"{dialect.code_open}{_EXAMPLE_CODE}{dialect.code_close}"
    output = f"{dialect.output_open}{_EXAMPLE_OUTPUT}{dialect.output_close}"
    if dialect.name == "retool":
        answer = "<answer>\n\\boxed{2870}\n</answer>"
    else:
        answer = "\\boxed{2870}"
    reply = f"{_EXAMPLE_REASONING}\n{block}{output}{_EXAMPLE_CONCLUSION}\n{answer}"
    return [{"role": "user", "content": _EXAMPLE_PROBLEM}, {"role": "assistant", "content": reply}]


def build_messages(problem: str, dialect: Dialect, few_shot: bool = True, tools: bool = True) -> list[dict[str, str]]:
    """The chat messages that open a trajectory: system prompt, optional demonstration, problem.
    ``tools=False`` is the text-only prompt (no interpreter, no demonstration of one)."""
    if not tools:
        return [{"role": "system", "content": TEXT_SYSTEM_PROMPTS[dialect.name]}, {"role": "user", "content": problem}]
    messages = [{"role": "system", "content": SYSTEM_PROMPTS[dialect.name]}]
    if few_shot:
        messages += example_turns(dialect)
    messages.append({"role": "user", "content": problem})
    return messages
