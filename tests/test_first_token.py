"""multiple_choice scoring: first_token, against a by-hand computation with the plain model and against
PEFT per particle; only the candidates' rows of the LM head are computed."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("tokenizers")

from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from swarmkern.evaluate.models import load_tokenizer  # noqa: E402
from swarmkern.utilities import ClassScores, build_utility  # noqa: E402
from swarmkern.utilities.common import particle_evaluator  # noqa: E402

QUESTIONS = [("Which animal barks?", ["cat", "dog", "ant"], 1),
             ("What is 9+6?", ["12", "15", "17"], 1),      # choices share " 1": scored at the next token
             ("Pick a colour.", ["red", "blue"], 0),
             ("What is 3+4?", ["7", "8", "9", "5"], 0)]


def _data(tmp_path, questions=QUESTIONS):
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in questions))
    return str(path)


def _by_hand(tok, questions=QUESTIONS):
    """(context ids, candidate ids) per question, computed plainly: the longest common token prefix of
    'Question: q\\nAnswer: choice' over the choices, and each choice's token right after it."""
    out = []
    for q, choices, _ in questions:
        seqs = [tok(f"Question: {q}\nAnswer: {c}")["input_ids"] for c in choices]
        d = min(len(s) for s in seqs)
        for j in range(d):
            if any(s[j] != seqs[0][j] for s in seqs):
                d = j
                break
        out.append((seqs[0][:d], [s[d] for s in seqs]))
    return out


def test_first_token_matches_the_plain_model_by_hand(setup, pool, tmp_path):
    built = build_utility({"type": "multiple_choice", "scoring": "first_token", "dev": _data(tmp_path),
                           "dtype": "float32"}, pool)
    model = AutoModelForCausalLM.from_pretrained(str(setup.model_dir)).eval()
    tok = load_tokenizer(setup.model_dir)
    hand = _by_hand(tok)
    assert [len(c) for c, _ in hand][1] > len(tok("Question: What is 9+6?\nAnswer:")["input_ids"])  # " 1" shared
    ev = particle_evaluator(pool, dtype="float32")
    got = ev.next_token_logits(None, [c for c, _ in hand], [k for _, k in hand])  # the unadapted model
    with torch.no_grad():
        for i, (ctx, cands) in enumerate(hand):
            ref = model(input_ids=torch.tensor([ctx])).logits[0, -1, cands].double()
            torch.testing.assert_close(got[0, i, :len(cands)], ref, rtol=1e-5, atol=1e-5)
            assert torch.isinf(got[0, i, len(cands):]).all()
    preds = built.dev.predict(pool.weights)
    assert isinstance(preds, ClassScores) and preds.scores.shape == (pool.weights.shape[0], 4, 4)


def test_first_token_matches_peft_for_one_particle(setup, pool, tmp_path):
    built = build_utility({"type": "multiple_choice", "scoring": "first_token", "dev": _data(tmp_path),
                           "dtype": "float32", "micro_batch": 5}, pool)
    hand = _by_hand(load_tokenizer(setup.model_dir))
    scores = built.dev.predict(pool.weights).scores  # [P, N, C]
    k = 1
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(setup.model_dir)).eval(),
                                     str(setup.expert_dirs[k])).eval()
    answers = torch.tensor([a for _, _, a in QUESTIONS])
    with torch.no_grad():
        ref = [peft(input_ids=torch.tensor([ctx])).logits[0, -1, cands].double() for ctx, cands in hand]
    plain = particle_evaluator(pool, dtype="float32").next_token_logits(None, [c for c, _ in hand],
                                                                         [c for _, c in hand])[0]
    for i, r in enumerate(ref):
        torch.testing.assert_close(scores[k, i, :len(r)], r, rtol=1e-5, atol=1e-5)
        assert (scores[k, i, :len(r)] - plain[i, :len(r)]).abs().max() > 1e-4  # the adapter matters
    picks = torch.tensor([int(r.argmax()) for r in ref])
    assert float(built.dev(pool.weights)[k]) == pytest.approx(float((picks == answers).double().mean()))


def test_first_token_projects_no_full_vocabulary(setup, pool, tmp_path):
    built = build_utility({"type": "multiple_choice", "scoring": "first_token", "dev": _data(tmp_path),
                           "dtype": "float32"}, pool)
    head = particle_evaluator(pool, dtype="float32").model.get_output_embeddings()
    calls = []
    handle = head.register_forward_hook(lambda *a: calls.append(1))
    try:
        built.dev(pool.weights)
    finally:
        handle.remove()
    assert calls == []


def test_first_token_rejects_choices_that_do_not_differ_at_one_token(pool, tmp_path):
    data = _data(tmp_path, [("What is 6+6?", ["12", "13", "2"], 0)])  # " 1", " 1", " 2": not distinct
    with pytest.raises(ValueError, match=r"mc.jsonl: example 1: first_token scoring needs"):
        build_utility({"type": "multiple_choice", "scoring": "first_token", "dev": data}, pool)
