"""`swarmkern export`: merged models that transformers loads without PEFT and whose logits equal the PEFT
model's, complete adapters naming the real base model, and model cards the Hub's parser reads."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner

from swarmkern.cli import main
from swarmkern.testing import write_full_weight_experts, write_hub_snapshot

PROMPTS = ["What is 3+4?", "Question: What is 16+5?\nAnswer: 21", "hello"]


pytestmark = pytest.mark.usefixtures("offline_hub")


def _run(root, experts, model_dir, data, **utility):
    from swarmkern.config import load_run_config
    from swarmkern.runner import run_search

    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "experts": {"paths": [str(p) for p in experts]},
        "swarm": {"max_iters": 2, "seed": 3, "progress": False, "report_ensemble_k": [], "report_emergence": False,
                  "report_trajectory": False},
        "utility": {"type": "multiple_choice", "model": str(model_dir), "dev": str(data["mc_dev"]),
                    "test": str(data["mc_test"]), "device": "cpu", "dtype": "float32", **utility},
        "output": {"dir": str(root / "run")}}))
    run_search(load_run_config(cfg))
    return root / "run"


@pytest.fixture(scope="module")
def lora_run(setup, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("lora"), setup.expert_dirs, setup.model_dir, setup.data)


@pytest.fixture(scope="module")
def full_run(setup, tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    experts = write_full_weight_experts(setup.model_dir, root, k=2)
    return _run(root, experts, setup.model_dir, setup.data)


def _logits(model, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    with torch.no_grad():
        return [model(**tok(p, return_tensors="pt")).logits[0] for p in PROMPTS]


def _peft_logits(setup, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(setup.model_dir), dtype=torch.float32)
    return _logits(PeftModel.from_pretrained(base, str(adapter_dir)).eval(), setup.model_dir)


_LOAD_WITHOUT_PEFT = """
import sys, json, torch
sys.modules["peft"] = None  # importing peft now fails: the directory must not need it
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
with torch.no_grad():
    out = [model(**tok(p, return_tensors="pt")).logits[0].tolist() for p in json.loads(sys.argv[2])]
print(json.dumps(out))
"""


def _logits_without_peft(path):
    done = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_PEFT, str(path), json.dumps(PROMPTS)],
                          capture_output=True, text=True, timeout=300, env=None)
    assert done.returncode == 0, done.stderr[-2000:]
    return [torch.tensor(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


def _max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def test_merged_lora_loads_without_peft_with_the_same_logits(lora_run, setup, tmp_path):
    out = tmp_path / "merged"
    res = CliRunner().invoke(main, ["export", str(lora_run), "--merged", str(out), "--dtype", "float32",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "logits checked on" in res.output
    assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    want = _peft_logits(setup, lora_run / "best")
    assert _max_diff(_logits_without_peft(out), want) <= 1e-5
    # the merge changed the model: the base alone differs
    from transformers import AutoModelForCausalLM

    base = _logits(AutoModelForCausalLM.from_pretrained(str(setup.model_dir), dtype=torch.float32), setup.model_dir)
    assert _max_diff(base, want) > 1e-3


def test_shards_and_dtype(lora_run, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "bf16"
    res = CliRunner().invoke(main, ["export", str(lora_run), "--merged", str(out), "--dtype", "bfloat16",
                                    "--max-shard-size", "20kB", "--no-progress"])
    assert res.exit_code == 0, res.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    with safe_open(str(out / shards[0]), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    assert json.loads((out / "config.json").read_text()).get("dtype", json.loads((out / "config.json").read_text()).get("torch_dtype")) == "bfloat16"
    # an existing output is refused, then replaced with --overwrite
    again = CliRunner().invoke(main, ["export", str(lora_run), "--merged", str(out), "--no-progress"])
    assert again.exit_code != 0 and "not empty" in again.output


def test_full_weight_run_exports_a_merged_model(full_run, setup, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged_full"
    res = CliRunner().invoke(main, ["export", str(full_run), "--merged", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    ref = AutoModelForCausalLM.from_pretrained(str(setup.model_dir), dtype=torch.float32)
    ref.load_state_dict(load_file(str(full_run / "best.safetensors")), strict=False)
    assert _max_diff(_logits_without_peft(out), _logits(ref.eval(), setup.model_dir)) <= 1e-5
    res = CliRunner().invoke(main, ["export", str(full_run), "--adapter", str(tmp_path / "a")])
    assert res.exit_code != 0 and "no adapter" in res.output


def test_failed_check_leaves_nothing(lora_run, tmp_path, monkeypatch):
    import swarmkern.export.merged as merged

    monkeypatch.setattr(merged, "tolerance_for", lambda dtype: -1.0)
    out = tmp_path / "bad"
    res = CliRunner().invoke(main, ["export", str(lora_run), "--merged", str(out), "--no-progress"])
    assert res.exit_code != 0 and "merge check failed" in res.output
    assert not out.exists() and not list(tmp_path.glob(".bad*"))


def test_adapter_names_the_real_base_model(lora_run, setup, tmp_path):
    from peft import LoraConfig

    out = tmp_path / "adapter"
    res = CliRunner().invoke(main, ["export", str(lora_run), "--adapter", str(out)])
    assert res.exit_code == 0, res.output
    cfg = LoraConfig.from_pretrained(str(out))
    assert cfg.base_model_name_or_path == str(setup.model_dir)
    assert _max_diff(_peft_logits(setup, out), _peft_logits(setup, lora_run / "best")) == 0.0

    # the run's base as a Hub id: the config names the id and its revision
    write_hub_snapshot(tmp_path / "hf" / "hub", "tiny/llama", setup.model_dir, commit="a" * 40, refs=("main", "v1"))
    res = CliRunner().invoke(main, ["export", str(lora_run), "--adapter", str(tmp_path / "a2"), "--base-model",
                                    "tiny/llama@v1"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "a2" / "adapter_config.json").read_text())
    assert (saved["base_model_name_or_path"], saved["revision"]) == ("tiny/llama", "v1")
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(tmp_path / "a2" / "README.md"))
    assert card.data.base_model == "tiny/llama" and card.data.library_name == "peft"


def test_model_card_metadata_and_results(lora_run, tmp_path):
    from huggingface_hub import ModelCard

    from swarmkern.export import export_run

    out = tmp_path / "adapter"
    export_run(lora_run, adapter=out)
    card = ModelCard.load(str(out / "README.md"))
    assert card.data.library_name == "peft" and "swarmkern" in card.data.tags and "lora" in card.data.tags
    assert card.data.base_model is None  # a local base model is no Hub id: named in the text instead
    summary = json.loads((lora_run / "summary.json").read_text())
    assert "## Experts it came from" in card.text and "expert_0" in card.text
    assert f"{summary['best_dev_utility']:.4f}" in card.text and "## How it was made" in card.text
    vs = summary["vs_best_expert"]  # the run's own paired comparisons appear as the summary has them
    rows = {"dev": "| dev (searched on) |", "select": "| held-out (select) |", "test": "| test |"}
    shown = [split for split in rows if "difference" in vs.get(split, {})]
    assert shown and vs["reference"] in card.text
    for split in shown:
        line = next(x for x in card.text.splitlines() if x.startswith(rows[split]))
        assert f"{vs[split]['difference']:+.4f}" in line and vs[split]["verdict"] in line
    assert "No paired interval" not in card.text


def _comparison(cand, ref, lo, hi, p, verdict):
    return {"candidate": cand, "reference": ref, "difference": cand - ref, "ci_low": lo, "ci_high": hi,
            "ci_level": 0.95, "resamples": 2000, "p_value": p, "test": "mcnemar_exact", "n": 500, "verdict": verdict,
            "text": f"{100 * (cand - ref):+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}], p = {p}"}


def test_model_card_renders_the_comparison_blocks_and_compare_table(tmp_path, setup):
    from huggingface_hub import ModelCard

    from swarmkern.export.card import model_card
    from swarmkern.export.rundir import RunInfo

    summary = {
        "best_dev_utility": 0.7, "iterations": 5, "stop_reason": "patience", "evaluations": 40,
        "command": "swarmkern sweep sweep.yaml --seed 2",
        "hub_ids": [{"id": "org/expert-a", "revision": "v2", "commit": "c" * 40, "repo_type": "model",
                     "role": "experts.paths[0]", "source": "cache"}],
        "vs_best_expert": {"reference": "expert_3",
                           "dev": _comparison(0.70, 0.65, 0.01, 0.09, 0.01, "gain"),
                           "select": {"unavailable": "utility 'python' gives no per-example scores"},
                           "test": _comparison(0.674, 0.651, -0.014, 0.058, 0.23, "no detectable difference")},
        "export": {"selected_on": "select", "chosen": "global_best", "guard_fired": False,
                   "candidates": [{"name": "global_best", "select": 0.61, "test": 0.66}]},
        "verdict": "test: no detectable difference from expert_3: +2.3 [-1.4, +5.8], p = 0.23"}
    config = {"experts": {"paths": ["org/expert-a@v2", "/data/expert_b"]},
              "swarm": {"n_particles": 8}, "sweep": {"select": "split"},
              "utility": {"type": "multiple_choice", "model": "org/base",
                          "dev": {"dataset": "cais/mmlu", "config": "anatomy", "split": "validation"},
                          "test": {"dataset": "cais/mmlu@main", "config": "anatomy", "split": "test"}}}
    run = RunInfo(run_dir=tmp_path, kind="peft", best=tmp_path / "best", summary=summary, base_model="org/base@r1",
                  config=config, compare_table="| method | dev | test |\n| --- | ---: | ---: |\n| swarm | 0.7 | 0.67 |")
    card = ModelCard(model_card(run, "merged", check={"dtype": "bfloat16", "prompts": 5, "max_abs_diff": 0.01,
                                                     "max_rel_diff": 0.001, "tolerance": 0.05}))
    data = card.data.to_dict()
    assert data["base_model"] == "org/base" and data["library_name"] == "transformers"
    assert data["datasets"] == ["cais/mmlu"] and data["pipeline_tag"] == "text-generation"
    text = card.text
    assert "expert_3" in text and "[+0.0100, +0.0900] (95%)" in text and "p = 0.23" in text
    assert "no per-example scores" in text and summary["verdict"] in text
    assert "| swarm | 0.7 | 0.67 |" in text and "swarmkern sweep sweep.yaml --seed 2" in text
    assert "org/expert-a" in text and "c" * 40 in text and "local: `/data/expert_b`" in text
    assert "select: split" in text and "## Merge check" in text
