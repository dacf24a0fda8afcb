"""Experts <-> one flat row of numbers.

A `FlatLayout` lists one expert's tensors in a fixed order (name, shape, dtype, offset, numel); an
expert is then a row of D = sum(numel) numbers and a swarm is a [P, D] buffer whose every tensor is a
strided view. An `ExpertPool` is K experts with one layout, read lazily: `load_experts` only reads
headers (safetensors) and adapter_config.json, checks that the experts are compatible, and the numbers
are streamed one tensor at a time when a buffer is filled (`fill_rows`), so loading never holds more
than the destination buffer plus one tensor of each expert.

Sources: PEFT adapter directories (adapter_config.json + adapter_model.safetensors, or the
adapter_model.bin of older PEFT versions, memory-mapped), .safetensors files, directories of .safetensors shards (full models), in-memory state dicts, or a [K, D] tensor.
`save_expert(pool, row, path)` writes a row back in the pool's own format.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from swarmkern.atomic import atomic_write_json, fsync_dir
from swarmkern.hub import parse_hub_id, resolve_local

__all__ = ["TensorSpec", "FlatLayout", "ExpertPool", "ExpertSource", "load_experts", "save_expert",
           "IncompatibleExperts", "PEFT_STRUCTURAL_KEYS"]

# adapter_config.json fields that change what the adapter tensors mean: experts must agree on them.
PEFT_STRUCTURAL_KEYS = ("peft_type", "base_model_name_or_path", "r", "lora_alpha", "target_modules",
                        "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "fan_in_fan_out",
                        "layers_to_transform", "layers_pattern", "modules_to_save", "bias")
_ADAPTER_WEIGHTS = "adapter_model.safetensors"
_ADAPTER_BIN = "adapter_model.bin"  # PEFT < 0.6 saved PyTorch pickles by default
_ADAPTER_CONFIG = "adapter_config.json"

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
              "U8": torch.uint8, "BOOL": torch.bool}


class IncompatibleExperts(ValueError):
    """Two experts cannot share one flat layout; the message names the first difference."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of an expert: where it lives in the flat row."""
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    numel: int

    @property
    def stop(self) -> int:
        return self.offset + self.numel


class FlatLayout:
    """Ordered tensors of one expert. D = total numel; tensor `name` is row[offset:offset+numel]."""

    def __init__(self, specs: Iterable[tuple[str, Sequence[int], torch.dtype]]):
        entries, offset = [], 0
        for name, shape, dtype in specs:
            shape = tuple(int(s) for s in shape)
            numel = math.prod(shape)
            entries.append(TensorSpec(name, shape, dtype, offset, numel))
            offset += numel
        if not entries:
            raise ValueError("an expert must have at least one tensor")
        self.entries: tuple[TensorSpec, ...] = tuple(entries)
        self.index = {e.name: e for e in self.entries}
        if len(self.index) != len(self.entries):
            raise ValueError("duplicate tensor names in layout")
        self.numel = offset

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "FlatLayout":
        """Layout of a state dict, in its own key order."""
        return cls((k, tuple(t.shape), t.dtype) for k, t in state.items())

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def dtypes(self) -> set[torch.dtype]:
        return {e.dtype for e in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlatLayout) and self.entries == other.entries

    def __repr__(self) -> str:
        return f"FlatLayout({len(self.entries)} tensors, D={self.numel})"

    def to_json(self) -> list[dict]:
        return [{"name": e.name, "shape": list(e.shape), "dtype": str(e.dtype).removeprefix("torch.")}
                for e in self.entries]

    @classmethod
    def from_json(cls, data: list[dict]) -> "FlatLayout":
        return cls((d["name"], d["shape"], getattr(torch, d["dtype"])) for d in data)

    # -- views -------------------------------------------------------------------------------
    def _check_row(self, row: torch.Tensor) -> None:
        if row.shape[-1] != self.numel:
            raise ValueError(f"row has {row.shape[-1]} elements, layout has D={self.numel}")

    def view(self, row: torch.Tensor, name: str) -> torch.Tensor:
        """Tensor `name` of one row [D] as a view of shape spec.shape."""
        self._check_row(row)
        e = self.index[name]
        return row[e.offset:e.stop].view(e.shape)

    def views(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every tensor of one row [D] as views (no copies), in layout order."""
        self._check_row(row)
        return {e.name: row[e.offset:e.stop].view(e.shape) for e in self.entries}

    def batched_view(self, rows: torch.Tensor, name: str) -> torch.Tensor:
        """Tensor `name` of B rows [B, D] as a strided view [B, *shape] (rows may be any row stride)."""
        self._check_row(rows)
        e = self.index[name]
        sub = rows[:, e.offset:e.stop]
        return sub.as_strided((rows.shape[0], *e.shape),
                              (rows.stride(0), *_contiguous_strides(e.shape)), sub.storage_offset())

    def flatten(self, state: Mapping[str, torch.Tensor], out: torch.Tensor | None = None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
        """A state dict with this layout's keys and shapes -> one row [D] (into `out` when given)."""
        check_state_dict(self, state, "state dict")
        if out is None:
            out = torch.empty(self.numel, dtype=dtype or _common_dtype(self.dtypes))
        for e in self.entries:
            out[e.offset:e.stop].copy_(state[e.name].reshape(-1))
        return out

    def state_dict(self, row: torch.Tensor, *, cast: bool = True, clone: bool = True) -> dict[str, torch.Tensor]:
        """One row [D] -> {name: tensor}, each in its original dtype when `cast` (for export)."""
        out = {}
        for name, t in self.views(row).items():
            if cast:
                t = t.to(self.index[name].dtype)
            out[name] = t.clone() if clone else t
        return out


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return tuple(reversed(strides))


def _common_dtype(dtypes: set[torch.dtype]) -> torch.dtype:
    """The buffer dtype for a layout: its only float dtype, else float32."""
    return next(iter(dtypes)) if len(dtypes) == 1 and next(iter(dtypes)).is_floating_point else torch.float32


def check_state_dict(layout: FlatLayout, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise IncompatibleExperts naming the first key/shape/dtype difference from `layout`."""
    _compare_specs(layout, [(k, tuple(t.shape), t.dtype) for k, t in state.items()], "layout", what)


def _compare_specs(ref: FlatLayout, specs: list[tuple[str, tuple[int, ...], torch.dtype]],
                   ref_name: str, what: str) -> None:
    names = {s[0] for s in specs}
    missing = [n for n in ref.names if n not in names]
    if missing:
        raise IncompatibleExperts(f"{what}: tensor {missing[0]!r} of {ref_name} is missing "
                                  f"({len(missing)} missing in all)")
    extra = sorted(names - set(ref.names))
    if extra:
        raise IncompatibleExperts(f"{what}: has tensor {extra[0]!r} that {ref_name} lacks "
                                  f"({len(extra)} extra in all)")
    by_name = {s[0]: s for s in specs}
    for e in ref.entries:
        _, shape, dtype = by_name[e.name]
        if tuple(shape) != e.shape:
            raise IncompatibleExperts(f"{what}: tensor {e.name!r} has shape {list(shape)}, "
                                      f"{ref_name} has {list(e.shape)}")
        if dtype != e.dtype:
            raise IncompatibleExperts(f"{what}: tensor {e.name!r} has dtype {str(dtype).removeprefix('torch.')}, "
                                      f"{ref_name} has {str(e.dtype).removeprefix('torch.')}")


# -------------------------------------------------------------------------------------------------
# Sources: where one expert's numbers come from.
# -------------------------------------------------------------------------------------------------
@dataclass
class ExpertSource:
    """One expert: a name and where to read each tensor (files: tensor name -> safetensors path,
    or an in-memory state dict)."""
    name: str
    path: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    tensors: Mapping[str, torch.Tensor] | None = None
    specs: list[tuple[str, tuple[int, ...], torch.dtype]] = field(default_factory=list)
    adapter_config: dict | None = None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else self.name


def _specs_from_file(path: Path) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, shape, dtype) of every tensor of a safetensors file, from its header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = [(name, tuple(f.get_slice(name).get_shape()), f.get_slice(name).get_dtype()) for name in f.keys()]
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({' '.join(str(err).split())})") from None
    specs = []
    for name, shape, dtype in raw:
        if dtype not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        specs.append((name, shape, _ST_DTYPES[dtype]))
    return specs


def _state_from_bin(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch weights file (torch.save of a state dict), memory-mapped so its numbers are read from
    disk only when a buffer is filled; weights_only refuses pickles that would run code."""
    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # the pre-1.6 (non-zip) format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many kinds; all mean "unreadable"
        raise ValueError(f"{path}: not a readable PyTorch weights file ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                 for k, t in state.items()):
        raise ValueError(f"{path}: expected a state dict (tensor name -> tensor)")
    return dict(state)


def _source_from_path(path: Path) -> tuple[str, ExpertSource]:
    """(kind, source) for a PEFT adapter dir, a .safetensors file or a dir of .safetensors shards."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such expert file or directory")
    if path.is_dir() and (path / _ADAPTER_CONFIG).is_file():
        weights = path / _ADAPTER_WEIGHTS
        if not weights.is_file() and not (path / _ADAPTER_BIN).is_file():
            raise ValueError(f"{path}: PEFT adapter without weights ({_ADAPTER_WEIGHTS} or {_ADAPTER_BIN})")
        try:
            config = json.loads((path / _ADAPTER_CONFIG).read_text())
        except ValueError as err:
            raise ValueError(f"{path / _ADAPTER_CONFIG}: invalid JSON ({err})") from None
        if not weights.is_file():
            state = _state_from_bin(path / _ADAPTER_BIN)
            specs = [(k, tuple(t.shape), t.dtype) for k, t in state.items()]
            return "peft", ExpertSource(path.name, path, {}, state, specs, config)
        specs = _specs_from_file(weights)
        return "peft", ExpertSource(path.name, path, {s[0]: weights for s in specs}, None, specs, config)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: expected a .safetensors file or a PEFT adapter directory")
        specs = _specs_from_file(path)
        return "safetensors", ExpertSource(path.stem, path, {s[0]: path for s in specs}, None, specs)
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"{path}: directory has neither {_ADAPTER_CONFIG} nor *.safetensors files")
    files: dict[str, Path] = {}
    specs = []
    for shard in shards:
        for spec in _specs_from_file(shard):
            if spec[0] in files:
                raise ValueError(f"{shard}: tensor {spec[0]!r} also in {files[spec[0]]}")
            files[spec[0]] = shard
            specs.append(spec)
    return "safetensors", ExpertSource(path.name, path, files, None, specs)


def _compare_adapter_configs(ref: ExpertSource, other: ExpertSource) -> None:
    a, b = ref.adapter_config or {}, other.adapter_config or {}
    for key in PEFT_STRUCTURAL_KEYS:
        va, vb = a.get(key), b.get(key)
        if key == "target_modules" and isinstance(va, list) and isinstance(vb, list):
            va, vb = sorted(va), sorted(vb)
        if va != vb:
            raise IncompatibleExperts(f"{other.describe()}: adapter_config.json {key} = {b.get(key)!r}, "
                                      f"but {ref.describe()} has {a.get(key)!r}")


# -------------------------------------------------------------------------------------------------
# The pool.
# -------------------------------------------------------------------------------------------------
class ExpertPool:
    """K compatible experts sharing one FlatLayout, read lazily.

    Attributes: layout, names [K], kind ("peft" | "safetensors" | "tensors"), adapter_config (PEFT
    only; the first expert's), sources (paths, None for in-memory experts), dtype (the buffer dtype:
    the experts' own float dtype, or float32 when their tensors mix dtypes).
    """

    def __init__(self, layout: FlatLayout, sources: list[ExpertSource], kind: str,
                 adapter_config: dict | None = None):
        self.layout = layout
        self._sources = sources
        self.kind = kind
        self.adapter_config = adapter_config
        self.names = _unique_names([s.name for s in sources])
        self.dtype = _common_dtype(layout.dtypes)

    @property
    def sources(self) -> list[Path | None]:
        return [s.path for s in self._sources]

    def __len__(self) -> int:
        return len(self._sources)

    def __repr__(self) -> str:
        return f"ExpertPool(K={len(self)}, D={self.layout.numel}, kind={self.kind!r}, dtype={self.dtype})"

    @classmethod
    def from_tensor(cls, init: torch.Tensor, names: Sequence[str] | None = None) -> "ExpertPool":
        """K points [K, D] as a pool with one tensor named "x" (generic optimisation)."""
        if init.dim() != 2:
            raise ValueError(f"init must be [K, D], got shape {list(init.shape)}")
        names = list(names) if names is not None else [f"point_{k}" for k in range(init.shape[0])]
        sources = [ExpertSource(names[k], tensors={"x": init[k]}, specs=[("x", (init.shape[1],), init.dtype)])
                   for k in range(init.shape[0])]
        return cls(FlatLayout([("x", (init.shape[1],), init.dtype)]), sources, "tensors")

    @property
    def weights(self) -> torch.Tensor:
        """All K experts as a new [K, D] tensor (materialises everything: prefer fill_rows)."""
        out = torch.empty(len(self), self.layout.numel, dtype=self.dtype)
        self.fill_rows(out, torch.eye(len(self), dtype=torch.float64))
        return out

    def expert(self, k: int) -> torch.Tensor:
        """Expert k as a new row [D]."""
        out = torch.empty(1, self.layout.numel, dtype=self.dtype)
        coef = torch.zeros(1, len(self), dtype=torch.float64)
        coef[0, k] = 1.0
        self.fill_rows(out, coef)
        return out[0]

    def fill_rows(self, out: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """out[m] = sum_k coef[m, k] * expert_k for every row m (out [M, D], coef [M, K]); see fill."""
        self.fill([(out, coef)])
        return out

    def fill(self, targets: Sequence[tuple[torch.Tensor, torch.Tensor]], block: int | None = None) -> None:
        """For each (out [M, D], coef [M, K]): out[m] = sum_k coef[m, k] * expert_k, accumulated in
        fp32 in the order k = 0..K-1 (terms with coef 0 are skipped; rows that are exactly one expert
        are copied bit for bit). Streams one tensor of one expert at a time: each expert file is
        opened once, each tensor read once, and beside the outputs only that tensor and an fp32
        accumulator for one tensor name are held. A row of zeros gives the all-zero expert (for LoRA
        adapters: the base model itself). With `block`, each tensor is read and combined in slices of
        about `block` numbers along its first dimension (for outputs larger than RAM, e.g. memory-mapped
        swarm buffers): the same numbers, with accumulators of len(rows) x block."""
        prepared = []
        for out, coef in targets:
            M, K = coef.shape
            if K != len(self) or tuple(out.shape) != (M, self.layout.numel):
                raise ValueError(f"fill: out {list(out.shape)} / coef {list(coef.shape)} do not match "
                                 f"K={len(self)}, D={self.layout.numel}")
            coef = coef.to(torch.float64)
            onehot = ((coef == 0) | (coef == 1)).all(1) & ((coef == 1).sum(1) == 1)
            copies = {k: [m for m in range(M) if onehot[m] and coef[m, k] == 1] for k in range(K)}
            mixed = [m for m in range(M) if not onehot[m]]
            weights = coef[mixed].to(torch.float32)  # [len(mixed), K]
            terms = {k: [j for j in range(len(mixed)) if weights[j, k] != 0] for k in range(K)}
            prepared.append((out, copies, mixed, weights, terms))
        with ExitStack() as stack:
            handles: dict[Path, Any] = {}
            for e in self.layout.entries:
                lead = e.shape[0] if e.shape else 1
                inner = e.numel // max(1, lead)
                step = lead if block is None or not e.shape else max(1, block // max(1, inner))
                for r0 in range(0, lead, step):
                    r1 = min(lead, r0 + step)
                    a, b = e.offset + r0 * inner, e.offset + r1 * inner  # this slice's columns in the row
                    accs = [torch.zeros(len(mixed), b - a, dtype=torch.float32, device=out.device)
                            for out, _, mixed, _, _ in prepared]
                    for k, src in enumerate(self._sources):
                        rows = (r0, r1) if step < lead else None
                        t = self._read(src, e.name, handles, stack, rows).reshape(-1)
                        for (out, copies, mixed, weights, terms), acc in zip(prepared, accs):
                            td = t.to(out.device)
                            for m in copies[k]:
                                out[m, a:b].copy_(td)
                            for j in terms[k]:
                                acc[j].add_(td.float() * weights[j, k].to(out.device))
                        del t
                    for (out, _, mixed, _, _), acc in zip(prepared, accs):
                        for j, m in enumerate(mixed):  # row by row: no [len(mixed), b - a] gather-copy
                            out[m, a:b].copy_(acc[j])
                    del accs

    def describe(self) -> dict[str, Any]:
        """JSON description (no numbers): enough to export rows in this pool's format later."""
        return {"kind": self.kind, "names": self.names,
                "sources": [str(p) if p is not None else None for p in self.sources],
                "layout": self.layout.to_json(), "adapter_config": self.adapter_config}

    @classmethod
    def from_description(cls, data: dict[str, Any]) -> "ExpertPool":
        """A pool that can export rows and describe itself, but not read expert numbers."""
        layout = FlatLayout.from_json(data["layout"])
        sources = [ExpertSource(n, Path(p) if p else None) for n, p in zip(data["names"], data["sources"])]
        return cls(layout, sources, data["kind"], data.get("adapter_config"))

    @property
    def has_numbers(self) -> bool:
        """False for a pool rebuilt from a description whose experts could not be read: it can export
        rows and describe itself, but not fill a buffer."""
        return all(src.tensors is not None or src.files for src in self._sources)

    @classmethod
    def reload(cls, data: dict[str, Any]) -> "ExpertPool":
        """The experts a description names, read again from their recorded paths when those still hold
        the same experts (same layout); otherwise (moved, changed, in-memory) the description alone."""
        described = cls.from_description(data)
        paths = data.get("sources") or []
        if paths and all(paths):
            try:
                pool = load_experts(paths, names=data["names"])
            except (OSError, ValueError, RuntimeError):
                return described
            if pool.kind == described.kind and pool.layout == described.layout:
                return pool
        return described

    def _read(self, src: ExpertSource, name: str, handles: dict, stack: ExitStack,
              rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Tensor `name` of one expert, or its slice rows[0]:rows[1] along the first dimension."""
        if src.tensors is not None:
            t = src.tensors[name].detach()
            return (t if rows is None else t[rows[0]:rows[1]]).to("cpu")
        from safetensors import safe_open

        if name not in src.files:
            raise RuntimeError(f"{src.describe()}: expert numbers are not available (pool rebuilt from a description)")
        path = src.files[name]
        if path not in handles:
            handles[path] = stack.enter_context(safe_open(str(path), framework="pt", device="cpu"))
        if rows is None:
            return handles[path].get_tensor(name)
        return handles[path].get_slice(name)[rows[0]:rows[1]]


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}_{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def load_experts(sources: Sequence[str | os.PathLike | Mapping[str, torch.Tensor]] | torch.Tensor,
                 names: Sequence[str] | None = None) -> ExpertPool:
    """Experts from PEFT adapter dirs, .safetensors files, dirs of .safetensors shards (each also as a
    Hugging Face Hub id org/name[@revision]: swarmkern/hub.py), in-memory state dicts, or a [K, D]
    tensor. Only headers and adapter configs are read here; the numbers are
    read (once, lazily) when a buffer is filled. Raises IncompatibleExperts naming the first
    difference (adapter_config field, tensor name, shape or dtype) between an expert and the first."""
    if isinstance(sources, torch.Tensor):
        return ExpertPool.from_tensor(sources, names)
    if isinstance(sources, (str, os.PathLike)):
        raise TypeError("load_experts expects a list of sources, got a single path")
    if not sources:
        raise ValueError("load_experts: no experts given")
    kinds, srcs = [], []
    for i, s in enumerate(sources):
        if isinstance(s, Mapping):
            specs = [(k, tuple(t.shape), t.dtype) for k, t in s.items()]
            kinds.append("tensors")
            srcs.append(ExpertSource(f"expert_{i}", None, {}, s, specs))
        else:
            kind, src = _source_from_path(resolve_local(s, what=f"experts.paths[{i}]", kind="expert"))
            ref = parse_hub_id(os.fspath(s)) if not Path(s).expanduser().exists() else None
            if ref is not None:  # named after the repository, not the snapshot's commit directory
                src.name = ref.repo_id.split("/")[-1] + (f"@{ref.revision}" if ref.revision else "")
            kinds.append(kind)
            srcs.append(src)
    if names is not None:
        if len(names) != len(srcs):
            raise ValueError(f"load_experts: {len(names)} names for {len(srcs)} experts")
        for src, n in zip(srcs, names):
            src.name = str(n)
    if len(set(kinds)) > 1:
        raise IncompatibleExperts(f"{srcs[kinds.index(kinds[-1])].describe()}: is a {kinds[-1]} expert, "
                                  f"but {srcs[0].describe()} is a {kinds[0]} expert")
    ref = srcs[0]
    if not ref.specs:
        raise ValueError(f"{ref.describe()}: expert has no tensors")
    for spec in ref.specs:
        if not spec[2].is_floating_point:
            raise ValueError(f"{ref.describe()}: tensor {spec[0]!r} is {spec[2]}, only float tensors can be searched")
    layout = FlatLayout(ref.specs)
    for src in srcs[1:]:
        if kinds[0] == "peft":
            _compare_adapter_configs(ref, src)
        _compare_specs(layout, src.specs, ref.describe(), src.describe())
    return ExpertPool(layout, srcs, kinds[0], ref.adapter_config)


# -------------------------------------------------------------------------------------------------
# Export.
# -------------------------------------------------------------------------------------------------
def save_expert(pool: ExpertPool, row: torch.Tensor, path: str | os.PathLike,
                metadata: dict[str, str] | None = None) -> Path:
    """Write one row [D] in the pool's own format, atomically (temporary name + rename):
    PEFT pools -> an adapter directory (adapter_config.json + adapter_model.safetensors) that
    `PeftModel.from_pretrained(base, path)` loads; other pools -> a .safetensors file (".safetensors"
    is appended to `path` when missing). Each tensor is cast back to its original dtype and streamed
    to the file in blocks (the row may be a memory-mapped one larger than RAM, or on a GPU)."""
    from swarmkern.streaming import save_safetensors_streaming

    views = pool.layout.views(row.detach())
    state = {name: (t, pool.layout.index[name].dtype) for name, t in views.items()}
    meta = {"format": "pt", **(metadata or {})}
    path = Path(path)
    if pool.kind == "peft":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            save_safetensors_streaming(tmp / _ADAPTER_WEIGHTS, state, meta)
            atomic_write_json(tmp / _ADAPTER_CONFIG, pool.adapter_config, indent=2)
            _replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(path.parent)
        return path
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors_streaming(path, state, meta)
    return path


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move a finished directory to `path`; an existing one is moved aside first, then removed."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
