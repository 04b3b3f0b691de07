"""The cold-start record (one problem, one verified reply) and how a file of them is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def record(id_: str, question: str, assistant: str, answer: str, **extra: Any) -> dict[str, Any]:
    """A chat record SFT reads: the user's question, the assistant's trace, the gold answer."""
    return {"id": id_, "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": assistant}],
            "answer": answer, **extra}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
