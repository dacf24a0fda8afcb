"""The export chosen on a held-out select split (search and sweep), the never-worse guard, the intervals in
summary.json / sweep.json / sweep.md, the verdict lines, and the split read back on resume."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from swarmkern.cli import main
from swarmkern.config import ConfigError, validate_run_config
from swarmkern.swarm.selection import guard
from swarmkern.testing import write_tiny_datasets

BLOCK = {"candidate", "reference", "difference", "ci_low", "ci_high", "ci_level", "resamples", "p_value", "test",
         "n", "verdict", "text"}


@pytest.fixture(scope="module")
def data(setup, tmp_path_factory):
    """40 dev / 30 test arithmetic questions for the tiny setup's model."""
    return write_tiny_datasets(tmp_path_factory.mktemp("data"), n_dev=40, n_test=30, seed=5)


def _config(setup, data, out: Path, **extra) -> dict:
    return {"experts": {"paths": [str(p) for p in setup.expert_dirs]},
            "swarm": {"n_particles": 6, "max_iters": 3, "patience": 3, "seed": 1, "progress": False},
            "utility": {"type": "multiple_choice", "model": str(setup.model_dir), "dev": str(data["mc_dev"]),
                        "test": str(data["mc_test"])},
            "output": {"dir": str(out)}, **extra}


def _search(cfg: dict):
    from swarmkern.runner import run_search

    return run_search(validate_run_config(cfg))


def _weights(path) -> torch.Tensor:
    from swarmkern.flat import load_experts

    return load_experts([path]).weights[0]


def test_guard_exports_the_expert_unless_a_candidate_beats_it():
    order = ["global_best", "pbest_soup", "expert_1"]
    assert guard({"global_best": 0.6, "pbest_soup": 0.7, "expert_1": 0.65}, order, "expert_1", True) == \
        ("pbest_soup", False, None)
    chosen, fired, msg = guard({"global_best": 0.6, "pbest_soup": 0.65, "expert_1": 0.65}, order, "expert_1", True)
    assert (chosen, fired) == ("expert_1", True)
    assert msg == "no candidate beat expert_1 on the held-out split: exporting expert_1"
    # off: the best candidate even when it is worse; ties prefer the earlier candidate
    assert guard({"global_best": 0.6, "pbest_soup": 0.6, "expert_1": 0.7}, ["global_best", "pbest_soup"],
                 "expert_1", False)[0] == "global_best"
    # the expert best outright: exported (and said) with the guard off too, but the guard did not fire
    assert guard({"global_best": 0.6, "expert_1": 0.7}, ["global_best", "expert_1"], "expert_1", False) == \
        ("expert_1", False, "no candidate beat expert_1 on the held-out split: exporting expert_1")


def test_search_chooses_its_export_on_the_held_out_split(setup, data, tmp_path):
    res = _search(_config(setup, data, tmp_path / "run"))
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    # the split: seeded, written out, disjoint, the whole dev file
    split = json.loads((out / "select" / "split.json").read_text())
    assert len(split["select_ids"]) == 12 and len(split["search_ids"]) == 28
    assert sorted(split["select_ids"] + split["search_ids"], key=int) == [str(i) for i in range(1, 41)]
    assert split["dev_sha256"]["utility.dev"]
    export = summary["export"]
    assert export["selected_on"] == "select" and export["split"] == {"dir": "select", "search_examples": 28,
                                                                    "select_examples": 12}
    names = [c["name"] for c in export["candidates"]]
    assert names[0] == "global_best" and "pbest_soup" in names and names[-1] == summary["vs_best_expert"]["reference"]
    sel = {c["name"]: c["select"] for c in export["candidates"]}
    expert = names[-1]
    assert export["guard_fired"] == (export["chosen"] == expert)
    if export["guard_fired"]:
        assert max(sel.values()) <= sel[expert]
        assert export["message"] == f"no candidate beat {expert} on the held-out split: exporting {expert}"
    else:
        assert sel[export["chosen"]] == max(sel.values()) and sel[export["chosen"]] > sel[expert]
    # the exported file is the chosen candidate; test is the chosen one's
    chosen = next(c for c in export["candidates"] if c["name"] == export["chosen"])
    assert summary["test_utility"] == chosen["test"]
    if export["chosen"] == expert:
        i = [Path(p).name for p in setup.expert_dirs].index(expert)
        assert torch.equal(_weights(summary["best_path"]), _weights(setup.expert_dirs[i]))
    # intervals on dev, select and test, on the number of examples of each
    vs = summary["vs_best_expert"]
    assert {k: vs[k]["n"] for k in ("dev", "select", "test")} == {"dev": 28, "select": 12, "test": 30}
    for split_name in ("dev", "select", "test"):
        assert BLOCK <= set(vs[split_name]) and vs[split_name]["test"] == "mcnemar_exact"
        assert vs[split_name]["ci_low"] <= vs[split_name]["difference"] <= vs[split_name]["ci_high"]
    assert summary["verdict"].startswith("test: ") and expert in summary["verdict"]
    assert res.summary["verdict"] == summary["verdict"]


def test_select_dev_keeps_the_papers_rule(setup, data, tmp_path):
    _search(_config(setup, data, tmp_path / "run", select="dev"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert not (tmp_path / "run" / "select").exists()
    assert summary["export"]["selected_on"] == "dev" and "select" not in summary["vs_best_expert"]
    assert summary["vs_best_expert"]["dev"]["n"] == 40
    if not summary["export"]["guard_fired"]:
        assert summary["export"]["chosen"] == "global_best"


def test_guard_off_exports_the_best_candidate(setup, data, tmp_path):
    _search(_config(setup, data, tmp_path / "run", select={"mode": "split", "guard": False, "top_k": 4}))
    export = json.loads((tmp_path / "run" / "summary.json").read_text())["export"]
    assert not export["guard_fired"] and export["guard"] is False
    order = [c["name"] for c in export["candidates"]]
    best = max(export["candidates"], key=lambda c: (c["select"], -order.index(c["name"])))
    assert export["chosen"] == best["name"]


def test_a_used_output_dir_is_refused_before_carving_and_resume_checks_the_dev_file(setup, data, tmp_path):
    from swarmkern.runner import resume_search, save_run_config

    dev = tmp_path / "dev.jsonl"
    dev.write_text(Path(data["mc_dev"]).read_text())
    cfg = _config(setup, data, tmp_path / "run")
    cfg["utility"]["dev"] = str(dev)
    _search(cfg)
    split = tmp_path / "run" / "select" / "split.json"
    before = split.read_bytes()
    dev.write_text("".join(reversed(dev.read_text().splitlines(keepends=True))))  # same examples, other order
    with pytest.raises(FileExistsError, match="already holds a run"):
        _search(cfg)
    assert split.read_bytes() == before
    save_run_config(validate_run_config(cfg), tmp_path / "run")
    with pytest.raises(ValueError, match=r"dev.jsonl \(utility.dev\): changed since the run carved") as err:
        resume_search(tmp_path / "run")
    assert "\n" not in str(err.value)
    dev.write_text("".join(reversed(dev.read_text().splitlines(keepends=True))))  # back as it was
    again = resume_search(tmp_path / "run")
    assert split.read_bytes() == before and again.summary["export"]["selected_on"] == "select"


def test_a_python_utility_is_chosen_on_dev_and_has_no_interval(tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    for i in range(3):
        save_file({"w": torch.randn(4, 4, generator=g)}, str(tmp_path / f"e{i}.safetensors"))
    cfg = {"experts": {"glob": str(tmp_path / "e*.safetensors")},
           "swarm": {"n_particles": 4, "max_iters": 2, "seed": 0, "progress": False},
           "utility": {"type": "python", "function": "swarmkern.objectives:neg_sphere", "test_kwargs": {"shift": 0.5}},
           "output": {"dir": str(tmp_path / "run")}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["search", str(path), "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["export"]["selected_on"] == "dev" and "reads no dev JSONL file" in summary["export"]["note"]
    assert summary["vs_best_expert"]["test"] == {"unavailable": "utility 'python[test]' gives no per-example scores"}
    assert res.output.strip().splitlines()[-1] == summary["verdict"]
    assert "no interval against" in summary["verdict"]
    with pytest.raises(ConfigError, match="select: utility: a select split is carved from a dev JSONL file"):
        _search({**cfg, "select": "split", "output": {"dir": str(tmp_path / "run2")}})


def test_sweep_reports_every_configuration_against_the_best_expert(setup, data, tmp_path):
    cfg = _config(setup, data, tmp_path / "sweep", sweep={"n": 3, "select": "split"})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["sweep", str(path), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "sweep"
    sweep = json.loads((out / "sweep.json").read_text())
    ref = sweep["vs_best_expert"]["reference"]
    for e in sweep["configurations"]:
        vs = e["vs_best_expert"]
        assert vs["reference"] == ref and BLOCK <= set(vs["select"]) and BLOCK <= set(vs["test"])
        assert vs["select"]["candidate"] == pytest.approx(e["select"])
        assert vs["test"]["candidate"] == pytest.approx(e["test"])
    export = sweep["export"]
    w = sweep["configurations"][sweep["winner"]]
    if export["guard_fired"]:
        assert w["select"] <= export["best_expert"]["select"] and export["chosen"] == ref
        assert export["message"] in res.output and "Guard: " in (out / "sweep.md").read_text()
        i = [Path(p).name for p in setup.expert_dirs].index(ref)
        assert torch.equal(_weights(out / "best"), _weights(setup.expert_dirs[i]))
    else:
        assert w["select"] > export["best_expert"]["select"] and export["chosen"] == f"configuration {sweep['winner']}"
    table = (out / "sweep.md").read_text()
    assert f"select vs {ref}" in table and f"test vs {ref}" in table and "p = " in table
    assert res.output.strip().splitlines()[-2] == sweep["verdict"]
    winner_summary = json.loads((out / "summary.json").read_text())
    assert winner_summary["export"] == export and winner_summary["verdict"] == sweep["verdict"]


def test_a_run_started_before_select_splits_resumes_on_dev(setup, data, tmp_path):
    """An output dir without select/split.json (an older run searched the whole dev set) resumes with
    the export chosen on dev, and says why."""
    import shutil

    from swarmkern.runner import resume_search

    _search(_config(setup, data, tmp_path / "run", select="dev"))
    shutil.rmtree(tmp_path / "run" / "select", ignore_errors=True)
    cfg = (tmp_path / "run" / "config.yaml")
    saved = yaml.safe_load(cfg.read_text())
    saved.pop("select")  # as an older version wrote it
    cfg.write_text(yaml.safe_dump(saved))
    res = resume_search(tmp_path / "run")
    assert res.summary["export"]["selected_on"] == "dev" and "split.json is missing" in res.summary["export"]["note"]
