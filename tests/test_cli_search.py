"""`swarmkern search CONFIG.yaml` / `swarmkern resume DIR` with a Python utility, and config errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from swarmkern.cli import main
from swarmkern.config import ConfigError, load_run_config


def _experts(root: Path, k: int = 4) -> None:
    g = torch.Generator().manual_seed(0)
    for i in range(k):
        save_file({"w": torch.randn(8, 8, generator=g) + 1, "b": torch.randn(16, generator=g)},
                  str(root / f"expert_{i}.safetensors"))


def _config(root: Path, **swarm) -> Path:
    data = {
        "experts": {"glob": "expert_*.safetensors"},
        "swarm": {"n_particles": 8, "max_iters": 6, "seed": 1, **swarm},
        "utility": {"type": "python", "function": "swarmkern.objectives:neg_sphere", "test_kwargs": {"shift": 0.5}},
        "output": {"dir": "run"},
    }
    path = root / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def workdir(tmp_path):
    _experts(tmp_path)
    return tmp_path


def test_search_writes_every_output(workdir):
    cfg = _config(workdir)
    res = CliRunner().invoke(main, ["search", str(cfg), "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    out = workdir / "run"  # relative to the config file
    for name in ("summary.json", "history.jsonl", "utilities.png", "best.safetensors", "config.yaml", "experts.json"):
        assert (out / name).is_file(), name
    assert summary["iterations"] == 6 and len(summary["initial_dev_utilities"]) == 8
    assert summary["best_dev_utility"] >= max(summary["initial_dev_utilities"])
    assert "test_utility" in summary and len(summary["initial_test_utilities"]) == 4
    assert summary["best_particle_origin"]["kind"] in ("expert", "child")
    best = load_file(str(out / "best.safetensors"))
    flat = torch.cat([best["w"].reshape(-1), best["b"]])
    assert abs(-(flat.double() ** 2).sum().item() - summary["best_dev_utility"]) < 1e-6
    lines = (out / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == list(range(7))


def test_options_and_set_override_fields(workdir):
    cfg = _config(workdir)
    res = CliRunner().invoke(main, ["search", str(cfg), "--no-progress", "--max-iters", "2", "--seed", "9",
                                    "--set", "swarm.phi_w=0.05", "--set", "swarm.r_range=[0.2, 0.9]",
                                    "-o", str(workdir / "other")])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((workdir / "other" / "config.yaml").read_text())
    assert saved["swarm"]["max_iters"] == 2 and saved["swarm"]["seed"] == 9
    assert saved["swarm"]["phi_w"] == 0.05 and saved["swarm"]["r_range"] == [0.2, 0.9]
    assert "after 2 iterations" in res.output


def test_rerun_refuses_then_overwrite_and_resume(workdir):
    cfg = _config(workdir)
    runner = CliRunner()
    assert runner.invoke(main, ["search", str(cfg), "--no-progress"]).exit_code == 0
    again = runner.invoke(main, ["search", str(cfg), "--no-progress"])
    assert again.exit_code != 0 and "already holds a run" in again.output
    assert runner.invoke(main, ["search", str(cfg), "--no-progress", "--overwrite"]).exit_code == 0
    first = json.loads((workdir / "run" / "summary.json").read_text())
    res = runner.invoke(main, ["resume", str(workdir / "run"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["best_dev_utility"] == first["best_dev_utility"]


@pytest.mark.parametrize("args, message", [
    (["--set", "swarm.phi_q=1"], "swarm.phi_q: unknown field"),
    (["--set", "swarm.phi_v=abc"], "swarm.phi_v: Input should be a valid number"),
    (["--set", "swarm.velocity_init=fast"], "swarm.velocity_init:"),
    (["--set", "utility.funtion=x"], "utility.funtion"),
    (["--set", "utility.type=nope"], "utility.type: unknown utility 'nope'"),
    (["--set", "outputs.dir=x"], "outputs: unknown field"),
    (["--set", "swarm.max_iters"], "expected key=value"),
    (["--set", "swarm.r_range=[0.9, 0.1]"], "r_range"),
])
def test_config_errors_are_one_line_and_name_the_field(workdir, args, message):
    cfg = _config(workdir)
    res = CliRunner().invoke(main, ["search", str(cfg), "--no-progress", *args])
    assert res.exit_code != 0
    assert message in res.output and res.output.strip().count("\n") == 0, res.output


def test_bad_experts_and_missing_files(workdir):
    save_file({"w": torch.zeros(8, 9), "b": torch.zeros(16)}, str(workdir / "expert_9.safetensors"))
    res = CliRunner().invoke(main, ["search", str(_config(workdir)), "--no-progress"])
    assert res.exit_code != 0 and "expert_9.safetensors: tensor 'w' has shape [8, 9]" in res.output
    res = CliRunner().invoke(main, ["search", str(workdir / "none.yaml")])
    assert res.exit_code != 0
    with pytest.raises(ConfigError, match="experts: missing required field"):
        p = workdir / "empty.yaml"
        p.write_text("utility: {type: python, function: 'swarmkern.objectives:neg_sphere'}\noutput: {dir: x}\n")
        load_run_config(p)
    res = CliRunner().invoke(main, ["resume", str(workdir)])
    assert res.exit_code != 0 and "no config.yaml" in res.output


def test_the_documented_example_config_is_valid(workdir):
    """docs/CONFIG.md's complete example validates (with the experts and output swapped for this test)."""
    import re

    doc = (Path(__file__).parent.parent / "docs" / "CONFIG.md").read_text()
    data = yaml.safe_load(re.search(r"```yaml\n(.*?)```", doc, re.S).group(1))
    documented = set(data["swarm"])
    from swarmkern.swarm import SwarmConfig

    assert documented == set(SwarmConfig.model_fields)  # every field is documented, none invented
    data["experts"] = {"glob": "expert_*.safetensors"}
    data["swarm"].update(max_iters=2, n_particles=6, progress=False)
    path = workdir / "doc.yaml"
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(main, ["search", str(path)])
    assert res.exit_code == 0, res.output


def test_search_never_imports_transformers(workdir):
    import subprocess
    import sys

    code = ("import sys, torch; from swarmkern import Swarm, SwarmConfig, load_experts; "
            "from swarmkern.config import load_run_config; import swarmkern.commands.search; "
            "Swarm(SwarmConfig(max_iters=2, progress=False), torch.randn(3, 5), lambda r: -r.pow(2).sum(1)).run(); "
            "print('transformers' in sys.modules, 'peft' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_ctrl_c_says_how_to_resume(workdir, monkeypatch):
    (workdir / "interrupting.py").write_text(
        "calls = []\n"
        "def score(particles):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 3:\n"
        "        raise KeyboardInterrupt\n"
        "    return -(particles.double() ** 2).sum(1)\n")
    monkeypatch.syspath_prepend(str(workdir))
    cfg = _config(workdir)
    runner = CliRunner()
    res = runner.invoke(main, ["search", str(cfg), "--no-progress", "--set", "utility.function=interrupting:score",
                               "--set", "utility.test_kwargs=null"])
    assert res.exit_code == 130 and "continue with: swarmkern resume" in res.output
    resumed = runner.invoke(main, ["resume", str(workdir / "run")])
    assert resumed.exit_code == 0, resumed.output
    assert "after 6 iterations" in resumed.output
