"""The demo end to end in --tiny mode, plus the pieces whose failure would silently fake a result."""
from __future__ import annotations

import json
import random

import pytest
import torch
from click.testing import CliRunner

from swarmkern.cli import main
from swarmkern.demo import tasks


def test_target_splits_are_disjoint_and_balanced():
    dev, test, hold = tasks.target_splits(40, 100, seed=3, n_holdout=20)
    qs = [e.question for e in dev + test + hold]
    assert len(qs) == len(set(qs)) == 160
    assert {e.skill for e in dev} == set(tasks.TARGET_SKILLS)
    # held-out phrasings only: no target question is phrased like a training question
    train_q = {e.question for s in tasks.TARGET_SKILLS for e in tasks.sample({s: 1}, 200, seed=0, distinct=False)}
    assert not train_q & set(qs)
    assert tasks.target_splits(40, 100, seed=3, n_holdout=20)[1] == test  # reproducible


def test_examples_have_their_answer_among_distinct_choices():
    for name, gen in tasks.SKILLS.items():
        for split in (tasks.TRAIN, tasks.HELDOUT):
            ex = gen(random.Random(1), split)
            assert len(set(ex.choices)) == len(ex.choices) >= 2, name
            assert 0 <= ex.answer < len(ex.choices)


def test_split_model_matches_full_forward(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swarmkern.demo.model import prompt_template
    from swarmkern.demo.stack import SplitModel, encode
    from swarmkern.testing import build_tiny_causal_lm

    d = build_tiny_causal_lm(tmp_path / "m", num_layers=3)
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModelForCausalLM.from_pretrained(str(d)).eval()
    exs = tasks.sample({"larger": 1, "sentiment": 1}, 6, seed=0)
    enc = encode(tok, exs, prompt_template(tok))
    with torch.no_grad():
        full = model(enc.ids).logits  # right padding does not change the real positions (causal)
    split = SplitModel(model, 2)
    got = split.choice_logits(split.lower(enc), enc, 1)[0]
    for i in range(len(enc.answer)):
        want = full[i, enc.lengths[i] - 1, enc.choice_ids[i].clamp(min=0)]
        mask = enc.choice_ids[i] >= 0
        torch.testing.assert_close(got[i][mask], want[mask], rtol=1e-4, atol=1e-4)


def test_demo_tiny_end_to_end(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["demo", "--tiny", "--out", str(out), "--cache", str(cache), "--no-progress", "--threads", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "| swarm |" in res.output and "| best_single |" in res.output and "| expert_0 |" in res.output
    report = json.loads((out / "demo.json").read_text())
    rows = report["rows"]
    for name in ("base model", "expert_0", "uniform_soup", "best_single", "swarm"):
        assert 0.0 <= rows[name]["dev"] <= 1.0 and 0.0 <= rows[name]["test"] <= 1.0, name
    assert (out / "demo.png").is_file() and (out / "swarm" / "summary.json").is_file()
    # the exported best adapter is a PEFT dir that PEFT itself loads onto the base model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(report["model_dir"])
    PeftModel.from_pretrained(base, str(out / "best_adapter"))
    # the swarm's reported dev score is its own best particle's, re-scored independently
    summary = json.loads((out / "swarm" / "summary.json").read_text())
    assert summary["best_dev_utility"] == pytest.approx(rows["swarm"]["dev"])
    # the exported compare config runs the project's own multiple_choice utility on the same experts
    res_c = CliRunner().invoke(main, ["compare", str(out / "compare.yaml"), "--max-iters", "1", "--no-progress",
                                      "--methods", "best_single,uniform_soup"])
    assert res_c.exit_code == 0, res_c.output
    compared = json.loads((out / "compare" / "compare.json").read_text())
    assert set(compared) == {"swarm", "best_single", "uniform_soup"}
    assert all(r["test"] is not None for r in compared.values())
    # second run: the experts come from the cache
    res2 = CliRunner().invoke(main, args)
    assert res2.exit_code == 0, res2.output
    assert "experts: cached" in res2.output
    assert json.loads((out / "demo.json").read_text())["rows"] == rows  # deterministic


def test_demo_rejects_a_bad_model_dir(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--model", str(tmp_path), "--out", str(tmp_path / "o"),
                                    "--cache", str(tmp_path / "c")])
    assert res.exit_code != 0
    assert "not a transformers model directory" in res.output


def test_base_init_adapter_is_the_base_model(tmp_path):
    """The extra particle must be exactly the base model, else 'include the base' would be a lie."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swarmkern.demo.experts import LoraSpec, init_adapter, load_adapter, save_adapter
    from swarmkern.demo.model import prompt_template
    from swarmkern.demo.stack import SplitModel, encode
    from swarmkern.testing import build_tiny_causal_lm

    d = build_tiny_causal_lm(tmp_path / "m", num_layers=3)
    tok = AutoTokenizer.from_pretrained(str(d))
    split = SplitModel(AutoModelForCausalLM.from_pretrained(str(d)), 2)
    spec = LoraSpec(4, 8.0)
    init = init_adapter(split, spec, seed=0)
    save_adapter({n: (a, torch.zeros_like(b)) for n, (a, b) in init.items()}, spec, tmp_path / "b", str(d))
    tensors, spec2 = load_adapter(tmp_path / "b")
    assert spec2 == spec and set(tensors) == set(split.slots)
    enc = encode(tok, tasks.sample({"larger": 1}, 4, seed=0), prompt_template(tok))
    h = split.lower(enc)
    plain = split.choice_logits(h, enc, 1)
    split.set_adapter({n: (a.unsqueeze(0), b.unsqueeze(0)) for n, (a, b) in tensors.items()}, spec.scale)
    torch.testing.assert_close(split.choice_logits(h, enc, 1), plain)
    # and a non-zero B changes the output (the adapter is really applied)
    split.set_adapter({n: (a.unsqueeze(0), torch.ones_like(b).unsqueeze(0)) for n, (a, b) in tensors.items()}, spec.scale)
    assert not torch.allclose(split.choice_logits(h, enc, 1), plain)


def test_saved_expert_means_the_same_to_peft(tmp_path):
    """PEFT applying a saved adapter must give the logits our split scorer computes with it."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swarmkern.demo.experts import LoraSpec, init_adapter, save_adapter
    from swarmkern.demo.model import prompt_template
    from swarmkern.demo.stack import SplitModel, encode
    from swarmkern.testing import build_tiny_causal_lm

    d = build_tiny_causal_lm(tmp_path / "m", num_layers=3)
    tok = AutoTokenizer.from_pretrained(str(d))
    split = SplitModel(AutoModelForCausalLM.from_pretrained(str(d)), 2)
    spec = LoraSpec(4, 8.0)
    gen = torch.Generator().manual_seed(0)
    adapter = {n: (a, torch.randn(b.shape, generator=gen) * 0.3) for n, (a, b) in init_adapter(split, spec, 0).items()}
    save_adapter(adapter, spec, tmp_path / "e", str(d))
    enc = encode(tok, tasks.sample({"larger": 1, "add": 1}, 5, seed=1), prompt_template(tok))
    split.set_adapter({n: (a.unsqueeze(0), b.unsqueeze(0)) for n, (a, b) in adapter.items()}, spec.scale)
    ours = split.choice_logits(split.lower(enc), enc, 1)[0]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(d)), str(tmp_path / "e")).eval()
    with torch.no_grad():
        full = peft_model(input_ids=enc.ids).logits
    for i in range(len(enc.answer)):
        mask = enc.choice_ids[i] >= 0
        want = full[i, enc.lengths[i] - 1, enc.choice_ids[i][mask]]
        torch.testing.assert_close(ours[i][mask], want, rtol=1e-4, atol=1e-4)
