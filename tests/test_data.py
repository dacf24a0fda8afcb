"""JSONL loading: errors name the file and the line."""
from __future__ import annotations

import pytest

from swarmkern.data import DataError, MultipleChoiceExample, PromptAnswerExample, load_jsonl


def write(tmp_path, text, name="d.jsonl"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_loads_and_limits(tmp_path):
    p = write(tmp_path, '{"prompt": "a", "answer": "1", "id": 7}\n\n{"prompt": "b", "answer": "2"}\n')
    rows = load_jsonl(p, PromptAnswerExample)
    assert [r.prompt for r in rows] == ["a", "b"]
    assert rows[0].model_extra == {"id": 7}  # extra keys are kept
    assert len(load_jsonl(p, PromptAnswerExample, limit=1)) == 1


@pytest.mark.parametrize("text,match", [
    ('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": \n', r"d\.jsonl:2: invalid JSON"),
    ('{"prompt": "a", "answer": "1"}\n\n["x"]\n', r"d\.jsonl:3: expected a JSON object, got list"),
    ('{"prompt": "a"}\n', r"d\.jsonl:1: answer: Field required"),
    ('{"prompt": 3, "answer": "1"}\n', r"d\.jsonl:1: prompt: Input should be a valid string"),
])
def test_malformed_lines_name_file_and_line(tmp_path, text, match):
    with pytest.raises(DataError, match=match):
        load_jsonl(write(tmp_path, text), PromptAnswerExample)


def test_multiple_choice_checks(tmp_path):
    ok = '{"question": "q", "choices": ["a", "b"], "answer": 1}\n'
    assert load_jsonl(write(tmp_path, ok), MultipleChoiceExample)[0].answer == 1
    with pytest.raises(DataError, match=r":2: answer: 2 is not an index into 2 choices"):
        load_jsonl(write(tmp_path, ok + '{"question": "q", "choices": ["a", "b"], "answer": 2}\n'),
                   MultipleChoiceExample)
    with pytest.raises(DataError, match=r":1: choices: need at least 2"):
        load_jsonl(write(tmp_path, '{"question": "q", "choices": ["a"], "answer": 0}\n'), MultipleChoiceExample)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"e\.jsonl: no examples \(empty split\)"):
        load_jsonl(write(tmp_path, "\n\n", "e.jsonl"), PromptAnswerExample)
    with pytest.raises(DataError, match="dataset file not found"):
        load_jsonl(tmp_path / "nope.jsonl", PromptAnswerExample)
