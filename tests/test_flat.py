"""FlatLayout / ExpertPool / load_experts / save_expert."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from swarmkern.flat import FlatLayout, IncompatibleExperts, load_experts, save_expert


def _state(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layer.0.w": torch.randn(3, 4, generator=g).to(dtype), "layer.0.b": torch.randn(4, generator=g).to(dtype),
            "head": torch.randn(2, 2, 2, generator=g).to(dtype)}


def _write(tmp_path: Path, k: int, dtype=torch.float32) -> list[Path]:
    paths = []
    for i in range(k):
        p = tmp_path / f"e{i}.safetensors"
        save_file(_state(i, dtype), str(p))
        paths.append(p)
    return paths


def test_layout_views_flatten_roundtrip():
    sd = _state(0)
    layout = FlatLayout.from_state_dict(sd)
    assert layout.numel == 12 + 4 + 8
    row = layout.flatten(sd)
    assert row.shape == (24,)
    for name, t in layout.views(row).items():
        assert torch.equal(t, sd[name])
        assert t.data_ptr() >= row.data_ptr()  # a view, not a copy
    row[0] = 100.0
    assert layout.view(row, "layer.0.w")[0, 0] == 100.0
    back = layout.state_dict(row)
    assert back["layer.0.w"][0, 0] == 100.0 and back["layer.0.w"].data_ptr() != row.data_ptr()


def test_batched_view_is_strided_and_matches_rows():
    sd = [_state(i) for i in range(5)]
    layout = FlatLayout.from_state_dict(sd[0])
    buf = torch.stack([layout.flatten(s) for s in sd])
    rows = buf[1:4]
    bv = layout.batched_view(rows, "head")
    assert bv.shape == (3, 2, 2, 2)
    assert bv.data_ptr() == buf[1, layout.index["head"].offset:].data_ptr()
    for b in range(3):
        assert torch.equal(bv[b], sd[b + 1]["head"])
    bv[0].zero_()  # writes go through to the buffer
    assert torch.count_nonzero(buf[1, layout.index["head"].offset:layout.index["head"].stop]) == 0


def test_load_safetensors_files_lazily_and_fill(tmp_path, monkeypatch):
    paths = _write(tmp_path, 3)
    import safetensors

    reads: list[str] = []
    real = safetensors.safe_open

    class Counting:
        def __init__(self, *a, **kw):
            self._h = real(*a, **kw)

        def __enter__(self):
            self._inner = self._h.__enter__()
            return self

        def __exit__(self, *exc):
            return self._h.__exit__(*exc)

        def get_tensor(self, name):
            reads.append(name)
            return self._inner.get_tensor(name)

        def __getattr__(self, attr):  # keys, get_slice (header only): not counted
            return getattr(self._inner, attr)

    monkeypatch.setattr(safetensors, "safe_open", Counting)
    pool = load_experts(paths)
    assert reads == []  # loading reads headers only
    assert pool.kind == "safetensors" and len(pool) == 3 and pool.names == ["e0", "e1", "e2"]
    coef = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0.25, 0.5, 0.25], [0, 0, 0]], dtype=torch.float64)
    out = torch.empty(4, pool.layout.numel)
    pool.fill_rows(out, coef)
    assert len(reads) == 3 * 3 and len(set(reads)) == 3  # every tensor of every expert read exactly once
    rows = [pool.layout.flatten(_state(i)) for i in range(3)]
    assert torch.equal(out[0], rows[0]) and torch.equal(out[1], rows[2])
    assert torch.allclose(out[2], 0.25 * rows[0] + 0.5 * rows[1] + 0.25 * rows[2])
    assert torch.count_nonzero(out[3]) == 0
    assert torch.equal(pool.weights, torch.stack(rows))


def test_mixed_dtypes_use_fp32_buffer_and_export_casts_back(tmp_path):
    sds = []
    for i in range(2):
        sd = _state(i)
        sd["head"] = sd["head"].to(torch.bfloat16)
        sds.append(sd)
    pool = load_experts(sds)
    assert pool.kind == "tensors" and pool.dtype == torch.float32
    row = pool.expert(1)
    path = save_expert(pool, row, tmp_path / "best")
    assert path.name == "best.safetensors"
    back = load_file(str(path))
    assert back["head"].dtype == torch.bfloat16 and torch.equal(back["head"], sds[1]["head"])
    assert torch.equal(back["layer.0.w"], sds[1]["layer.0.w"])


def test_bf16_pool_keeps_bf16(tmp_path):
    pool = load_experts(_write(tmp_path, 2, torch.bfloat16))
    assert pool.dtype == torch.bfloat16 and pool.weights.dtype == torch.bfloat16


def test_sharded_directory_and_from_tensor(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    sd = _state(0)
    save_file({"layer.0.w": sd["layer.0.w"]}, str(d / "model-00001-of-00002.safetensors"))
    save_file({"layer.0.b": sd["layer.0.b"], "head": sd["head"]}, str(d / "model-00002-of-00002.safetensors"))
    pool = load_experts([d, d])
    assert torch.equal(pool.layout.state_dict(pool.expert(0))["head"], sd["head"])
    pts = torch.randn(4, 7)
    tp = load_experts(pts)
    assert tp.layout.names == ["x"] and torch.equal(tp.weights, pts)


@pytest.mark.parametrize("change, needle", [
    (lambda sd: sd.pop("head"), "tensor 'head' of"),
    (lambda sd: sd.update(extra=torch.zeros(1)), "has tensor 'extra'"),
    (lambda sd: sd.update(head=torch.zeros(2, 2, 3)), "tensor 'head' has shape [2, 2, 3]"),
    (lambda sd: sd.update(head=torch.zeros(2, 2, 2, dtype=torch.float16)), "tensor 'head' has dtype float16"),
])
def test_incompatible_files_name_the_first_difference(tmp_path, change, needle):
    paths = _write(tmp_path, 2)
    bad = _state(5)
    change(bad)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(IncompatibleExperts) as err:
        load_experts(paths + [tmp_path / "bad.safetensors"])
    msg = str(err.value)
    assert needle in msg and "bad.safetensors" in msg and "\n" not in msg


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_experts([tmp_path / "nope"])
    (tmp_path / "x.bin").write_bytes(b"123")
    with pytest.raises(ValueError, match="expected a .safetensors file"):
        load_experts([tmp_path / "x.bin"])
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_experts([tmp_path / "junk.safetensors"])
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="adapter_model.bin"):
        load_experts([adapter])
    save_file({"ids": torch.arange(3)}, str(tmp_path / "ints.safetensors"))
    with pytest.raises(ValueError, match="only float tensors"):
        load_experts([tmp_path / "ints.safetensors"])
    with pytest.raises(ValueError, match="no experts"):
        load_experts([])
    mixed = [_state(0), tmp_path / "ints.safetensors"]
    save_file(_state(1), str(tmp_path / "ok.safetensors"))
    with pytest.raises(IncompatibleExperts, match="is a safetensors expert"):
        load_experts([mixed[0], tmp_path / "ok.safetensors"])


def _fake_adapter(path: Path, seed: int, **config) -> Path:
    path.mkdir(parents=True)
    base = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"],
            "base_model_name_or_path": "tiny", "task_type": "CAUSAL_LM"}
    base.update(config)
    (path / "adapter_config.json").write_text(json.dumps(base))
    g = torch.Generator().manual_seed(seed)
    save_file({"m.q_proj.lora_A.weight": torch.randn(2, 4, generator=g),
               "m.q_proj.lora_B.weight": torch.randn(4, 2, generator=g)}, str(path / "adapter_model.safetensors"))
    return path


@pytest.mark.parametrize("field, value", [("r", 4), ("lora_alpha", 16), ("target_modules", ["q_proj"]),
                                          ("base_model_name_or_path", "other"), ("use_dora", True)])
def test_incompatible_adapter_configs(tmp_path, field, value):
    a = _fake_adapter(tmp_path / "a", 0)
    b = _fake_adapter(tmp_path / "b", 1, **{field: value})
    with pytest.raises(IncompatibleExperts, match=f"adapter_config.json {field}"):
        load_experts([a, b])


def test_adapter_configs_ignore_target_module_order_and_training_fields(tmp_path):
    a = _fake_adapter(tmp_path / "a", 0)
    b = _fake_adapter(tmp_path / "b", 1, target_modules=["v_proj", "q_proj"], lora_dropout=0.3)
    pool = load_experts([a, b])
    assert pool.kind == "peft" and pool.adapter_config["r"] == 2


def test_peft_roundtrip_with_tiny_llama(tmp_path):
    """The exported best is a PEFT adapter dir that PeftModel.from_pretrained loads, with our weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from swarmkern.testing import build_tiny_causal_lm, write_lora_experts

    torch.manual_seed(0)
    model_dir = build_tiny_causal_lm(tmp_path / "base", num_layers=2)
    experts = write_lora_experts(model_dir, tmp_path / "experts", k=2, r=2)
    pool = load_experts(experts)
    assert pool.kind == "peft" and all(n.endswith(("lora_A.weight", "lora_B.weight")) for n in pool.layout.names)
    out = torch.empty(1, pool.layout.numel, dtype=pool.dtype)
    pool.fill_rows(out, torch.tensor([[1.7, -0.7]], dtype=torch.float64))
    path = save_expert(pool, out[0], tmp_path / "best")
    assert (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model = PeftModel.from_pretrained(base, str(path))
    params = dict(model.named_parameters())
    checked = 0
    for name, t in pool.layout.views(out[0]).items():
        # PEFT stores "...lora_A.weight" and loads it as "...lora_A.default.weight"
        loaded = params[name.replace("lora_A.weight", "lora_A.default.weight").replace("lora_B.weight", "lora_B.default.weight")]
        assert torch.equal(loaded.detach(), t)
        checked += 1
    assert checked == len(pool.layout)
    # overwriting an existing export is atomic and leaves no temporary directories behind
    save_expert(pool, pool.expert(0), path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # a search over the adapters exports its best as an adapter directory PEFT loads
    from swarmkern.swarm import Swarm, SwarmConfig

    res = Swarm(SwarmConfig(n_particles=4, max_iters=2, progress=False), pool,
                lambda rows: -rows.double().pow(2).sum(1), output_dir=tmp_path / "run").run()
    assert res.best_path == tmp_path / "run" / "best"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model_dir)), str(res.best_path))
    name = pool.layout.names[0]
    loaded = dict(model.named_parameters())[name.replace("lora_A.weight", "lora_A.default.weight")
                                            .replace("lora_B.weight", "lora_B.default.weight")]
    assert torch.equal(loaded.detach(), pool.layout.view(res.best, name))


def test_older_peft_adapter_model_bin(tmp_path):
    """Adapters saved by older PEFT (adapter_model.bin, a PyTorch pickle) load like safetensors ones,
    memory-mapped; a mixed pool is fine; unreadable or code-carrying pickles are refused by name."""
    st = [_fake_adapter(tmp_path / f"st{i}", i) for i in range(2)]
    bins = []
    for i, src in enumerate(st):
        dst = tmp_path / f"bin{i}"
        dst.mkdir()
        (dst / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
        torch.save(load_file(str(src / "adapter_model.safetensors")), dst / "adapter_model.bin")
        bins.append(dst)
    ref = load_experts(st)
    for srcs in (bins, [st[0], bins[1]]):
        pool = load_experts(srcs)
        assert pool.kind == "peft" and pool.layout == ref.layout
        assert torch.equal(pool.weights, ref.weights)
    # the exported best is a safetensors adapter again
    out = save_expert(load_experts(bins), load_experts(bins).expert(1), tmp_path / "best")
    assert torch.equal(load_experts([out]).weights[0], ref.weights[1])
    (bins[0] / "adapter_model.bin").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match=r"bin0/adapter_model.bin: not a readable PyTorch weights file"):
        load_experts(bins)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"m.q_proj.lora_A.weight": Evil()}, bins[0] / "adapter_model.bin")
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        load_experts(bins)
    torch.save([torch.zeros(2)], bins[0] / "adapter_model.bin")
    with pytest.raises(ValueError, match="expected a state dict"):
        load_experts(bins)
