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


def _tiny_model(tmp_path, layers=3):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from swarmkern.testing import build_tiny_causal_lm

    d = build_tiny_causal_lm(tmp_path / "m", num_layers=layers)
    return d, AutoModelForCausalLM.from_pretrained(str(d)).eval(), AutoTokenizer.from_pretrained(str(d))


def test_training_forward_is_the_model(tmp_path):
    """Cached lower states + the top layers alone (what training runs) give the full model's logits."""
    from swarmkern.demo.experts import _layers, cache_lower_states, encode_train
    from swarmkern.demo.model import prompt_template

    _, model, tok = _tiny_model(tmp_path)
    exs = tasks.sample({"larger": 1, "sentiment": 1}, 6, seed=0)
    data = encode_train(tok, exs, prompt_template(tok), " {choice}")
    with torch.no_grad():
        full = model(input_ids=data.ids).logits  # right padding does not change the real positions (causal)
        cache_lower_states(model, data, first=1, progress=False)
        dec = model.get_decoder()
        with _layers(dec, 1, 3):
            top = model.get_output_embeddings()(dec(inputs_embeds=data.h).last_hidden_state)
    for i, p in zip(data.label_row.tolist(), data.label_pos.tolist()):
        torch.testing.assert_close(top[i, p], full[i, p], rtol=1e-4, atol=1e-4)
    # the labels are the answers' tokens, predicted one position earlier
    assert data.label_tok.tolist() == [int(data.ids[i, p + 1]) for i, p in zip(data.label_row, data.label_pos)]


def _build(tmp_path, name, **over):
    from swarmkern.demo.experts import ExpertSpec, build_experts
    from swarmkern.demo.model import prompt_template, tiny_dir
    from transformers import AutoTokenizer

    md = tiny_dir(tmp_path / "cache")
    tpl = prompt_template(AutoTokenizer.from_pretrained(str(md)))
    spec = ExpertSpec(**{**dict(n_experts=2, n_top=2, rank=4, steps=6, batch=4, examples_per_skill=4), **over})
    return spec, md, build_experts(spec, md, tpl, " {choice}", tmp_path / name, lambda *_: None, progress=False)


def test_experts_rebuild_bit_for_bit_and_train(tmp_path):
    from safetensors.torch import load_file

    from swarmkern.demo.experts import same_weights

    spec, _, a = _build(tmp_path, "a")
    _, _, b = _build(tmp_path, "b")
    assert same_weights(a, b, spec.names()) == 0.0
    init = load_file(str(a / "init" / "adapter_model.safetensors"))
    e0, e1 = (load_file(str(a / n / "adapter_model.safetensors")) for n in spec.names())
    for k, t in init.items():
        if ".lora_B" in k:
            assert not torch.equal(e0[k], t)  # trained
    # LoRA+: A moves much less than B, and both experts start from the same A
    key_a = next(k for k in init if ".lora_A" in k)
    assert (e0[key_a] - init[key_a]).abs().max() < 0.2 * e0[key_a.replace("lora_A", "lora_B")].abs().max()
    assert not torch.equal(e0[key_a], e1[key_a])
    # another seed gives another pool
    spec2, _, c = _build(tmp_path, "c", seed=1)
    assert same_weights(a, c, spec.names()) > 0


def test_init_adapter_is_the_base_model(tmp_path):
    """The shared init (B = 0) must be exactly the base model, or 'experts start from the base' is false."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, md, root = _build(tmp_path, "a")
    base = AutoModelForCausalLM.from_pretrained(str(md)).eval()
    ids = torch.tensor([[3, 5, 7, 9, 11]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(md)), str(root / "init")).eval()
        torch.testing.assert_close(peft(input_ids=ids).logits, plain)
        expert = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(md)), str(root / "expert_0")).eval()
        assert not torch.allclose(expert(input_ids=ids).logits, plain)


def _peft_accuracy(model_dir, adapter, quiz, template) -> float:
    """First-token multiple-choice accuracy of a PEFT adapter, computed here without swarmkern's
    evaluator: one plain forward of prompt + the choices' common tokens, then the choice whose first
    differing token has the highest logit (the first choice wins ties)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(adapter)).eval()
    right = 0
    rows = [json.loads(line) for line in quiz.read_text().splitlines()]
    for row in rows:
        prompt = template.format(question=row["question"])
        seqs = [tok(prompt + " " + c, add_special_tokens=True)["input_ids"] for c in row["choices"]]
        d = next(i for i in range(min(map(len, seqs))) if len({q[i] for q in seqs}) > 1)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seqs[0][:d]])).logits[0, -1]
        scores = [float(logits[q[d]]) for q in seqs]
        right += int(scores.index(max(scores)) == row["answer"])
    return right / len(rows)


def test_demo_tiny_end_to_end(tmp_path):
    import yaml

    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["demo", "--tiny", "--out", str(out), "--cache", str(cache), "--threads", "1", "--seed", "3"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "| swarm |" in res.output and "| best_single |" in res.output and "| ensemble |" in res.output
    assert res.output.count("| swarm |") == 1  # the comparison is printed once (the demo's table, not compare's too)
    assert "k=3 forward passes per question" in res.output
    report = json.loads((out / "demo.json").read_text())
    demo = report["results"]
    assert set(demo) == {"swarm", "best_single", "uniform_soup", "task_arithmetic", "ties", "dare_ties",
                         "greedy_soup", "ensemble"}
    # the user's path, in its own output folder: the same numbers, method by method
    res_c = CliRunner().invoke(main, ["compare", str(out / "compare.yaml"), "-o", str(tmp_path / "user"),
                                      "--no-progress"])
    assert res_c.exit_code == 0, res_c.output
    user = json.loads((tmp_path / "user" / "compare.json").read_text())
    assert {m: (r["dev"], r["test"]) for m, r in user.items()} == {m: (r["dev"], r["test"]) for m, r in demo.items()}
    # the search config runs on its own too
    assert yaml.safe_load((out / "search.yaml").read_text())["experts"] == \
        yaml.safe_load((out / "compare.yaml").read_text())["experts"]
    # the exported best adapter, re-scored independently through PEFT, has the swarm's dev and test numbers
    cfg = yaml.safe_load((out / "compare.yaml").read_text())["utility"]
    for split in ("dev", "test"):
        got = _peft_accuracy(report["model_dir"], report["best_adapter"], out / "quiz" / f"{split}.jsonl",
                             cfg["template"])
        assert got == pytest.approx(demo["swarm"][split]), split
    # second run: the experts come from the cache and the table is the same
    res2 = CliRunner().invoke(main, args + ["--quiet"])
    assert res2.exit_code == 0, res2.output
    assert "experts: cached" not in res2.output and "| swarm |" in res2.output  # --quiet: only the table
    assert json.loads((out / "demo.json").read_text())["results"].keys() == demo.keys()
    again = json.loads((out / "demo.json").read_text())["results"]
    assert {m: (r["dev"], r["test"]) for m, r in again.items()} == {m: (r["dev"], r["test"]) for m, r in demo.items()}


def test_demo_rejects_a_bad_model_dir(tmp_path):
    res = CliRunner().invoke(main, ["demo", "--model", str(tmp_path), "--out", str(tmp_path / "o"),
                                    "--cache", str(tmp_path / "c")])
    assert res.exit_code != 0
    assert "not a transformers model directory" in res.output


def test_shipped_experts_match_the_default_settings():
    """The shipped pool must be the one the default settings would train, or the demo would silently
    train (or use experts built with other settings). Its folder name is the settings' key."""
    from dataclasses import asdict

    from swarmkern.demo.experts import SHIPPED, TASKS_VERSION, ExpertSpec

    folders = [p for p in SHIPPED.iterdir() if p.is_dir()]
    assert len(folders) == 1
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["spec"] == asdict(ExpertSpec()) and meta["tasks_version"] == TASKS_VERSION
    for name in ExpertSpec().names() + ["init"]:
        cfg = json.loads((folders[0] / name / "adapter_config.json").read_text())
        assert cfg["r"] == ExpertSpec().rank and cfg["lora_alpha"] == ExpertSpec().alpha
        assert not cfg["base_model_name_or_path"].startswith("/")  # no machine path in the package


def test_expert_cache_key_follows_the_base_weights(tmp_path):
    """A fine-tune with the same config never gets experts trained on other weights; the same weights
    stored in another dtype keep the key."""
    from safetensors.torch import load_file, save_file

    from swarmkern.demo.experts import ExpertSpec
    from swarmkern.tiny import build_tiny_causal_lm

    base = build_tiny_causal_lm(tmp_path / "base", seed=0)
    state = load_file(str(base / "model.safetensors"))
    state = {k: v.to(torch.bfloat16).to(torch.float32) for k, v in state.items()}  # values bf16 can hold
    save_file(state, str(base / "model.safetensors"))
    spec = ExpertSpec()
    key = spec.key(base, "{question}")
    assert spec.key(base, "{question}") == key  # from the digest kept beside the weights
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    for f in base.iterdir():
        if f.is_file() and not f.name.startswith("."):
            (tuned / f.name).write_bytes(f.read_bytes())
    name = next(iter(state))
    save_file({**state, name: state[name] + 1.0}, str(tuned / "model.safetensors"))
    assert spec.key(tuned, "{question}") != key
    as_bf16 = tmp_path / "bf16"
    as_bf16.mkdir()
    for f in base.iterdir():
        if f.is_file() and not f.name.startswith("."):
            (as_bf16 / f.name).write_bytes(f.read_bytes())
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(as_bf16 / "model.safetensors"))
    assert spec.key(as_bf16, "{question}") == key
