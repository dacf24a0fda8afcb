"""`swarmkern compare` end to end on a tiny model, and its config handling."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

pytest.importorskip("peft")
pytest.importorskip("tokenizers")

from click.testing import CliRunner  # noqa: E402

from swarmkern.cli import main  # noqa: E402
from swarmkern.compare import format_table, load_compare_config  # noqa: E402
from swarmkern.testing import cached_tiny_setup  # noqa: E402

FIELDS = {"dev", "test", "evaluations", "seconds"}


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _config(tmp_path, **compare):
    setup = cached_tiny_setup(reward=False, judge=False)
    d = setup.data
    return {
        "experts": {"paths": [str(p) for p in setup.expert_dirs]},
        "swarm": {"n_particles": 4, "max_iters": 2, "patience": 2, "seed": 3, "progress": False},
        "utility": {"type": "multiple_choice", "dev": str(d["mc_dev"]), "test": str(d["mc_test"]), "micro_batch": 64},
        "output": {"dir": str(tmp_path / "run")},
        "compare": compare,
    }


def _write(tmp_path, config):
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_compare_end_to_end_through_the_cli(tmp_path):
    methods = ["best_single", "uniform_soup", {"type": "task_arithmetic", "scaling": [0.5, 1.0]},
               {"type": "ties", "density": 0.5}, "dare_linear", {"type": "dare_ties", "space": "delta"},
               "breadcrumbs", "slerp", "multislerp", "greedy_soup",
               {"type": "lorahub", "optimizer": "NgIohTuned", "batch": 4}, "evolutionary",
               {"type": "ensemble", "k": 2}]
    # the searching baselines need their optional libraries (scripts/setup.sh installs them)
    searching = [m for m, lib in (("lorahub", "nevergrad"), ("evolutionary", "cma")) if _has(lib)]
    methods = [m for m in methods if (m if isinstance(m, str) else m["type"]) not in {"lorahub", "evolutionary"}
               or (m if isinstance(m, str) else m["type"]) in searching]
    cfg = _config(tmp_path, methods=methods, batch_size=4, save_merged=True, save_delta=True)
    result = CliRunner().invoke(main, ["compare", str(_write(tmp_path, cfg))])
    assert result.exit_code == 0, result.output + repr(result.exception)
    out = tmp_path / "run"
    data = json.loads((out / "compare.json").read_text())
    names = ["swarm", "best_single", "uniform_soup", "task_arithmetic", "ties", "dare_linear", "dare_ties",
             "breadcrumbs", "slerp", "multislerp", "greedy_soup", *searching, "ensemble"]
    assert list(data) == names
    for name, r in data.items():
        assert FIELDS <= set(r) and "error" not in r, (name, r)
        assert 0.0 <= r["dev"] <= 1.0 and 0.0 <= r["test"] <= 1.0, (name, r)
    swarm_evals = data["swarm"]["evaluations"]
    assert swarm_evals >= 4
    # equal budgets for the searching methods, the documented counts for the others
    for name in searching:
        assert data[name]["evaluations"] == swarm_evals
    assert data["best_single"]["evaluations"] == 3 and data["uniform_soup"]["evaluations"] == 1
    assert data["task_arithmetic"]["evaluations"] == 2 and data["ensemble"]["evaluations"] == 3 + 2
    assert data["greedy_soup"]["evaluations"] == 3 + 2
    assert 0 < data["dare_ties"]["info"]["delta_energy_kept"] <= 1
    # the best single expert's dev is the max of the experts' own utilities
    assert data["best_single"]["dev"] == max(data["best_single"]["info"]["expert_dev"].values())
    # every method against the best expert (chosen on dev) with its paired interval; the ensemble says why not
    ref = max(data["best_single"]["info"]["expert_dev"], key=data["best_single"]["info"]["expert_dev"].get)
    for name, r in data.items():
        vs = r["vs_best_expert"]
        assert vs["reference"] == ref and set(vs) == {"reference", "dev", "test"}, name
        if name == "ensemble":
            assert "unavailable" in vs["test"]
        else:
            assert vs["test"]["ci_low"] <= vs["test"]["difference"] <= vs["test"]["ci_high"], name
            assert vs["test"]["difference"] == pytest.approx(r["test"] - vs["test"]["reference"]), name
    assert data["best_single"]["vs_best_expert"]["test"]["difference"] == 0.0
    assert data["swarm"]["info"]["selected_on"] == "select"  # the tiny dev file is split, as search does
    assert "swarm: test: " in result.output  # the verdict line
    # table printed and written, plot written, merged experts exported (and re-scoring one gives its dev)
    table = (out / "compare.md").read_text()
    assert f"vs best expert ({ref}, test)" in table and "p = " in table
    assert "| swarm |" in table and "| ties |" in table and "| swarm |" in result.output
    assert (out / "compare.png").stat().st_size > 1000
    from swarmkern.flat import load_experts
    from swarmkern.utilities import build_utility
    pool = load_experts([out / "merged" / "ties"])
    assert float(build_utility(cfg["utility"], pool).dev(pool.weights)[0]) == pytest.approx(data["ties"]["dev"])
    # space: delta wrote the full merged ΔW; its best rank-r approximation is what was exported
    from safetensors.torch import load_file
    from swarmkern.evaluate.lora import lora_scale
    from swarmkern.merge import delta_weights, segments_of
    full = load_file(str(out / "deltas" / "dare_ties.safetensors"))
    dt_pool = load_experts([out / "merged" / "dare_ties"])
    scale = lora_scale(dt_pool.adapter_config)
    low = delta_weights(dt_pool.weights[0], segments_of(dt_pool.layout), scale)
    assert set(full) == set(low) and len(full) > 0
    r = dt_pool.adapter_config["r"]
    for name, dw in full.items():
        U, S, Vh = torch.linalg.svd(dw, full_matrices=False)
        assert torch.allclose(low[name], (U[:, :r] * S[:r]) @ Vh[:r], atol=1e-4, rtol=1e-3)
    assert sorted(p.name for p in (out / "deltas").iterdir()) == ["dare_ties.safetensors"]
    # the swarm's exported best scores the swarm's reported test utility
    swarm_pool = load_experts([out / "merged" / "swarm"])
    assert float(build_utility(cfg["utility"], swarm_pool).test(swarm_pool.weights)[0]) == \
        pytest.approx(data["swarm"]["test"])
    # a second run refuses to overwrite unless asked
    again = CliRunner().invoke(main, ["compare", str(tmp_path / "compare.yaml"), "--methods", "uniform_soup",
                                      "--no-swarm"])
    assert again.exit_code != 0 and "compare.json" in again.output


def test_compare_without_swarm_uses_the_configured_budget(tmp_path):
    pytest.importorskip("cma")
    cfg = _config(tmp_path, methods=["uniform_soup", {"type": "evolutionary", "label": "cma"}], swarm=False,
                  budget=5, plot=False)
    result = CliRunner().invoke(main, ["compare", str(_write(tmp_path, cfg)), "--set", "compare.budget=6"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    data = json.loads((tmp_path / "run" / "compare.json").read_text())
    assert list(data) == ["uniform_soup", "cma"] and data["cma"]["evaluations"] == 6
    assert not (tmp_path / "run" / "compare.png").exists()


def test_a_failing_method_is_reported_not_fatal(tmp_path):
    cfg = _config(tmp_path, methods=["uniform_soup", {"type": "ensemble", "dev": str(tmp_path / "missing.jsonl")}],
                  swarm=False)
    cfg["utility"] = {"type": "python", "function": "torch:sum", "kwargs": {"dim": 1}}
    result = CliRunner().invoke(main, ["compare", str(_write(tmp_path, cfg))])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "run" / "compare.json").read_text())
    assert data["uniform_soup"]["dev"] is not None and "missing.jsonl" in data["ensemble"]["error"]


@pytest.mark.parametrize("compare,message", [
    ({"methods": ["nope"]}, "compare.methods.0.type: unknown method 'nope'"),
    ({"methods": [{"type": "ties", "density": "x"}]}, "compare.methods.0.density"),
    ({"methods": ["ties", "ties"]}, "must be unique"),
    ({"budget": 0}, "compare.budget"),
    ({"colour": "red"}, "compare.colour: unknown field"),
])
def test_bad_compare_sections_are_one_line_errors(tmp_path, compare, message):
    path = _write(tmp_path, _config(tmp_path, **compare))
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_compare_config(path)
    result = CliRunner().invoke(main, ["compare", str(path)])
    assert result.exit_code != 0 and message.split(":")[0] in result.output


def test_format_table_marks_missing_values():
    table = format_table({"a": {"dev": 0.5, "test": None, "evaluations": 3, "seconds": 1.0, "info": {"scaling": 0.5}},
                          "b": {"dev": None, "test": None, "evaluations": 0, "seconds": 0.0, "error": "boom"}})
    assert "| a | 0.5000 | — | — | 3 | 1.0 | scaling=0.5 |" in table and "| b | — | — | — | 0 | 0.0 | boom |" in table


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_scale_is_peft_scaling_per_module(rslora):
    """The one source of a module's LoRA scale (used by the evaluator and by save_delta) equals PEFT's
    own `scaling` of every adapted layer, rank_pattern / alpha_pattern / rsLoRA included."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from swarmkern.evaluate.lora import lora_scale

    base = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2))
    cfg = LoraConfig(r=4, lora_alpha=6, use_rslora=rslora, target_modules=["q_proj", "v_proj", "down_proj"],
                     rank_pattern={"down_proj": 2, "layers.1.self_attn.q_proj": 3}, alpha_pattern={"v_proj": 5})
    model = get_peft_model(base, cfg)
    adapter_config = json.loads(json.dumps(cfg.to_dict(), default=str))
    seen = {}
    for name, module in model.named_modules():
        if isinstance(getattr(module, "scaling", None), dict) and "default" in module.scaling:
            seen[name] = module.scaling["default"]
            assert lora_scale(adapter_config, name) == pytest.approx(module.scaling["default"], rel=1e-12), name
    assert len(set(seen.values())) >= 3  # the patterns really gave different scales
    assert lora_scale(adapter_config) == pytest.approx(6 / (2.0 if rslora else 4.0))
