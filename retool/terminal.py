"""Text from a model or a sandbox, made harmless to print on somebody's terminal.

A cell's output (and a model's text) is data, but a terminal executes some of it: ``ESC ] 52``
writes the clipboard, ``ESC [ 2 J`` clears the screen, ``ESC ] 0`` retitles the window, a carriage
return or backspace overwrites what was shown, an 8-bit CSI (U+009B) starts a sequence without ESC,
and bidirectional overrides make text read differently from what it is. ``for_terminal`` shows every
such character as a visible escape (``\\x1b``, ``\\u202e``) and keeps newlines and tabs; ``\\r\\n``
line ends become ``\\n``.

Only for what is printed to a terminal: files, JSON and the model's context keep the raw text.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text: str) -> str:
    """``text`` with every terminal control character shown as an escape instead of obeyed."""
    return _CONTROL.sub(_visible, text.replace("\r\n", "\n"))
