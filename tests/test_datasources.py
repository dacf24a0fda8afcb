"""dev/test from JSON, CSV, Parquet, a dataset saved to disk and a Hub dataset in a fake Hugging Face cache
(offline), with field mappings: the same examples, ids and select splits as the JSONL file they mirror."""
from __future__ import annotations

import csv
import json
import socket
import string

import pytest
import torch

from swarmkern.data import DataError, MultipleChoiceExample, load_jsonl
from swarmkern.datasources import materialize
from swarmkern.testing import write_hub_snapshot


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("SWARMKERN_CACHE", str(tmp_path / "swarmkern-cache"))

    def refuse(*args, **kwargs):
        raise RuntimeError("a test tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def rows(setup):
    """The tiny multiple-choice dev split, with ids."""
    return [{"id": f"q{i}", **json.loads(line)}
            for i, line in enumerate(setup.data["mc_dev"].read_text().splitlines())]


def _examples(path):
    return [ex.model_dump() for ex in load_jsonl(path, MultipleChoiceExample)]


def _parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_json_csv_parquet_and_mappings_give_the_same_examples(tmp_path, rows):
    reference = tmp_path / "ref.jsonl"
    reference.write_text("".join(json.dumps(r) + "\n" for r in rows))
    want = _examples(reference)

    as_json = tmp_path / "quiz.json"
    as_json.write_text(json.dumps({"data": rows}))
    assert _examples(materialize(str(as_json), "utility.dev")) == want

    # MMLU-style CSV: one column per choice, the answer as a letter
    as_csv = tmp_path / "quiz.csv"
    with as_csv.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "A", "B", "C", "D", "key"])
        for r in rows:
            w.writerow([r["id"], r["question"], *r["choices"], string.ascii_uppercase[r["answer"]]])
    src = {"path": str(as_csv), "fields": {"question": "text", "choices": ["A", "B", "C", "D"], "answer": "key"},
           "answer_format": "letter"}
    assert _examples(materialize(src, "utility.dev")) == want

    # Parquet with nested choices and the answer as the choice's text
    nested = [{"id": r["id"], "q": r["question"], "opts": {"text": r["choices"]}, "gold": r["choices"][r["answer"]]}
              for r in rows]
    src = {"path": str(_parquet(tmp_path / "quiz.parquet", nested)),
           "fields": {"question": "q", "choices": "opts.text", "answer": "gold"}}
    got = materialize(src, "utility.dev")
    assert _examples(got) == want
    assert materialize(src, "utility.dev") == got  # the same source, the same file


def test_dataset_saved_to_disk_and_hub_cache(tmp_path, rows):
    import datasets

    want = [{k: r[k] for k in ("question", "choices", "answer")} for r in rows]
    ds = datasets.Dataset.from_list([{"q": r["question"], "opts": r["choices"], "label": r["answer"], "id": r["id"]}
                                     for r in rows])
    fields = {"question": "q", "choices": "opts", "answer": "label"}
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "saved"))
    got = materialize({"dataset": str(tmp_path / "saved"), "split": "validation", "fields": fields}, "utility.dev")
    assert [{k: e[k] for k in want[0]} for e in _examples(got)] == want

    # a Hub dataset, resolved offline from the Hub cache (main and a tag)
    from swarmkern.hub import clear_resolved, resolved_ids

    clear_resolved()
    _parquet(tmp_path / "repo" / "data" / "validation-00000-of-00001.parquet", ds.to_list())
    write_hub_snapshot(tmp_path / "hf" / "hub", "tiny/quiz", tmp_path / "repo", commit="f" * 40,
                       refs=("main", "v1"), repo_type="dataset")
    for name in ("tiny/quiz", "tiny/quiz@v1"):
        got = materialize({"dataset": name, "split": "validation", "fields": fields}, "utility.dev")
        assert [{k: e[k] for k in want[0]} for e in _examples(got)] == want
    assert {(r["id"], r["revision"], r["commit"]) for r in resolved_ids()} == {
        ("tiny/quiz", "main", "f" * 40), ("tiny/quiz", "v1", "f" * 40)}
    clear_resolved()


def test_offline_missing_dataset_and_bad_mappings_are_one_line(tmp_path, rows):
    with pytest.raises(DataError) as err:
        materialize({"dataset": "tiny/absent@v2", "config": "easy", "split": "test"}, "utility.test")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("utility.test: dataset tiny/absent (config easy, split test, revision v2)")
    assert str(tmp_path / "hf" / "hub") in msg and "HF_HUB_OFFLINE" in msg

    path = tmp_path / "q.json"
    path.write_text(json.dumps(rows))
    for src, message in [({"path": str(path), "fields": {"question": "nope"}}, "no column 'nope'"),
                         ({"path": str(path), "fields": {"answer": "question"}}, "is neither an index nor one of"),
                         ({"path": str(path), "fields": {"quest": "question"}}, "fields.quest: unknown field"),
                         ({"path": str(path), "dataset": "a/b"}, "exactly one of path"),
                         ({"dataset": "a/b"}, "split: required"),
                         (str(tmp_path / "q.txt"), "dataset file not found")]:
        with pytest.raises(DataError, match=message):
            materialize(src, "utility.dev")


def test_utility_select_split_and_ids_from_a_parquet_source(tmp_path, rows, setup, pool):
    from swarmkern.utilities import build_utility
    from swarmkern.utilities.holdout import carve_select

    reference = tmp_path / "ref.jsonl"
    reference.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parquet = _parquet(tmp_path / "quiz.parquet", rows)
    base = {"type": "multiple_choice", "model": str(setup.model_dir), "device": "cpu", "dtype": "float32"}
    built_ref = build_utility({**base, "dev": str(reference)}, pool)
    built = build_utility({**base, "dev": {"path": str(parquet)}, "test": str(parquet),
                           "allow_same_dev_and_test": True}, pool)  # a source-format test, not a held-out score
    with pytest.raises(ValueError, match="holds the same data as dev"):  # a DataSource is checked like a path
        build_utility({**base, "dev": {"path": str(parquet)}, "test": str(parquet)}, pool)
    particles = pool.weights.float()
    assert torch.equal(built.dev(particles), built_ref.dev(particles))
    assert built.dev.example_ids == [r["id"] for r in rows] == built_ref.dev.example_ids
    _, _, info = carve_select({**base, "dev": {"path": str(parquet)}}, tmp_path / "a", fraction=0.5, seed=3)
    _, _, info_ref = carve_select({**base, "dev": str(reference)}, tmp_path / "b", fraction=0.5, seed=3)
    assert info["select_ids"] == info_ref["select_ids"] and info["search_ids"] == info_ref["search_ids"]
