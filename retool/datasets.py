"""Benchmark and training-set loaders: whatever the source, out comes ``list[Problem]``.

Why: evals, cold-start building and RL all want ``Problem(id, problem, answer)`` with a normalised
answer, and should not each re-learn that GSM8K hides its answer after ``####`` or that
``math-ai/amc23`` stores ``27.0``. ``load_benchmark(spec)`` accepts:

* a built-in name (``aime24``, ``aime25``, ``amc23``, ``gsm8k``): the shared jsonl, found in
  ``$RETOOL_DATA_DIR`` if set, else ``<repo>/../shared/data``, else ``<repo>/shared/data``; if
  it is not there, the public hub copy (``PUBLIC_NAMES``) through ``datasets.load_dataset``;
* a path: ``.jsonl``, ``.json`` (a list of records), ``.parquet``, or a ``save_to_disk`` folder;
* ``hf:NAME[:SPLIT]`` or ``hf:NAME:CONFIG:SPLIT`` for any hub dataset.

Bad input loses nothing silently and always says where: file and line (or row), and the fields a
record does have. ``skip_bad_lines=True`` skips malformed/incomplete records with a logged
warning each and a count. Duplicate ids and empty sources are errors.

Deliberately NOT here: downloading anything ourselves (``datasets`` does, honouring
``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` read at call time), shuffling or sampling (``limit``
is the first N in file order), prompt formatting, answer *equivalence* (``retool.grading``), and
caching. Ids of hub-loaded built-ins are the hub's own, not those of the shared files.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retool.protocol import last_boxed

logger = logging.getLogger(__name__)

BUILTIN_FILES = {"aime24": "aime24.jsonl", "aime25": "aime25.jsonl", "amc23": "amc23.jsonl",
                 "gsm8k": "gsm8k_test.jsonl"}
PUBLIC_NAMES = {"aime24": "HuggingFaceH4/aime_2024", "aime25": "math-ai/aime25",
                "amc23": "math-ai/amc23", "gsm8k": "openai/gsm8k"}
# (config, split) of each public copy; its fields are found by the aliases below.
PUBLIC_LAYOUT = {"aime24": (None, "train"), "aime25": (None, "test"), "amc23": (None, "test"),
                 "gsm8k": ("main", "test")}
PROBLEM_FIELDS = ("problem", "question", "Problem", "prompt")
ANSWER_FIELDS = ("answer", "Answer")
ID_FIELDS = ("id", "ID", "problem_id", "idx")


class DatasetError(ValueError):
    """A benchmark could not be loaded; the message says which file/line/name and why."""


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str


def normalize_answer(value: Any) -> str:
    """``" 042 "`` → ``"42"``, ``42.0``/``"42.00"`` → ``"42"``, ``"-07"`` → ``"-7"``; other text stripped."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    m = re.fullmatch(r"([+-]?)(\d+)(?:\.0*)?", text)
    if m:
        number = str(int(m.group(2)))
        return "-" + number if m.group(1) == "-" and number != "0" else number
    return text


def _gsm8k_final(text: str) -> str | None:
    if "####" not in text:
        return None
    final = text.rsplit("####", 1)[1].strip()
    return final.replace(",", "") if re.fullmatch(r"[+-]?\d{1,3}(,\d{3})+(\.\d+)?", final) else final


def _answer_of(rec: dict) -> str | None:
    for key in ANSWER_FIELDS:
        value = rec.get(key)
        if value is not None and value != "":
            return normalize_answer((_gsm8k_final(value) or value) if isinstance(value, str) else value)
    solution = rec.get("solution")
    if isinstance(solution, str):
        found = last_boxed(solution) or _gsm8k_final(solution)
        if found:
            return normalize_answer(found)
    return None


def _to_problem(rec: Any, where: str, stem: str, index: int) -> Problem:
    if not isinstance(rec, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    problem = next((rec[k] for k in PROBLEM_FIELDS if isinstance(rec.get(k), str) and rec[k].strip()), None)
    if problem is None and isinstance(rec.get("messages"), list):  # chat records (cold-start traces)
        problem = next((m.get("content") for m in rec["messages"]
                        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)), None)
    answer = _answer_of(rec)
    missing = [name for name, value in (("problem", problem), ("answer", answer)) if value is None]
    if missing:
        looked = {"problem": PROBLEM_FIELDS, "answer": ANSWER_FIELDS + ("solution (\\boxed{})",)}
        wanted = "; ".join(f"no {m} (looked for {', '.join(looked[m])})" for m in missing)
        raise DatasetError(f"{where}: {wanted}; the record has fields {sorted(rec)}")
    rid = next((rec[k] for k in ID_FIELDS if rec.get(k) is not None and str(rec[k]) != ""), None)
    return Problem(id=str(rid) if rid is not None else f"{stem}-{index}", problem=problem, answer=answer)


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:  # yielded, not raised: the caller may skip it
                yield where, DatasetError(f"{where}: malformed JSON line ({exc.msg} at column {exc.colno})")


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    yield from ((f"{path}[{i}]", rec) for i, rec in enumerate(data))


def _pick_split(dd: Any, where: str) -> Any:
    splits = list(dd.keys())
    if "test" in splits or len(splits) == 1:
        return dd["test" if "test" in splits else splits[0]]
    raise DatasetError(f"{where} has splits {splits} and none is 'test'; name one (hf:NAME:SPLIT)")


def _table_records(path: Path) -> Iterator[tuple[str, Any]]:
    if path.is_dir():
        import datasets as hf
        try:
            ds = hf.load_from_disk(str(path))
        except Exception as exc:
            raise DatasetError(f"{path}: not a dataset saved with save_to_disk ({exc})") from exc
        rows = (_pick_split(ds, str(path)) if hasattr(ds, "keys") else ds).to_list()
    else:
        import pyarrow.parquet as pq
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:
            raise DatasetError(f"{path}: unreadable parquet file ({exc})") from exc
    yield from ((f"{path} row {i}", rec) for i, rec in enumerate(rows))


def _offline_requested() -> bool:
    return any(os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"}
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


@contextmanager
def _offline_if_requested() -> Iterator[None]:
    """``datasets``/``huggingface_hub`` read the offline flags once, at import; honour them now."""
    import datasets.config as dconf
    import huggingface_hub.constants as hconst
    saved = dconf.HF_HUB_OFFLINE, dconf.HF_DATASETS_OFFLINE, hconst.HF_HUB_OFFLINE
    if _offline_requested():  # not thread-safe; loading is a start-up step
        dconf.HF_HUB_OFFLINE = dconf.HF_DATASETS_OFFLINE = hconst.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconf.HF_HUB_OFFLINE, dconf.HF_DATASETS_OFFLINE, hconst.HF_HUB_OFFLINE = saved


def _hub_records(name: str, config: str | None, split: str | None) -> Iterator[tuple[str, Any]]:
    try:
        import datasets as hf
    except ImportError as exc:
        raise DatasetError(f"hub dataset {name!r} needs the `datasets` package (pip install datasets)") from exc
    try:
        with _offline_if_requested():
            ds = hf.load_dataset(name, config, split=split)
    except Exception as exc:
        why = "offline (HF_HUB_OFFLINE) and not cached" if _offline_requested() else "hub unreachable, or bad name/split"
        raise DatasetError(f"could not load hub dataset {name!r} (config={config}, split={split}): "
                           f"{why}: {type(exc).__name__}: {exc}") from exc
    ds = _pick_split(ds, f"hub dataset {name!r}") if hasattr(ds, "keys") else ds
    yield from ((f"{name} row {i}", rec) for i, rec in enumerate(ds))


def data_dir_candidates() -> list[Path]:
    """Where built-in benchmarks are looked for, in order (``$RETOOL_DATA_DIR`` alone if set)."""
    if os.environ.get("RETOOL_DATA_DIR"):
        return [Path(os.environ["RETOOL_DATA_DIR"]).expanduser()]
    repo = Path(__file__).resolve().parents[1]
    return [repo.parent / "shared" / "data", repo / "shared" / "data"]


def _builtin(name: str) -> tuple[Iterable[tuple[str, Any]], str]:
    filename = BUILTIN_FILES[name]
    candidates = data_dir_candidates()
    for folder in candidates:
        if (folder / filename).is_file():
            return _jsonl_records(folder / filename), name
    config, split = PUBLIC_LAYOUT[name]
    try:
        return list(_hub_records(PUBLIC_NAMES[name], config, split)), name
    except DatasetError as exc:
        tried = ", ".join(str(c / filename) for c in candidates)
        raise DatasetError(
            f"benchmark {name!r}: no local file (tried {tried}; set RETOOL_DATA_DIR to the folder "
            f"holding {filename}), and the public copy {PUBLIC_NAMES[name]!r} failed: {exc}") from exc


def _resolve(spec: str) -> tuple[Iterable[tuple[str, Any]], str]:
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        if not parts[0] or len(parts) > 3:
            raise DatasetError(f"bad hub spec {spec!r}: use hf:NAME[:SPLIT] or hf:NAME:CONFIG:SPLIT")
        config = parts[1] if len(parts) == 3 else None
        split = parts[-1] if len(parts) > 1 else None
        return _hub_records(parts[0], config or None, split or None), parts[0].rsplit("/", 1)[-1]
    if spec.lower() in BUILTIN_FILES:
        return _builtin(spec.lower())
    path = Path(spec).expanduser()
    if path.is_dir():
        return _table_records(path), path.name
    if path.is_file():
        readers = {".jsonl": _jsonl_records, ".json": _json_records, ".parquet": _table_records}
        if path.suffix.lower() not in readers:
            raise DatasetError(f"{path}: unknown file type {path.suffix!r} (want .jsonl, .json, .parquet)")
        return readers[path.suffix.lower()](path), path.stem
    raise DatasetError(f"{spec!r} is not a built-in benchmark ({', '.join(BUILTIN_FILES)}), an existing "
                       f"file or folder, or an hf:NAME[:SPLIT] spec")


def iter_records(spec: str | os.PathLike) -> Iterable[tuple[str, Any]]:
    """The raw records of ``spec`` as (where, record); a malformed line comes as a ``DatasetError``
    record, for callers that need fields beyond problem and answer (cold-start solutions)."""
    return _resolve(os.fspath(spec))[0]


def record_problem(rec: Any, where: str, stem: str, index: int) -> Problem:
    """One record as a ``Problem`` (``DatasetError`` naming ``where`` when a field is missing)."""
    return _to_problem(rec, where, stem, index)


def load_benchmark(spec: str | os.PathLike, limit: int | None = None, *,
                   skip_bad_lines: bool = False) -> list[Problem]:
    """Load ``spec`` (see the module docstring) as ``Problem``s; ``limit`` = first N in file order.

    The whole source is validated before ``limit`` is applied, so a bad line anywhere is reported.
    ``skip_bad_lines`` skips malformed JSON lines and records without a problem/answer (warning per
    record, then a count); duplicate ids and empty sources are always errors.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    records, stem = _resolve(os.fspath(spec))
    problems, seen, skipped = [], {}, 0  # seen: id -> where
    for index, (where, rec) in enumerate(records):
        try:
            if isinstance(rec, DatasetError):
                raise rec
            problem = _to_problem(rec, where, stem, index)
        except DatasetError as exc:
            if not skip_bad_lines:
                raise
            skipped += 1
            logger.warning("skipping bad record: %s", exc)
            continue
        if problem.id in seen:
            raise DatasetError(f"{where}: duplicate id {problem.id!r} (first at {seen[problem.id]})")
        seen[problem.id] = where
        problems.append(problem)
    if skipped:
        logger.warning("%s: skipped %d bad record(s), kept %d", spec, skipped, len(problems))
    if not problems:
        raise DatasetError(f"{spec}: no problems found" + (f" ({skipped} bad records skipped)" if skipped else ""))
    return problems if limit is None else problems[:limit]
