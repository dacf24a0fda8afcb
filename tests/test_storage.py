"""storage: mmap (buffers in memory-mapped files, walked in column blocks) gives the numbers of storage:
memory bit for bit; the streaming writers and block-wise fills give the numbers of the whole-tensor ones."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from swarmkern.flat import load_experts, save_expert
from swarmkern.objectives import neg_rastrigin
from swarmkern.streaming import column_blocks, mapped_tensor, save_safetensors_streaming
from swarmkern.swarm import LocalCollective, Swarm, SwarmConfig, load_checkpoint
from swarmkern.swarm.search import BUFFERS_DIR


def _config(**extra) -> SwarmConfig:
    base = dict(seed=7, n_particles=9, max_iters=8, patience=3, restart_patience=0.67, drop_n=0.15, phi_w=0.2,
                progress=False, snapshot_every=3)
    return SwarmConfig(**{**base, **extra})


def _record(out: Path) -> dict:
    tensors, state = load_checkpoint(out, collective=LocalCollective())
    book = {k: v for k, v in state["book"].items() if k not in ("wall_seconds", "history_bytes")}
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for h in history:
        h.pop("timings")
    summary = json.loads((out / "summary.json").read_text())
    for k in ("wall_seconds", "best_path", "config"):
        summary.pop(k, None)
    return {"tensors": tensors, "book": book, "history": history, "summary": summary,
            "best": load_file(str(out / "best.safetensors"))}


def _assert_same(a: dict, b: dict) -> None:
    assert a["book"] == b["book"] and a["history"] == b["history"] and a["summary"] == b["summary"]
    for name, t in a["tensors"].items():
        assert t.dtype == b["tensors"][name].dtype and torch.equal(t, b["tensors"][name]), name
    assert all(torch.equal(t, b["best"][k]) for k, t in a["best"].items())


@pytest.mark.parametrize("extra", [{}, {"dtype": "bfloat16", "velocity_init": "best"},
                                   {"randomness": "element", "velocity_init": "zero"}])
def test_mmap_storage_is_bit_identical_to_memory(tmp_path, extra):
    init = torch.randn(5, 53, generator=torch.Generator().manual_seed(1))
    Swarm(_config(**extra), init, neg_rastrigin, output_dir=tmp_path / "memory").run()
    out = tmp_path / "mmap"
    swarm = Swarm(_config(storage="mmap", block_size=7, **extra), init, neg_rastrigin, output_dir=out)
    assert extra.get("randomness") == "element" or len(list(column_blocks(53, 7))) == 8
    result = swarm.run()
    _assert_same(_record(tmp_path / "memory"), _record(out))
    # the live state is the mapped files themselves
    x = mapped_tensor(out / BUFFERS_DIR / "x-rank0.bin", (9, 53), swarm.dtype, create=False)
    assert torch.equal(x, swarm.buffers.x) and swarm.buffers.x.untyped_storage().filename is not None
    assert torch.equal(result.best, swarm.buffers.pbest[result.best_index])


def test_mmap_resume_reuses_the_mapped_files(tmp_path):
    init = torch.randn(5, 40, generator=torch.Generator().manual_seed(2))
    cfg = _config(drop_n=0.0, patience=100)  # one utility call per iteration, no early stop
    Swarm(cfg, init, neg_rastrigin, output_dir=tmp_path / "memory").run()
    out = tmp_path / "mmap"
    calls = {"n": 0}

    def dies(rows):  # in iteration 5: snapshot 3 + journal 0..4 on disk, the live files half-way into 5
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return neg_rastrigin(rows)

    with pytest.raises(KeyboardInterrupt):
        Swarm(cfg.model_copy(update={"storage": "mmap", "block_size": 5}), init, dies, output_dir=out).run()
    inode = os.stat(out / BUFFERS_DIR / "x-rank0.bin").st_ino
    resumed = Swarm.resume(out, neg_rastrigin)
    assert resumed.book.iteration == 4 and resumed.buffers.storage == "mmap"
    assert os.stat(out / BUFFERS_DIR / "x-rank0.bin").st_ino == inode
    resumed.run()
    _assert_same(_record(tmp_path / "memory"), _record(out))


def test_mmap_needs_an_output_dir_and_the_cpu():
    with pytest.raises(ValueError, match="mmap needs an output directory"):
        Swarm(_config(storage="mmap"), torch.randn(3, 4), neg_rastrigin)


def test_blockwise_fill_equals_whole_tensor_fill(tmp_path):
    g = torch.Generator().manual_seed(3)
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"e{k}.safetensors")
        save_file({"a.weight": torch.randn(11, 6, generator=g), "b.bias": torch.randn(13, generator=g),
                   "c": torch.randn(2, 3, 4, generator=g).to(torch.bfloat16)}, str(paths[-1]))
    pool = load_experts(paths)
    coef = torch.tensor([[1.0, 0, 0], [0.3, -0.2, 0.9], [0, 0, 0], [0.5, 0.5, 0]], dtype=torch.float64)
    whole = torch.empty(4, pool.layout.numel, dtype=pool.dtype)
    pool.fill([(whole, coef)])
    for block in (1, 5, 17):
        part = torch.full_like(whole, float("nan"))
        pool.fill([(part, coef)], block=block)
        assert torch.equal(part, whole), block


def test_streaming_safetensors_writer_matches_the_library(tmp_path):
    base = torch.randn(4, 10, generator=torch.Generator().manual_seed(4))
    tensors = {"rows": (base[:, 2:7], torch.float32), "half": (base, torch.bfloat16), "vec": (base[1], torch.float16),
               "empty": (torch.empty(0, 3), torch.float32)}
    save_safetensors_streaming(tmp_path / "s.safetensors", tensors, {"k": "v"}, block_bytes=12)
    got = load_file(str(tmp_path / "s.safetensors"))
    for name, (t, dtype) in tensors.items():
        assert got[name].dtype == dtype and torch.equal(got[name], t.to(dtype)), name
    pool = load_experts([{"w": torch.randn(3, 5), "b": torch.randn(5).to(torch.bfloat16)} for _ in range(2)])
    row = torch.randn(pool.layout.numel)
    path = save_expert(pool, row, tmp_path / "best")
    expected = pool.layout.state_dict(row)
    assert {k: torch.equal(v, expected[k]) and v.dtype == expected[k].dtype for k, v in load_file(str(path)).items()} \
        == {"w": True, "b": True}


def test_full_weight_utility_reads_mapped_rows(tmp_path):
    """A full-weight swarm over a tiny causal LM scores the same with mapped buffers in blocks of 64."""
    from swarmkern.testing import cached_tiny_setup, write_full_weight_experts
    from swarmkern.utilities import build_utility

    setup = cached_tiny_setup()
    # layers.2 (test_utilities uses layers.3): particle_evaluator caches one evaluator per layout and
    # shares the model object, which a later LoRA evaluator patches in place
    pool = load_experts(write_full_weight_experts(setup.model_dir, tmp_path, 3, only="layers.2."))
    built = build_utility({"type": "multiple_choice", "dev": str(setup.data["mc_dev"]),
                           "model": str(setup.model_dir)}, pool)
    cfg = _config(n_particles=5, max_iters=3, drop_n=0.3)
    Swarm(cfg, pool, built.dev, output_dir=tmp_path / "memory").run()
    Swarm(cfg.model_copy(update={"storage": "mmap", "block_size": 64}), pool, built.dev, output_dir=tmp_path / "mmap").run()
    _assert_same(_record(tmp_path / "memory"), _record(tmp_path / "mmap"))


def test_a_new_run_does_not_inherit_stale_mapped_files(tmp_path):
    """Without checkpoints a folder keeps the mapped files of an earlier run: a new run there starts
    from fresh (all-zero) files, e.g. velocity_init: zero must not pick up the old velocities."""
    cfg = _config(storage="mmap", checkpoint=False, velocity_init="zero", block_size=9)
    a = torch.randn(4, 30, generator=torch.Generator().manual_seed(5))
    alone = Swarm(cfg, a, neg_rastrigin, output_dir=tmp_path / "alone").run()
    Swarm(cfg, a * 3, neg_rastrigin, output_dir=tmp_path / "run").run()  # leaves x, v, pbest files behind
    assert (tmp_path / "run" / BUFFERS_DIR / "v-rank0.bin").stat().st_size == 9 * 30 * 4
    again = Swarm(cfg, a, neg_rastrigin, output_dir=tmp_path / "run").run()
    assert torch.equal(again.best, alone.best) and again.summary["best_dev_utility"] == alone.summary["best_dev_utility"]


def test_checkpoint_every_of_earlier_versions_still_reads():
    """Configs written for earlier versions keep working: checkpoint_every N -> snapshot_every N, 0 -> off."""
    from swarmkern.swarm import SwarmConfig

    assert SwarmConfig(checkpoint_every=3).snapshot_every == 3 and SwarmConfig(checkpoint_every=3).checkpoint
    assert SwarmConfig(checkpoint_every=0).checkpoint is False
    with pytest.raises(ValueError, match="checkpoint_every: give either"):
        SwarmConfig(checkpoint_every=2, snapshot_every=4)
    with pytest.raises(ValueError, match="checkpoint_every: expected an integer"):
        SwarmConfig(checkpoint_every=-1)
