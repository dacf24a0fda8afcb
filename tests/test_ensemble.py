"""The top-k prediction ensemble on every built-in utility: the combination math on hand-checkable
inputs, a one-member ensemble equal to that member's own score, and several members against
combinations computed here by hand from the evaluator's raw outputs."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from swarmkern.utilities.ensemble import combine_class_scores, consensus_responses, majority_vote, token_f1

# -- the math ---------------------------------------------------------------------------------------


def test_majority_vote_ties_go_to_the_best_ranked_member():
    answers = [["a", "x", None, None, "p"],
               ["b", "y", "k", None, "q"],
               ["b", "x", None, None, "r"]]
    # two b's beat one a; x twice; only member 1 answered; nobody answered; a 3-way tie -> member 0's
    assert majority_vote(answers) == ["b", "x", "k", None, "p"]
    assert majority_vote([["a", "b"], ["b", "a"]]) == ["a", "b"]  # 1-1 ties: the first member's answer
    with pytest.raises(ValueError, match="different numbers"):
        majority_vote([["a"], ["a", "b"]])


def test_token_f1():
    assert token_f1("the cat sat", "The cat sat") == 1.0
    assert token_f1("a b", "c d") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "x") == 0.0
    assert token_f1("a b c d", "a b") == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # precision 1/2... symmetric
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # bag of words: a and b once each in common


def test_consensus_keeps_the_response_the_others_agree_with():
    responses = [["red apple pie", "one", "zzz"],
                 ["green apple pie", "two", "yyy"],
                 ["red apple", "three", "xxx"]]
    picked = consensus_responses(responses)
    # prompt 0: "red apple pie" overlaps both others most; 1 and 2: no overlap anywhere -> member 0
    assert picked == ["red apple pie", "one", "zzz"]
    assert consensus_responses([["only"]]) == ["only"]
    assert consensus_responses([["a b", "c"], ["b a", "d"]]) == ["a b", "c"]  # equal agreement: member 0


def test_class_scores_mean_prob_and_vote():
    # 3 members, 1 example, 3 classes; two members narrowly prefer class 1, one strongly prefers class 0
    p = torch.tensor([[[0.9, 0.05, 0.05]], [[0.3, 0.4, 0.3]], [[0.3, 0.4, 0.3]]], dtype=torch.float64)
    preds = p.log()
    assert combine_class_scores(preds, "mean_prob").argmax(-1).item() == 0  # mean probs: .5, .283, .217
    torch.testing.assert_close(combine_class_scores(preds, "mean_prob").exp(), p.mean(0))
    assert combine_class_scores(preds, "vote").argmax(-1).item() == 1  # two votes to one
    padded = torch.tensor([[[0.0, -1.0, -torch.inf]]])  # -inf pads a question with fewer choices
    assert combine_class_scores(padded, "mean_prob")[0, 2].item() < -600
    with pytest.raises(ValueError, match="mean_prob"):
        combine_class_scores(preds, "median")


# -- every built-in utility on a tiny model ------------------------------------------------------------
pytest.importorskip("peft")
pytest.importorskip("tokenizers")

from swarmkern.data import MultipleChoiceExample, PromptExample, load_jsonl  # noqa: E402
from swarmkern.merge import MergeContext, parse_method_config, segments_of, whole  # noqa: E402
from swarmkern.utilities import Ensembling, Predicting, Utility, build_utility  # noqa: E402
from swarmkern.utilities.protocol import capabilities  # noqa: E402
from swarmkern.utilities.common import normalize_text, particle_evaluator  # noqa: E402
from test_utilities import pool, setup  # noqa: E402,F401  (the tiny model and experts fixtures)


def _specs(setup) -> dict[str, dict]:
    d = setup.data
    mc = {"type": "multiple_choice", "dev": str(d["mc_dev"]), "test": str(d["mc_test"])}
    return {
        "mc_loglik": mc,
        "mc_norm": {**mc, "scoring": "loglik_norm"},
        "mc_generate": {**mc, "scoring": "generate", "max_new_tokens": 4},
        "exact_match": {"type": "exact_match", "dev": str(d["qa_dev"]), "max_new_tokens": 4},
        "reward_model": {"type": "reward_model", "dev": str(d["prompts_dev"]), "reward_model": str(setup.reward_dir),
                         "max_new_tokens": 5, "max_examples": 4, "bounds": None},
        "llm_judge": {"type": "llm_judge", "dev": str(d["prompts_dev"]), "judge": str(setup.judge_dir),
                      "max_new_tokens": 4, "max_examples": 2},
        "multitask": {"type": "multitask", "combine": "mean",
                      "tasks": {"mc": mc, "qa": {"type": "exact_match", "dev": str(d["qa_dev"]), "max_new_tokens": 4}}},
    }


@pytest.mark.parametrize("name", ["mc_loglik", "mc_norm", "mc_generate", "exact_match", "reward_model",
                                  "llm_judge", "multitask"])
def test_a_one_member_ensemble_scores_what_the_member_scores(setup, pool, name):
    built = build_utility(_specs(setup)[name], pool)
    own = built.dev(pool.weights)
    for i in range(pool.weights.shape[0]):
        value, how = built.dev.ensemble(built.dev.predict(pool.weights[i:i + 1]), "mean_prob")
        # rewards are floats from batches of other shapes (padding): equal to float precision only
        tol = {"rel": 1e-5} if name == "reward_model" else {"abs": 1e-12}
        assert value == pytest.approx(float(own[i]), **tol), (name, i, how)


@pytest.mark.parametrize("how", ["mean_prob", "vote"])
def test_multiple_choice_ensemble_by_hand(setup, pool, how):
    from swarmkern.evaluate import encode_requests

    built = build_utility(_specs(setup)["mc_loglik"], pool)
    exs = load_jsonl(setup.data["mc_dev"], MultipleChoiceExample)
    ev = particle_evaluator(pool)
    ctx = [f"Question: {e.question}\nAnswer:" for e in exs for _ in e.choices]
    ll = ev.loglikelihood(pool.weights, encode_requests(ev.tokenizer, ctx, [f" {c}" for e in exs for c in e.choices]))
    correct, at = 0, 0
    for e in exs:
        block = ll[:, at:at + len(e.choices)].double()  # [members, choices]
        at += len(e.choices)
        if how == "mean_prob":
            pick = int(torch.softmax(block, -1).mean(0).argmax())
        else:
            votes = Counter(block.argmax(1).tolist())
            top = max(votes.values())
            tied = [c for c in votes if votes[c] == top]
            pick = max(tied, key=lambda c: float(torch.softmax(block, -1).mean(0)[c]))
        correct += pick == e.answer
    value, used = built.dev.ensemble(built.dev.predict(pool.weights), how)
    assert used == how and value == pytest.approx(correct / len(exs))


def test_exact_match_ensemble_votes_on_normalised_answers(setup, pool, tmp_path):
    ev = particle_evaluator(pool)
    prompts = ["1+1=", "Say hi:", "abc", "The sky is", "Once upon"]
    members = pool.weights[[0, 1, 1]]  # member 1 twice: it outvotes member 0 wherever they differ
    gens = ev.generate(members, [ev.tokenizer(p)["input_ids"] for p in prompts], max_new_tokens=3, stop=["\n"])
    norm = [[normalize_text(g, ["strip", "lower", "whitespace"]) or None for g in row] for row in gens]
    voted = []
    for i in range(len(prompts)):  # by hand: the most frequent non-empty answer, first-ranked among ties
        given = [row[i] for row in norm if row[i] is not None]
        counts = Counter(given)
        voted.append(next((g for g in given if counts[g] == max(counts.values())), None))
    # answers: the vote's answer on even prompts, something nobody says on odd ones
    answers = [v if i % 2 == 0 and v is not None else "nobody says this" for i, v in enumerate(voted)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(prompts, answers)))
    built = build_utility({"type": "exact_match", "dev": str(data), "max_new_tokens": 3}, pool)
    value, used = built.dev.ensemble(built.dev.predict(members), "mean_prob")
    assert used == "vote"
    assert voted != [row[0] for row in zip(*norm)]  # the vote is not simply member 0's answers
    assert value == pytest.approx(sum(a == v for a, v in zip(answers, voted)) / len(prompts))


def test_reward_model_ensemble_scores_the_consensus_responses(setup, pool):
    from swarmkern.evaluate.models import load_reward_model, load_tokenizer

    built = build_utility(_specs(setup)["reward_model"], pool)
    exs = load_jsonl(setup.data["prompts_dev"], PromptExample, limit=4)
    ev = particle_evaluator(pool)
    members = pool.weights[[0, 1, 1]]  # member 1 twice: its responses are the consensus where they differ
    gens = ev.generate(members, [ev.tokenizer(e.prompt)["input_ids"] for e in exs], max_new_tokens=5)
    picked = consensus_responses(gens)
    assert picked != gens[0]
    rm, tok = load_reward_model(setup.reward_dir, device="cpu"), load_tokenizer(setup.reward_dir)
    with torch.no_grad():
        by_hand = sum(rm(input_ids=torch.tensor([tok(e.prompt + r)["input_ids"]])).logits[0, 0].item()
                      for e, r in zip(exs, picked)) / len(exs)
    value, used = built.dev.ensemble(built.dev.predict(members), "vote")
    assert used == "consensus" and value == pytest.approx(by_hand, rel=1e-5)


def test_multitask_ensemble_combines_each_tasks_ensemble(setup, pool):
    spec = _specs(setup)["multitask"]
    built = build_utility(spec, pool)
    parts = [(b := build_utility(t, pool).dev).ensemble(b.predict(pool.weights), "vote")
             for t in spec["tasks"].values()]
    value, used = built.dev.ensemble(built.dev.predict(pool.weights), "vote")
    assert value == pytest.approx((parts[0][0] + parts[1][0]) / 2) and used == "mc=vote, qa=vote"


@pytest.mark.parametrize("name", ["mc_generate", "exact_match", "llm_judge", "multitask"])
def test_the_ensemble_baseline_runs_on_every_utility(setup, pool, name):
    built = build_utility(_specs(setup)[name], pool)
    ctx = MergeContext(experts=pool.weights, segments=segments_of(pool.layout), dev=built.dev, test=built.test,
                       names=list(pool.names), utility=built, pool=pool)
    ctx.begin()
    res = parse_method_config({"type": "ensemble", "k": 2}).run(ctx)
    top = torch.argsort(built.dev(pool.weights), descending=True, stable=True)[:2]
    assert res.info["source"] == "utility" and res.info["experts"] == [pool.names[int(i)] for i in top]
    assert res.dev == pytest.approx(built.dev.ensemble(built.dev.predict(pool.weights[top]), "mean_prob")[0])
    assert (res.test is None) == (built.test is None)
    assert ctx.evaluations == pool.weights.shape[0] + 2


def test_a_python_utility_object_lends_its_predictions(tmp_path, monkeypatch):
    """A callable object behind `type: python` with predict / score / ensemble feeds the ensemble."""
    (tmp_path / "my_objective.py").write_text(
        "import torch\n"
        "from swarmkern.utilities import ClassScores\n"
        "from swarmkern.utilities.ensemble import combine_class_scores\n"
        "class Objective:\n"
        "    answers = torch.tensor([0, 1, 1])\n"
        "    example_ids = ['a', 'b', 'c']\n"
        "    def predict(self, rows):  # [B, 3 examples, 2 classes]: every row prefers class 0 by its x[0]\n"
        "        return ClassScores(torch.stack([torch.tensor([[r[0].item(), 0.0]] * 3) for r in rows]).double())\n"
        "    def example_scores(self, preds):\n"
        "        return (preds.scores.argmax(-1) == self.answers).double()\n"
        "    def score(self, preds):\n"
        "        return self.example_scores(preds).mean(1)\n"
        "    def ensemble(self, preds, how='auto'):\n"
        "        how = 'mean_prob' if how == 'auto' else how\n"
        "        return float(self.score(ClassScores(combine_class_scores(preds.scores, how)[None]))[0]), how\n"
        "    def __call__(self, rows):\n"
        "        return self.score(self.predict(rows))\n"
        "objective = Objective()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    built = build_utility({"type": "python", "function": "my_objective:objective"}, None)
    assert isinstance(built.dev, Ensembling) and built.dev.example_ids == ["a", "b", "c"]
    experts = torch.tensor([[1.0], [-2.0], [-0.5]])  # class 0, class 1, class 1: scores 1/3, 2/3, 2/3
    torch.testing.assert_close(built.dev.example_scores(built.dev.predict(experts))[0],
                               torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    ctx = MergeContext(experts=experts, segments=whole(1), dev=built.dev, utility=built)
    ctx.begin()
    res = parse_method_config({"type": "ensemble", "k": 3}).run(ctx)
    # mean of softmax over the 3 experts still prefers class 1 (2 of 3 lean that way, one strongly)
    assert res.info["source"] == "utility" and res.dev == pytest.approx(2 / 3) and res.info["combine"] == "mean_prob"


def test_a_plain_python_function_has_no_capabilities_and_the_ensemble_says_so(tmp_path):
    built = build_utility({"type": "python", "function": "torch:sum", "kwargs": {"dim": 1}}, None)
    assert capabilities(built.dev) == [] and isinstance(built.dev, Utility)
    experts = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    ctx = MergeContext(experts=experts, segments=whole(2), dev=built.dev, utility=built)
    ctx.begin()
    with pytest.raises(ValueError, match="no per-example predictions"):
        parse_method_config({"type": "ensemble", "k": 2}).run(ctx)


@pytest.mark.parametrize("name", ["mc_loglik", "mc_generate", "exact_match", "reward_model", "llm_judge",
                                  "multitask"])
def test_every_builtin_utility_declares_the_prediction_protocol(setup, pool, name):
    """score(predict(x)) == scorer(x); a subset of predictions equals predicting the subset; example
    scores average to the score; one id per example."""
    built = build_utility(_specs(setup)[name], pool)
    dev = built.dev
    assert isinstance(dev, Ensembling) and isinstance(dev, Predicting)
    rows = pool.weights
    preds = dev.predict(rows)
    # rewards are floats from batches of other shapes (padding): equal to float precision only
    tol = {"rtol": 1e-5, "atol": 1e-7} if name == "reward_model" else {"rtol": 0, "atol": 0}
    torch.testing.assert_close(dev.score(preds), dev(rows), **tol)
    sub = [2, 0]
    torch.testing.assert_close(dev.score(preds[sub]), dev.score(preds)[sub])
    per = dev.example_scores(preds)
    if name == "multitask":
        assert per is None and len(dev.example_ids) == sum(len(s.example_ids) for s in dev.scorers.values())
    else:
        assert per.shape == (rows.shape[0], len(dev.example_ids))
        torch.testing.assert_close(per.mean(1), dev.score(preds))
