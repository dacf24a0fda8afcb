"""Built-in utilities on tiny models: parsing, scoring, multi-task combination, Pareto front, bad input."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("peft")
pytest.importorskip("tokenizers")

from swarmkern.flat import load_experts  # noqa: E402
from swarmkern.utilities import build_utility, parse_utility_config  # noqa: E402
from swarmkern.config import resolve_utility_paths  # noqa: E402
from swarmkern.utilities.common import harmonic_mean, normalize_text, particle_evaluator  # noqa: E402
from swarmkern.utilities.dataset import parse_choice_letter  # noqa: E402
from swarmkern.utilities.multitask import ParetoFront  # noqa: E402
from swarmkern.utilities.reward import parse_rating  # noqa: E402
from swarmkern.testing import cached_tiny_setup  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    return cached_tiny_setup()


@pytest.fixture(scope="module")
def pool(setup):
    return load_experts(setup.expert_dirs)


@pytest.fixture(scope="module")
def rows(pool):
    return pool.weights


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# -- multiple choice ------------------------------------------------------------------------------
def test_multiple_choice_loglik_scores_each_particle(setup, pool, rows, tmp_path):
    from swarmkern.evaluate import encode_requests

    questions = [("What is 2+2?", ["4", "22", "5"]), ("Name a colour.", ["red", "blue green", "x"]),
                 ("Hi?", ["hello", "yo"])]
    ev = particle_evaluator(pool)
    ctx = [f"Question: {q}\nAnswer:" for q, cs in questions for _ in cs]
    cont = [f" {c}" for _, cs in questions for c in cs]
    ll = ev.loglikelihood(rows, encode_requests(ev.tokenizer, ctx, cont))
    # answers = particle 0's own preferences -> particle 0 scores 1.0; the others score what they agree
    splits = torch.tensor([len(cs) for _, cs in questions]).cumsum(0).tolist()
    picks = torch.stack([blk.argmax(1) for blk in torch.tensor_split(ll, splits[:-1], dim=1)], 1)  # [P, Q]
    data = jsonl(tmp_path / "mc.jsonl", [{"question": q, "choices": cs, "answer": int(picks[0, i])}
                                        for i, (q, cs) in enumerate(questions)])
    scores = build_utility({"type": "multiple_choice", "dev": data}, pool).dev(rows)
    assert scores[0] == 1.0
    torch.testing.assert_close(scores, (picks == picks[0]).double().mean(1))


def test_multiple_choice_length_normalised(pool, rows, tmp_path):
    from swarmkern.evaluate import encode_requests

    ev = particle_evaluator(pool)
    q = "Pick one."
    choices = ["a", "abcdefghij"]  # 1 token vs 10 tokens: the sum strongly prefers the short one
    ll = ev.loglikelihood(rows, encode_requests(ev.tokenizer, [f"Question: {q}\nAnswer:"] * 2,
                                                [f" {c}" for c in choices]))
    n = torch.tensor([2.0, 11.0])
    data = jsonl(tmp_path / "mc.jsonl", [{"question": q, "choices": choices, "answer": 1}])
    s_sum = build_utility({"type": "multiple_choice", "dev": data}, pool).dev(rows)
    s_norm = build_utility({"type": "multiple_choice", "scoring": "loglik_norm", "dev": data}, pool).dev(rows)
    torch.testing.assert_close(s_sum, (ll.argmax(1) == 1).double())
    torch.testing.assert_close(s_norm, ((ll / n).argmax(1) == 1).double())


def test_parse_choice_letter():
    assert parse_choice_letter(" B. because", 4) == 1
    assert parse_choice_letter(" (C)", 4) == 2
    assert parse_choice_letter("Answer: D", 4) == 3
    assert parse_choice_letter(" E or A", 4) == 0  # E is not a choice of 4
    assert parse_choice_letter(" Because", 4) is None  # letters inside words do not count
    assert parse_choice_letter("", 4) is None


def test_multiple_choice_generate_parses_generations(pool, rows, setup):
    cfg = {"type": "multiple_choice", "scoring": "generate", "dev": str(setup.data["mc_dev"]), "max_new_tokens": 6}
    built = build_utility(cfg, pool)
    ev = particle_evaluator(pool)
    from swarmkern.data import MultipleChoiceExample, load_jsonl

    examples = load_jsonl(setup.data["mc_dev"], MultipleChoiceExample)
    prompts = built.config.encode_prompts(ev.tokenizer, [built.config._prompt(ex) for ex in examples])
    assert "A: " in ev.tokenizer.decode(prompts[0]) and ev.tokenizer.decode(prompts[0]).endswith("The answer is")
    texts = ev.generate(rows, prompts, max_new_tokens=6)
    expect = [sum(parse_choice_letter(t, len(ex.choices)) == ex.answer for t, ex in zip(row, examples)) / len(examples)
              for row in texts]
    assert built.dev(rows).tolist() == pytest.approx(expect)


# -- exact match ----------------------------------------------------------------------------------
def test_exact_match_against_own_generations(pool, rows, tmp_path):
    ev = particle_evaluator(pool)
    prompts = ["1+1=", "Say hi:", "abc"]
    gens = ev.generate(rows, [ev.tokenizer(p)["input_ids"] for p in prompts], max_new_tokens=5, stop=["\n"])
    # particle 1's answers, upper-cased and padded: normalisation must still match them
    data = jsonl(tmp_path / "qa.jsonl", [{"prompt": p, "answer": f"  {g.upper()} "} for p, g in zip(prompts, gens[1])])
    scores = build_utility({"type": "exact_match", "dev": data, "max_new_tokens": 5}, pool).dev(rows)
    expect = [sum(normalize_text(a, ["strip", "lower", "whitespace"]) == normalize_text(b, ["strip", "lower", "whitespace"])
                  for a, b in zip(row, gens[1])) / 3 for row in gens]
    assert scores[1] == 1.0
    assert scores.tolist() == pytest.approx(expect)


def test_normalizers_and_answer_regex():
    assert normalize_text("  The  Answer, is 1,234.0! ", ["number"]) == "1234"
    assert normalize_text("The cat.", ["lower", "punctuation", "articles", "whitespace"]) == "cat"
    assert normalize_text("\n first\nsecond", ["first_line"]) == "first"
    cfg = parse_utility_config({"type": "exact_match", "dev": "x.jsonl", "answer_regex": r"#### (\S+)",
                                "normalize": ["strip"]})
    assert cfg.extract("work... #### 42 done") == "42"
    assert cfg.extract("no marker") == ""


# -- reward model and judge ----------------------------------------------------------------------
def test_reward_model_normalisation_and_length_term(setup, pool, rows):
    from swarmkern.evaluate.models import load_reward_model, load_tokenizer

    base = {"type": "reward_model", "dev": str(setup.data["prompts_dev"]), "reward_model": str(setup.reward_dir),
            "max_new_tokens": 6, "max_examples": 3}
    raw = build_utility({**base, "bounds": None}, pool).dev(rows)
    # raw = mean reward of "{prompt}{response}" under the reward model, checked by hand
    ev = particle_evaluator(pool)
    from swarmkern.data import PromptExample, load_jsonl

    exs = load_jsonl(setup.data["prompts_dev"], PromptExample, limit=3)
    gens = ev.generate(rows, [ev.tokenizer(e.prompt)["input_ids"] for e in exs], max_new_tokens=6)
    rm, tok = load_reward_model(setup.reward_dir, device="cpu"), load_tokenizer(setup.reward_dir)
    with torch.no_grad():
        by_hand = [sum(rm(input_ids=torch.tensor([tok(e.prompt + g)["input_ids"]])).logits[0, 0].item()
                       for e, g in zip(exs, row)) / 3 for row in gens]
    assert raw.tolist() == pytest.approx(by_hand, rel=1e-5)

    fixed = build_utility({**base, "bounds": [-2.0, 2.0]}, pool).dev(rows)
    torch.testing.assert_close(fixed, (raw + 2) / 4)
    dev_bounds = build_utility({**base, "test": str(setup.data["prompts_test"])}, pool)
    first = dev_bounds.dev(rows)
    assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0  # means of per-response values in [0, 1]
    assert "bounds" in dev_bounds.config._state  # frozen after the first dev call, shared with test
    lo, hi = dev_bounds.config._state["bounds"]
    dev_bounds.test(rows)
    assert dev_bounds.config._state["bounds"] == (lo, hi)

    verbose = build_utility({**base, "bounds": None, "length_weight": 0.5}, pool).dev(rows)
    concise = build_utility({**base, "bounds": None, "length_weight": 0.5, "length_preference": "concise"}, pool).dev(rows)
    frac = torch.tensor([sum(min(len(g), 6) / 6 for g in row) / 3 for row in gens], dtype=torch.float64)
    torch.testing.assert_close(verbose, raw + 0.5 * frac)
    torch.testing.assert_close(concise, raw + 0.5 * (1 - frac))


def test_parse_rating():
    pat = parse_utility_config({"type": "llm_judge", "dev": "x", "judge": "j"}).rating_pattern
    assert parse_rating(" 7/10", pat, 1, 10) == 7
    assert parse_rating("Rating: 8.5 / 10 because", pat, 1, 10) == 8.5
    assert parse_rating("Rating: 12/10", pat, 1, 10) == 10
    assert parse_rating("I like it", pat, 1, 10) == 1  # unparseable -> the lowest


def test_llm_judge_scores_with_a_trained_tiny_judge(setup, pool, rows):
    cfg = {"type": "llm_judge", "dev": str(setup.data["prompts_dev"]), "judge": str(setup.judge_dir),
           "max_new_tokens": 4, "max_examples": 2}
    assert build_utility(cfg, pool).dev(rows).tolist() == [7.0] * rows.shape[0]  # the judge always says 7/10
    broken = {**cfg, "rating_pattern": r"Score: (\d+)"}  # never matches -> min_rating
    assert build_utility({**broken, "min_rating": 2}, pool).dev(rows).tolist() == [2.0] * rows.shape[0]


# -- multi-task and Pareto front ---------------------------------------------------------------------
def test_harmonic_mean():
    v = torch.tensor([[0.5, 1.0], [0.25, 0.0]], dtype=torch.float64).T  # tasks x particles
    torch.testing.assert_close(harmonic_mean(v, torch.ones(2)), torch.tensor([2 / 3, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("combine", ["harmonic", "mean", "min"])
def test_multitask_combinations(combine):
    from swarmkern.objectives import sphere

    task = lambda shift: {"type": "python", "function": "swarmkern.objectives:sphere", "kwargs": {"shift": shift}}
    spec = {"type": "multitask", "tasks": {"a": task(0.0), "b": task(1.0)}, "combine": combine, "weights": {"a": 3.0}}
    x = torch.tensor([[0.2], [0.5], [2.0], [1.0]])
    a, b = sphere(x, 0.0), sphere(x, 1.0)  # b is 0 for the last particle
    got = build_utility(spec, None).dev(x)
    expect = {"harmonic": torch.where(b > 0, 4 / (3 / a + 1 / b.clamp(min=1e-9)), 0.0),
              "mean": (3 * a + b) / 4, "min": torch.minimum(a, b)}[combine]
    torch.testing.assert_close(got, expect.double())


def test_pareto_front_keeps_exactly_the_non_dominated(tmp_path):
    front = ParetoFront(["a", "b"])
    pts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.4, 0.4], [0.5, 0.5], [0.2, 0.9], [0.6, 0.6]],
                       dtype=torch.float64)
    front.add(pts[:4], pts[:4].mean(1), torch.zeros(4, 1), call=0)
    front.add(pts[4:], pts[4:].mean(1), torch.zeros(3, 1), call=1)
    got = sorted(tuple(m["scores"]) for m in front.members)
    assert got == [(0.0, 1.0), (0.2, 0.9), (0.6, 0.6), (1.0, 0.0)]
    assert front.seen == 7
    assert {(m["call"], m["row"]) for m in front.members} == {(0, 0), (0, 1), (1, 1), (1, 2)}


def test_multitask_writes_pareto_front_and_experts(pool, rows, setup, tmp_path):
    spec = {"type": "multitask", "save_front": True, "tasks": {
        "mc": {"type": "multiple_choice", "dev": str(setup.data["mc_dev"]), "test": str(setup.data["mc_test"])},
        "mc_norm": {"type": "multiple_choice", "scoring": "loglik_norm", "dev": str(setup.data["mc_dev"]),
                    "test": str(setup.data["mc_test"])}}}
    built = build_utility(spec, pool)
    assert built.test is not None
    scores = built.dev(rows)
    built.dev(rows * 0.5)
    built.finalize(tmp_path)
    data = json.loads((tmp_path / "pareto_front.json").read_text())
    assert data["tasks"] == ["mc", "mc_norm"] and data["evaluated"] == 2 * rows.shape[0]
    assert data["combine"] == "harmonic"
    best = max(m["combined"] for m in data["front"])
    assert best >= float(scores.max())
    for m in data["front"]:
        assert (tmp_path / "pareto_front" / m["path"].split("/")[-1] / "adapter_model.safetensors").is_file()


# -- configuration errors ------------------------------------------------------------------------
@pytest.mark.parametrize("spec,match", [
    ({"type": "multiple_choice", "dev": "x", "scoring": "vote"}, r"utility\.scoring"),
    ({"type": "multiple_choice", "dev": "x", "colour": 1}, r"utility\.colour: Extra inputs"),
    ({"type": "exact_match", "dev": "x", "normalize": ["upper"]}, "unknown step 'upper'"),
    ({"type": "reward_model", "dev": "x", "reward_model": "r", "bounds": [1, 0]}, "lo < hi"),
    ({"type": "llm_judge", "dev": "x", "judge": "j", "rating_pattern": "no group"}, "group"),
    ({"type": "multitask", "tasks": {"a": {"type": "python", "function": "m:f"}}}, "at least 2"),
    ({"type": "multitask", "tasks": {"a": {"type": "nope"}, "b": {"type": "nope"}}}, r"tasks\.a: .*unknown utility"),
    ({"type": "multitask", "weights": {"c": 1}, "tasks": {"a": {"type": "python", "function": "m:f"},
                                                          "b": {"type": "python", "function": "m:f"}}}, "not a task"),
])
def test_bad_configs_name_the_field(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_utility_config(spec)


def test_bad_data_and_models_raise_clear_errors(pool, setup, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": ["a", "b"]\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        build_utility({"type": "multiple_choice", "dev": str(bad)}, pool)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty split"):
        build_utility({"type": "exact_match", "dev": str(empty)}, pool)
    with pytest.raises(ValueError, match="not a local directory"):
        build_utility({"type": "exact_match", "dev": str(setup.data["qa_dev"]), "model": str(tmp_path / "none")}, pool)
    with pytest.raises(ValueError, match="exactly one"):
        from swarmkern.testing import build_tiny_causal_lm  # a causal LM dir is not a 1-label classifier
        from transformers import AutoConfig

        d = build_tiny_causal_lm(tmp_path / "lm")
        cfg = AutoConfig.from_pretrained(str(d))
        cfg.num_labels = 3
        cfg.save_pretrained(str(d))
        build_utility({"type": "reward_model", "dev": str(setup.data["prompts_dev"]), "reward_model": str(d)},
                      pool).dev(pool.weights[:1])
    from swarmkern.flat import ExpertPool

    with pytest.raises(ValueError, match="need a pool of PEFT LoRA adapters or full-weight"):
        build_utility({"type": "exact_match", "dev": str(setup.data["qa_dev"])}, None)
    with pytest.raises(ValueError, match="utility.model: required"):
        build_utility({"type": "exact_match", "dev": str(setup.data["qa_dev"])},
                      ExpertPool.from_tensor(torch.zeros(2, 3)))


def test_resolve_utility_paths(tmp_path):
    spec = {"type": "multitask", "tasks": {"a": {"type": "exact_match", "dev": "d/a.jsonl", "model": "/abs/m"},
                                           "b": {"type": "llm_judge", "dev": "b.jsonl", "judge": "j"}}}
    out = resolve_utility_paths(spec, tmp_path)
    assert out["tasks"]["a"]["dev"] == str(tmp_path / "d/a.jsonl") and out["tasks"]["a"]["model"] == "/abs/m"
    assert out["tasks"]["b"]["judge"] == str(tmp_path / "j")
    assert spec["tasks"]["a"]["dev"] == "d/a.jsonl"  # the input is not modified


def test_evaluator_is_shared_across_utilities(pool, setup):
    a = build_utility({"type": "multiple_choice", "dev": str(setup.data["mc_dev"])}, pool)
    b = build_utility({"type": "exact_match", "dev": str(setup.data["qa_dev"])}, pool)
    assert a.dev is not b.dev
    assert particle_evaluator(pool) is particle_evaluator(pool)  # one model load per process


def test_cleared_evaluators_give_their_model_back_unpatched(pool, setup):
    from swarmkern.evaluate.lora import BatchedLoraLinear
    from swarmkern.utilities.common import clear_evaluators

    spec = {"type": "multiple_choice", "dev": str(setup.data["mc_dev"]), "dtype": "float32"}
    before = build_utility(spec, pool).dev(pool.weights)
    model = particle_evaluator(pool, dtype="float32").model
    clear_evaluators()
    assert not any(isinstance(m, BatchedLoraLinear) for m in model.modules())
    torch.testing.assert_close(build_utility(spec, pool).dev(pool.weights), before)  # a new evaluator, same model


def test_full_weight_pool_through_a_utility(setup, tmp_path):
    """Full-weight experts (model tensors in .safetensors) are scored with functional_call."""
    from swarmkern.evaluate.full import FullWeightEvaluator
    from swarmkern.testing import write_full_weight_experts

    pool = load_experts(write_full_weight_experts(setup.model_dir, tmp_path, 2))
    with pytest.raises(ValueError, match="utility.model: required"):
        build_utility({"type": "multiple_choice", "dev": str(setup.data["mc_dev"])}, pool)
    built = build_utility({"type": "multiple_choice", "dev": str(setup.data["mc_dev"]),
                           "model": str(setup.model_dir)}, pool)
    ev = particle_evaluator(pool, model=str(setup.model_dir))
    assert isinstance(ev, FullWeightEvaluator)
    rows = pool.weights
    scores = built.dev(rows)
    # each particle alone (a [1, D] call) gives the same score as the batch
    assert [float(built.dev(rows[k:k + 1])[0]) for k in range(2)] == scores.tolist()


def test_full_weight_and_lora_evaluators_never_share_a_patched_model(setup, pool, tmp_path):
    """A LoRA evaluator patches its model's layers in place; a full-weight evaluator built on the same
    model directory before it must keep scoring the model it had (and the other way round)."""
    from swarmkern.testing import write_full_weight_experts
    from swarmkern.utilities.common import clear_evaluators

    clear_evaluators()
    full_pool = load_experts(write_full_weight_experts(setup.model_dir, tmp_path, 2, only="layers.2."))
    spec = {"type": "multiple_choice", "dev": str(setup.data["mc_dev"]), "model": str(setup.model_dir),
            "dtype": "float32"}
    full = build_utility(spec, full_pool).dev
    before = full(full_pool.weights)
    lora_ev = particle_evaluator(pool, model=str(setup.model_dir), dtype="float32")
    full_ev = particle_evaluator(full_pool, model=str(setup.model_dir), dtype="float32")
    assert lora_ev.model is not full_ev.model
    torch.testing.assert_close(full(full_pool.weights), before)
    lora_scores = build_utility({**spec, "model": str(setup.model_dir)}, pool).dev(pool.weights)
    assert lora_scores.shape == (len(pool),)
    torch.testing.assert_close(full(full_pool.weights), before)
    clear_evaluators()


def test_dev_and_test_with_the_same_data_is_an_error(setup, tmp_path):
    """The same file, or a copy of it, as dev and test: a one-line error, unless explicitly allowed."""
    dev = setup.data["mc_dev"]
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(dev.read_bytes())
    for test in (dev, copy):
        with pytest.raises(ValueError, match=r"holds the same data as dev .* allow_same_dev_and_test: true") as err:
            parse_utility_config({"type": "multiple_choice", "dev": str(dev), "test": str(test)})
        assert "\n" not in str(err.value)
    parse_utility_config({"type": "multiple_choice", "dev": str(dev), "test": str(copy), "allow_same_dev_and_test": True})
    parse_utility_config({"type": "multiple_choice", "dev": str(dev), "test": str(setup.data["mc_test"])})
