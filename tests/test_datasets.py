"""retool.datasets on real files: the shared benchmarks, every file format, bad input, offline hub."""

from __future__ import annotations

import json
import logging
import time

import pytest

from retool.datasets import (
    PUBLIC_NAMES,
    DatasetError,
    Problem,
    data_dir_candidates,
    load_benchmark,
    normalize_answer,
)

SHARED = {  # name: (rows, first id, first answer, last id)
    "aime24": (30, "aime24-00", "204", "aime24-29"),
    "aime25": (30, "aime25-00", "70", "aime25-29"),
    "amc23": (40, "amc23-00", "27", "amc23-39"),
    "gsm8k": (1319, "gsm8k-0000", "18", "gsm8k-1318"),
}
RECORDS = [
    {"id": "a", "problem": "What is 1+1?", "answer": "2"},
    {"id": "b", "problem": "What is 6*7?", "answer": "42"},
    {"id": "c", "problem": "Name the constant.", "answer": "\\pi"},
]
EXPECTED = [Problem("a", "What is 1+1?", "2"), Problem("b", "What is 6*7?", "42"),
            Problem("c", "Name the constant.", "\\pi")]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def write_jsonl(path, records_or_lines):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records_or_lines]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- built-ins -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SHARED))
def test_builtin_benchmarks_load_from_shared_files(name, monkeypatch):
    monkeypatch.delenv("RETOOL_DATA_DIR", raising=False)
    rows, first_id, first_answer, last_id = SHARED[name]
    problems = load_benchmark(name)
    assert len(problems) == rows
    assert (problems[0].id, problems[0].answer, problems[-1].id) == (first_id, first_answer, last_id)
    assert all(isinstance(p, Problem) and p.problem.strip() and p.answer for p in problems)
    assert len({p.id for p in problems}) == rows
    assert load_benchmark(name.upper())[0] == problems[0]  # names are case-insensitive


def test_builtin_answers_are_normalised_integers():
    for name in SHARED:
        for p in load_benchmark(name):
            assert p.answer == normalize_answer(p.answer)
            assert p.answer.lstrip("-").isdigit(), (name, p.id, p.answer)


def test_limit_takes_first_n_in_file_order(tmp_path):
    assert [p.id for p in load_benchmark("aime24", limit=3)] == ["aime24-00", "aime24-01", "aime24-02"]
    assert load_benchmark("gsm8k", limit=0) == []
    assert load_benchmark("amc23", limit=1000) == load_benchmark("amc23")
    with pytest.raises(ValueError):
        load_benchmark("amc23", limit=-1)


def test_retool_data_dir_override(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "aime24.jsonl", [{"id": "mine-1", "problem": "p?", "answer": "007"}])
    monkeypatch.setenv("RETOOL_DATA_DIR", str(tmp_path))
    assert data_dir_candidates() == [tmp_path]
    assert load_benchmark("aime24") == [Problem("mine-1", "p?", "7")]


def test_builtin_missing_locally_and_offline_names_both(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("RETOOL_DATA_DIR", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(DatasetError) as err:
        load_benchmark("aime25")
    msg = str(err.value)
    assert str(tmp_path / "aime25.jsonl") in msg and "RETOOL_DATA_DIR" in msg
    assert PUBLIC_NAMES["aime25"] in msg and "offline" in msg
    assert time.monotonic() - start < 20  # offline means no network retries


# --- hub specs -------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["hf:HuggingFaceH4/aime_2024:train", "hf:openai/gsm8k:main:test",
                                  "hf:math-ai/amc23"])
def test_hf_spec_offline_is_a_clear_error(spec, offline):
    start = time.monotonic()
    with pytest.raises(DatasetError) as err:
        load_benchmark(spec)
    assert spec[3:].split(":")[0] in str(err.value) and "offline" in str(err.value)
    assert isinstance(err.value, ValueError)
    assert time.monotonic() - start < 20


def test_bad_specs(tmp_path):
    for spec in ["hf:", "hf:a:b:c:d", "no-such-benchmark", str(tmp_path / "missing.jsonl")]:
        with pytest.raises(DatasetError):
            load_benchmark(spec)
    (tmp_path / "data.csv").write_text("problem,answer\nx,1\n")
    with pytest.raises(DatasetError, match="unknown file type"):
        load_benchmark(tmp_path / "data.csv")


# --- file formats ----------------------------------------------------------------------------

def test_jsonl_round_trip(tmp_path):
    path = write_jsonl(tmp_path / "set.jsonl", RECORDS[:1] + [""] + RECORDS[1:])  # blank line ignored
    assert load_benchmark(str(path)) == EXPECTED
    assert load_benchmark(path, limit=2) == EXPECTED[:2]


def test_json_list_round_trip(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps(RECORDS, indent=2))
    assert load_benchmark(str(path)) == EXPECTED
    path.write_text(json.dumps({"data": RECORDS}))
    with pytest.raises(DatasetError, match="list"):
        load_benchmark(str(path))
    path.write_text('[\n{"id": "a",\n oops}\n]')
    with pytest.raises(DatasetError, match=r"set\.json:3"):
        load_benchmark(str(path))


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": 7, "question": "q7", "answer": 12.0}, {"id": 8, "question": "q8", "answer": 3.5}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "set.parquet")
    assert load_benchmark(str(tmp_path / "set.parquet")) == [Problem("7", "q7", "12"), Problem("8", "q8", "3.5")]


def test_save_to_disk_round_trip(tmp_path):
    import datasets

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "ds"))
    assert load_benchmark(str(tmp_path / "ds")) == EXPECTED
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:1]),
                               "test": datasets.Dataset.from_list(RECORDS[1:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert load_benchmark(str(tmp_path / "dd")) == EXPECTED[1:]  # the test split
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="save_to_disk"):
        load_benchmark(str(tmp_path / "plain"))


# --- field detection -------------------------------------------------------------------------

def test_field_aliases(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"question": "q0", "answer": " 0042 "},
        {"Problem": "q1", "Answer": 5},
        {"prompt": "q2", "answer": "Natalia sold 48/2 = 24 clips.\n#### 1,072", "ID": 99},
        {"problem": "q3", "solution": "So $x=\\boxed{\\frac{1}{2}}$, not \\boxed{3}... wait \\boxed{\\frac{3}{4}}."},
        {"problem": "q4", "solution": "Thus 6 apples.\n#### 6", "problem_id": "p4"},
        {"problem": "q5", "answer": "-07", "idx": 5},
        {"problem": "q6", "answer": "42.00"},
    ])
    got = load_benchmark(str(path))
    assert [(p.id, p.problem, p.answer) for p in got] == [
        ("mixed-0", "q0", "42"), ("mixed-1", "q1", "5"), ("99", "q2", "1072"),
        ("mixed-3", "q3", "\\frac{3}{4}"), ("p4", "q4", "6"), ("5", "q5", "-7"), ("mixed-6", "q6", "42"),
    ]


def test_normalize_answer():
    assert [normalize_answer(v) for v in ["007", "0", "-0", "42.0", 27.0, 3, " 1.50 ", "x+1", "+5"]] == \
        ["7", "0", "0", "42", "27", "3", "1.50", "x+1", "5"]


# --- bad input -------------------------------------------------------------------------------

def test_malformed_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [RECORDS[0], RECORDS[1], '{"id": "x", "problem": ', RECORDS[2]])
    with pytest.raises(DatasetError) as err:
        load_benchmark(str(path))
    assert f"{path}:3" in str(err.value) and "malformed" in str(err.value)


def test_skip_bad_lines_keeps_the_rest_and_counts(tmp_path, caplog):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        RECORDS[0], "not json", RECORDS[1], {"id": "z", "text": "no problem here"}, "{", RECORDS[2]])
    with caplog.at_level(logging.WARNING, logger="retool.datasets"):
        assert load_benchmark(str(path), skip_bad_lines=True) == EXPECTED
    text = caplog.text
    assert f"{path}:2" in text and f"{path}:4" in text and f"{path}:5" in text
    assert "skipped 3 bad record(s), kept 3" in text
    all_bad = write_jsonl(tmp_path / "all_bad.jsonl", ["nope", "nope"])
    with pytest.raises(DatasetError, match="2 bad records skipped"):
        load_benchmark(str(all_bad), skip_bad_lines=True)


def test_missing_fields_lists_the_fields_it_has(tmp_path):
    path = write_jsonl(tmp_path / "nofield.jsonl", [RECORDS[0], {"id": "q", "text": "hi", "label": "3"}])
    with pytest.raises(DatasetError) as err:
        load_benchmark(str(path))
    msg = str(err.value)
    assert f"{path}:2" in msg and "no problem" in msg and "no answer" in msg
    assert "['id', 'label', 'text']" in msg
    write_jsonl(path, [{"problem": "p", "answer": ""}])
    with pytest.raises(DatasetError, match="no answer"):
        load_benchmark(str(path))
    write_jsonl(path, [[1, 2]])
    with pytest.raises(DatasetError, match="JSON object"):
        load_benchmark(str(path))


def test_duplicate_ids_are_an_error(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [RECORDS[0], RECORDS[1], dict(RECORDS[2], id="a")])
    with pytest.raises(DatasetError) as err:
        load_benchmark(str(path), skip_bad_lines=True)
    assert "duplicate id 'a'" in str(err.value) and f"{path}:3" in str(err.value) and f"{path}:1" in str(err.value)


def test_empty_file_is_an_error(tmp_path):
    for name, text in [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("empty.json", "[]")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(DatasetError, match="no problems"):
            load_benchmark(str(tmp_path / name))
