"""Sweeps in lockstep: the configurations, the shared utility calls (each swarm follows its lone
trajectory bit for bit), the winner on dev or on a select split, outputs, resume, the CLI, torchrun."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from swarmkern.cli import main
from swarmkern.config import ConfigError, load_run_config
from swarmkern.objectives import neg_rastrigin, neg_sphere
from swarmkern.swarm import Swarm, SwarmConfig
from swarmkern.swarm.sweep import AUTHORS_RANGES, Sweep, SweepSpace, distinct_row_runs, varied_fields
from swarmkern.utilities.holdout import SelectSplitError, carve_select

K, D = 4, 64


def _points() -> torch.Tensor:
    return torch.randn(K, D, generator=torch.Generator().manual_seed(3)) * 1.5


BASE = SwarmConfig(n_particles=7, max_iters=6, patience=3, drop_n=0.2, progress=False, seed=2)


def _strip(history):
    return [{k: v for k, v in h.items() if k != "timings"} for h in history]


# -- the configurations ----------------------------------------------------------------------------
def test_grid_is_every_combination_in_order():
    space = SweepSpace(mode="grid", grid={"phi_v": [0.1, 0.2], "step": [0.5, 0.8, 1.0]})
    configs = space.expand(BASE)
    assert [(c.phi_v, c.step) for c in configs] == [(0.1, 0.5), (0.1, 0.8), (0.1, 1.0), (0.2, 0.5), (0.2, 0.8),
                                                    (0.2, 1.0)]
    assert all(c.seed == BASE.seed and c.drop_n == BASE.drop_n for c in configs)
    assert varied_fields(configs) == ["phi_v", "step"]


def test_random_draws_are_seeded_and_inside_the_authors_ranges():
    a = SweepSpace(n=12, seed=5).expand(BASE)
    assert len(a) == 12 and SweepSpace(n=12, seed=5).expand(BASE) == a
    assert SweepSpace(n=12, seed=6).expand(BASE) != a
    for name, (lo, hi) in AUTHORS_RANGES.items():
        values = [getattr(c, name) for c in a]
        assert all(lo <= v <= hi for v in values) and len(set(values)) == 12, name
    # the first draws do not depend on how many are asked for
    assert SweepSpace(n=3, seed=5).expand(BASE) == a[:3]


def test_random_int_ranges_and_choices():
    space = SweepSpace(n=40, seed=1, ranges={"patience": (2, 4), "phi_g": (0.5, 0.5)},
                       choices={"randomness": ["particle", "element"], "include_base": [False, True]})
    configs = space.expand(BASE)
    assert {c.patience for c in configs} == {2, 3, 4}
    assert {c.randomness for c in configs} == {"particle", "element"} and {c.include_base for c in configs} == {False, True}
    assert all(c.phi_g == 0.5 for c in configs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(ranges={"phi_q": (0, 1)}), "ranges.phi_q: not a swarm field"),
    (dict(ranges={"randomness": (0, 1)}), "not a number field"),
    (dict(ranges={"phi_v": (0.5, 0.1)}), "need lo <= hi"),
    (dict(mode="grid"), "mode grid needs"),
    (dict(grid={"phi_v": [0.1]}), "only used with mode: grid"),
    (dict(mode="grid", grid={"phi_v": []}), "give at least one value"),
])
def test_bad_spaces_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SweepSpace(**kwargs)


def test_an_invalid_drawn_configuration_names_itself():
    with pytest.raises(ValueError, match=r"sweep: configuration 1 \{'step': 0.05\}.*min_step"):
        SweepSpace(mode="grid", grid={"step": [0.5, 0.05]}).expand(BASE)


# -- lockstep ---------------------------------------------------------------------------------------
def _counting(fn, log):
    def utility(p):
        log.append(int(p.shape[0]))
        return fn(p)
    return utility


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [1, 7, 300])
def test_repeated_rows_are_found_exactly_and_distinct_runs_stay_views(dtype, d):
    g = torch.Generator().manual_seed(d)
    a = torch.randn(6, d, generator=g).to(dtype)
    b = torch.randn(5, d, generator=g).to(dtype)
    b[1], b[3], a[4] = a[0], a[2], a[1]           # twins across pieces and inside one
    near = a[3].clone()
    near[-1] = near[-1] + 1                       # differs only where the fingerprint may not look
    b[4] = near
    nan = torch.full((d,), float("nan"), dtype=dtype)
    c = torch.stack([nan, nan])                   # NaN rows are never merged
    pieces = [a, b, c]
    runs, source = distinct_row_runs(pieces)
    rows = torch.cat(pieces)
    distinct = torch.cat(runs)
    assert len(source) == rows.shape[0]
    for i, j in enumerate(source):
        assert torch.equal(rows[i], distinct[j]) or torch.isnan(rows[i]).all()
    assert distinct.shape[0] == rows.shape[0] - 3
    for r in runs:  # every run is a view of one piece's buffer, no copy
        assert any(r.untyped_storage().data_ptr() == p.untyped_storage().data_ptr() for p in pieces)
    assert distinct_row_runs([]) == ([], [])


SPACES = {
    "authors": SweepSpace(n=4, seed=0),
    "sizes": SweepSpace(mode="grid", grid={"n_particles": [5, 9], "include_base": [False, True],
                                           "drop_k": [0.0, 0.4], "randomness": ["element"]}),
}


@pytest.mark.parametrize("space, batch_size", [("authors", None), ("authors", 9), ("sizes", None), ("sizes", 4)])
def test_lockstep_swarms_follow_their_lone_trajectories_in_shared_calls(space, batch_size):
    """Swarms of different sizes, with skipped iterations, stop at different times: each one still
    follows its lone trajectory, and the rows of all of them share the utility calls."""
    configs = SPACES[space].expand(BASE)
    S = len(configs)
    shared: list[int] = []
    sweep = Sweep(configs, _points(), _counting(neg_rastrigin, shared), batch_size=batch_size, progress=False)
    result = sweep.run()
    lone_calls: list[int] = []
    for i, c in enumerate(configs):
        alone = Swarm(c, _points(), _counting(neg_rastrigin, lone_calls))
        r = alone.run()
        assert _strip(sweep.swarms[i].history) == _strip(alone.history)
        assert torch.equal(sweep.swarms[i].buffers.x, alone.buffers.x) and torch.equal(result.results[i].best, r.best)
        assert result.entries[i]["best_dev"] == r.best_utility and result.entries[i]["evaluations"] == r.summary["evaluations"]
    assert result.summary["evaluations"] == sum(lone_calls)                # S times the evaluations ...
    assert sum(shared) == result.summary["rows_scored"] < sum(lone_calls)  # ... less the rows they share
    if space == "authors":  # one seed, one size: the S starting populations are the same rows, scored once
        n0 = len(sweep.swarms[0].origins)
        assert result.summary["rows_scored"] == sum(lone_calls) - (S - 1) * n0
    rounds = max(r.iterations for r in result.results) + 1
    if batch_size is None:
        assert len(shared) == rounds < len(lone_calls)                     # ... in one call per round
    else:
        assert max(shared) <= batch_size and result.summary["utility_calls"] == len(shared)
    assert result.winner == max(range(S), key=lambda i: (result.entries[i]["best_dev"], -i))
    assert result.selected_on == "dev"


def test_a_select_utility_chooses_the_winner():
    """The select utility prefers the configuration whose best lies nearest to a target; dev does not."""
    configs = SweepSpace(mode="grid", grid={"phi_g": [0.1, 0.3, 0.5, 0.7]}).expand(BASE)
    on_dev = Sweep(configs, _points(), neg_rastrigin, progress=False).run()
    bests = torch.stack([r.best for r in on_dev.results])
    target = bests[3 if on_dev.winner != 3 else 0]

    def near_target(p):
        return -((p - target) ** 2).sum(1)

    on_select = Sweep(configs, _points(), neg_rastrigin, select_utility=near_target, progress=False).run()
    assert on_select.selected_on == "select" and on_select.winner != on_dev.winner
    assert on_select.winner == (3 if on_dev.winner != 3 else 0)
    assert [e["best_dev"] for e in on_select.entries] == [e["best_dev"] for e in on_dev.entries]
    assert on_select.entries[on_select.winner]["select"] == 0.0


def test_outputs(tmp_path):
    configs = SweepSpace(n=3, seed=1).expand(BASE.model_copy(update={"include_base": True}))
    result = Sweep(configs, _points(), neg_rastrigin, test_utility=neg_sphere, output_dir=tmp_path,
                   progress=False).run()
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["winner"] == result.winner and summary["n_configurations"] == 3
    assert summary["varied_fields"] == list(AUTHORS_RANGES)
    pts = _points()
    want_test = {f"point_{k}": float(neg_sphere(pts[k:k + 1])[0]) for k in range(K)}
    want_test["base"] = 0.0
    assert summary["initial_test_utilities"] == pytest.approx(want_test, rel=1e-12)
    for e, r in zip(summary["configurations"], result.results):
        assert set(e) >= {"fields", "best_dev", "select", "test", "iterations", "evaluations", "seconds"}
        assert e["test"] == pytest.approx(float(neg_sphere(r.best.unsqueeze(0))[0]), rel=1e-12)
        run = json.loads((tmp_path / e["run_dir"] / "summary.json").read_text())
        assert run["test_utility"] == e["test"] and run["sweep_configuration"] == e["index"]
        assert run["initial_test_utilities"] == pytest.approx(list(want_test.values()), rel=1e-12)
        assert e["seconds"] > 0
    table = (tmp_path / "sweep.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in table) == 2 + 3 and f"| {result.winner}* |" in "\n".join(table)
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["weak_to_strong"]["searches"] == 3
    winner = json.loads((tmp_path / "summary.json").read_text())
    assert winner["sweep"]["winner"] == result.winner
    assert torch.equal(load_file(str(tmp_path / "best.safetensors"))["x"].reshape(-1), result.winner_result.best.reshape(-1))


def test_a_killed_sweep_resumes_to_the_same_end(tmp_path):
    configs = SweepSpace(n=3, seed=4).expand(BASE.model_copy(update={"max_iters": 8, "patience": 100}))
    full = Sweep(configs, _points(), neg_rastrigin, output_dir=tmp_path / "full", progress=False).run()

    calls = {"n": 0}

    def dies(p):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return neg_rastrigin(p)

    with pytest.raises(KeyboardInterrupt):
        Sweep(configs, _points(), dies, output_dir=tmp_path / "part", progress=False).run()
    with pytest.raises(FileExistsError, match="already holds a sweep"):
        Sweep(configs, _points(), neg_rastrigin, output_dir=tmp_path / "part", progress=False)
    resumed = Sweep.resume(tmp_path / "part", neg_rastrigin, progress=False)
    assert [s.book.iteration for s in resumed.swarms] == [3, 3, 3]
    again = resumed.run()
    for a, b in zip(full.entries, again.entries):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for a, b in zip(full.results, again.results):
        assert torch.equal(a.best, b.best)
    for i in range(3):
        hist = lambda d: _strip(json.loads(line) for line in (d / "runs" / f"{i:03d}" / "history.jsonl").read_text().splitlines())
        assert hist(tmp_path / "full") == hist(tmp_path / "part")


# -- the select split ---------------------------------------------------------------------------------
def _dev_file(path: Path, n: int, with_ids: bool = False) -> Path:
    rows = [{"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2, **({"id": f"ex{i}"} if with_ids else {})}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows[:5]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[5:]) + "\n")
    return path


def test_carve_select_is_seeded_disjoint_and_covers_dev(tmp_path):
    dev = _dev_file(tmp_path / "dev.jsonl", 40)
    spec = {"type": "multiple_choice", "dev": str(dev), "test": "t.jsonl", "max_examples": 30}
    search, select, info = carve_select(spec, tmp_path / "a", fraction=0.3, seed=1)
    assert search["dev"] != select["dev"] and search["max_examples"] is None and search["test"] == "t.jsonl"
    s_rows = [json.loads(line)["question"] for line in Path(search["dev"]).read_text().splitlines()]
    h_rows = [json.loads(line)["question"] for line in Path(select["dev"]).read_text().splitlines()]
    assert len(h_rows) == 9 and len(s_rows) == 21 and not set(s_rows) & set(h_rows)
    assert sorted(s_rows + h_rows, key=lambda q: int(q[1:])) == [f"q{i}" for i in range(30)]
    assert s_rows == sorted(s_rows, key=lambda q: int(q[1:]))  # original order kept
    # ids: line numbers (the blank line 6 shifts the later ones)
    assert info["select_ids"] == [str(int(q[1:]) + 1 + (int(q[1:]) >= 5)) for q in h_rows]
    again = carve_select(spec, tmp_path / "b", fraction=0.3, seed=1)[2]
    other = carve_select(spec, tmp_path / "c", fraction=0.3, seed=2)[2]
    assert again["select_ids"] == info["select_ids"] and other["select_ids"] != info["select_ids"]
    _, _, sized = carve_select({**spec, "dev": str(_dev_file(tmp_path / "d.jsonl", 40, True))}, tmp_path / "d",
                               size=4, seed=1)
    assert len(sized["select_ids"]) == 4 and all(i.startswith("ex") for i in sized["select_ids"])


def test_carve_select_errors(tmp_path):
    with pytest.raises(SelectSplitError, match="utility type 'python' has none; use sweep.select: dev"):
        carve_select({"type": "python", "function": "m:f"}, tmp_path)
    dev = _dev_file(tmp_path / "dev.jsonl", 3)
    with pytest.raises(SelectSplitError, match="leaves no examples"):
        carve_select({"type": "multiple_choice", "dev": str(dev)}, tmp_path, fraction=0.1)


# -- the command line ---------------------------------------------------------------------------------
def _workdir(root: Path) -> None:
    g = torch.Generator().manual_seed(0)
    for i in range(K):
        save_file({"w": torch.randn(8, 8, generator=g) + 1}, str(root / f"expert_{i}.safetensors"))


def _config(root: Path, sweep: dict, utility: dict | None = None) -> Path:
    data = {"experts": {"glob": "expert_*.safetensors"},
            "swarm": {"n_particles": 6, "max_iters": 4, "seed": 1, "patience": 100},
            "utility": utility or {"type": "python", "function": "swarmkern.objectives:neg_sphere",
                                   "test_kwargs": {"shift": 0.5}},
            "output": {"dir": "out"}, "sweep": sweep}
    path = root / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_sweep_runs_reports_and_resumes(tmp_path):
    _workdir(tmp_path)
    cfg = _config(tmp_path, {"mode": "grid", "grid": {"phi_v": [0.1, 0.3], "step": [0.6, 1.0]}})
    runner = CliRunner()
    res = runner.invoke(main, ["sweep", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "sweep of 4:" in res.output and "chosen on dev" in res.output and "test" in res.output
    summary = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert [e["fields"] for e in summary["configurations"]] == [
        {"phi_v": 0.1, "step": 0.6}, {"phi_v": 0.1, "step": 1.0}, {"phi_v": 0.3, "step": 0.6}, {"phi_v": 0.3, "step": 1.0}]
    assert load_run_config(tmp_path / "out" / "config.yaml").sweep.grid == {"phi_v": [0.1, 0.3], "step": [0.6, 1.0]}
    res = runner.invoke(main, ["sweep", str(cfg), "--no-progress"])
    assert res.exit_code != 0 and "already holds a sweep" in res.output
    res = runner.invoke(main, ["sweep", str(cfg), "--no-progress", "--resume-if-exists", "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.output)
    assert [e["best_dev"] for e in again["configurations"]] == [e["best_dev"] for e in summary["configurations"]]
    res = runner.invoke(main, ["sweep", str(cfg), "--no-progress", "--resume-if-exists", "--set", "swarm.seed=2"])
    assert res.exit_code != 0 and "the config differs from the run's: swarm.seed (1 in the run, 2 now)" in res.output


def test_cli_sweep_errors(tmp_path):
    _workdir(tmp_path)
    runner = CliRunner()
    cfg = _config(tmp_path, {"ranges": {"phi_q": [0, 1]}})
    res = runner.invoke(main, ["sweep", str(cfg)])
    assert res.exit_code != 0 and "sweep: ranges.phi_q" in res.output and "not a swarm field" in res.output
    cfg = _config(tmp_path, {"n": 2, "select": "split"})
    res = runner.invoke(main, ["sweep", str(cfg), "--no-progress"])
    assert res.exit_code != 0 and "has none; use sweep.select: dev" in res.output
    with pytest.raises(ConfigError, match="select_size: only used with select: split"):
        load_run_config(_config(tmp_path, {"select_size": 3}))


def test_cli_sweep_with_a_select_split_on_a_tiny_model(tmp_path):
    from swarmkern.testing import cached_tiny_setup

    setup = cached_tiny_setup(k=3, reward=False, judge=False)
    data = {"experts": {"paths": [str(p) for p in setup.expert_dirs]},
            "swarm": {"n_particles": 5, "max_iters": 2, "seed": 0},
            "utility": {"type": "multiple_choice", "model": str(setup.model_dir), "dev": str(setup.data["mc_dev"]),
                        "test": str(setup.data["mc_test"])},
            "output": {"dir": str(tmp_path / "out")},
            "sweep": {"n": 2, "select": "split", "select_size": 2, "select_seed": 3}}
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(main, ["sweep", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    split = json.loads((out / "select" / "split.json").read_text())
    n_dev = sum(1 for line in Path(setup.data["mc_dev"]).read_text().splitlines() if line.strip())
    assert len(split["select_ids"]) == 2 and len(split["search_ids"]) == n_dev - 2
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["selected_on"] == "select"
    assert all(e["select"] is not None and e["test"] is not None for e in summary["configurations"])
    assert (out / "best" / "adapter_config.json").is_file() and "chosen on select" in res.output


# -- torchrun ---------------------------------------------------------------------------------------
def test_sharded_sweep_matches_one_process(tmp_path):
    """Two processes (gloo) holding a block of every swarm's particles end where one process does."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    _workdir(tmp_path)
    cfg = _config(tmp_path, {"n": 3, "seed": 2})
    one = CliRunner().invoke(main, ["sweep", str(cfg), "--no-progress", "-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for r in range(2):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1", SWARMKERN_DIST_TIMEOUT="60")
        procs.append(subprocess.Popen([sys.executable, "-m", "swarmkern", "sweep", str(cfg), "--no-progress",
                                       "-o", str(tmp_path / "two")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    a = json.loads((tmp_path / "one" / "sweep.json").read_text())
    b = json.loads((tmp_path / "two" / "sweep.json").read_text())
    strip = lambda s: [{k: v for k, v in e.items() if k != "seconds"} for e in s["configurations"]]
    assert strip(a) == strip(b) and a["winner"] == b["winner"]
    assert a["initial_test_utilities"] == b["initial_test_utilities"]
    shards = {p.name.split("-rank")[1] for p in (tmp_path / "two" / "runs" / "001" / "checkpoint").glob("ckpt-*.safetensors")}
    assert shards == {"0.safetensors", "1.safetensors"}
    assert torch.equal(load_file(str(tmp_path / "one" / "best.safetensors"))["w"],
                       load_file(str(tmp_path / "two" / "best.safetensors"))["w"])


# -- documented defaults ------------------------------------------------------------------------------
@pytest.mark.parametrize("doc", ["README.md", "docs/CONFIG.md"])
def test_documented_swarm_defaults_are_the_code_defaults(doc):
    """The complete config shown in the docs lists every SwarmConfig field with the code's default."""
    import re

    text = (Path(__file__).parent.parent / doc).read_text()
    block = re.search(r"```yaml\n(experts:.*?)```", text, re.S).group(1)
    shown = yaml.safe_load(block)["swarm"]
    code = SwarmConfig().model_dump(mode="json")
    assert set(shown) == set(code)
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in shown.items()} == code


def test_an_expert_named_base_does_not_collide_with_the_base_particle(tmp_path):
    from swarmkern.flat import load_experts

    pts = _points()
    pool = load_experts(pts, names=["base", "point_1", "point_2", "point_3"])
    configs = SweepSpace(n=2, seed=1).expand(BASE.model_copy(update={"include_base": True}))
    Sweep(configs, pool, neg_rastrigin, test_utility=neg_sphere, output_dir=tmp_path, progress=False).run()
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["initial_test_utilities"]["base"] == pytest.approx(float(neg_sphere(pts[:1])[0]), rel=1e-12)
    assert summary["initial_test_utilities"]["base_model"] == 0.0  # the base particle, under its own name
    assert summary["initial_dev_utilities"]["base_model"] == float(neg_rastrigin(torch.zeros(1, D))[0])
    run = json.loads((tmp_path / "runs" / "000" / "summary.json").read_text())
    names = [p["name"] for p in run["particles"] if p["kind"] != "child"]
    assert names == ["base", "point_1", "point_2", "point_3", "base_model"]
