"""What the model-based utilities share: the config fields every one of them has (model, data splits,
dtype, device, micro-batch), the per-process cache of particle evaluators, and the scorer object the
search calls (`scorer(particles [B, D]) -> [B]` float64 scores, higher is better)."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from pydantic import Field, PrivateAttr, model_validator

from swarmkern.evaluate.layer_cache import DEFAULT_LIMIT_BYTES
from swarmkern.datasources import DataSource, materialize
from swarmkern.hub import resolve_local

from .memo import DEFAULT_MEMO_ROWS, PredictionMemo
from .protocol import Ensembling, FunctionUtility, Predictions
from .registry import UtilityConfig

__all__ = ["ModelUtility", "Scorer", "PredictionScorer", "jsonl_example_ids", "particle_evaluator", "plain_evaluator", "NORMALIZERS", "normalize_text"]

_EVALUATORS: dict[tuple, Any] = {}
_CACHE_OFF: set[tuple] = set()  # evaluators some utility built with layer_cache_mb: 0


class ModelUtility(UtilityConfig):
    """Fields shared by the utilities that run the particles as a language model."""
    model: str | None = Field(None, description="base model: a directory or a Hub id org/name[@revision] (default: "
                                                "the adapters' base_model_name_or_path); required for full-weight experts")
    tokenizer: str | None = Field(None, description="tokenizer directory or Hub id (default: the model's)")
    dev: str | DataSource = Field(description=(
        "examples scored during the search: a .jsonl/.json/.csv/.parquet file or {dataset: org/name, config, "
        "split, fields} (swarmkern/datasources.py)"))
    test: str | DataSource | None = Field(None, description="examples scored only for the report (as dev)")
    max_examples: int | None = Field(None, gt=0, description="use the first N dev examples")
    max_test_examples: int | None = Field(None, gt=0, description="use the first N test examples")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description='compute dtype of the model; "auto": bf16 where the device computes it natively '
                            '(CUDA with bf16, a CPU with AVX512-BF16 or AMX), else float32')
    device: str = Field("auto", description='"auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...')
    micro_batch: int = Field(64, gt=0, description="rows per forward pass (particles x examples): bounds memory")
    max_length: int | None = Field(None, gt=0, description="cut prompts from the left to this many tokens")
    share_prefix: bool = Field(True, description="run the layers below the first adapted layer once per batch")
    layer_cache_mb: float = Field(DEFAULT_LIMIT_BYTES / 2**20, ge=0, description=(
        "memory (MiB) for the outputs of the frozen layers below the first adapted layer, kept across calls "
        "per example (LoRA pools; 0 turns it off, also for the other utilities sharing the evaluator); one "
        "limit per shared evaluator, the largest asked"))
    memo_rows: int = Field(DEFAULT_MEMO_ROWS, ge=0, description=(
        "particles whose predictions are kept by content, so a particle scored again (the experts by the "
        "reports and by compare's baselines, the best by the reports) is not run again; 0 turns it off"))
    allow_same_dev_and_test: bool = Field(False, description=(
        "allow a test file with the same data as the dev file (a test score is then no held-out number)"))
    _state: dict = PrivateAttr(default_factory=dict)  # shared by the dev and test scorers of one config

    @model_validator(mode="after")
    def _dev_is_not_test(self) -> "ModelUtility":
        if self.test is not None and not self.allow_same_dev_and_test and same_source(self.dev, self.test):
            raise ValueError(f"test: {_describe(self.test)} holds the same data as dev ({_describe(self.dev)}), so "
                             "the test score would "
                             "not be held out; give another test file, or set allow_same_dev_and_test: true")
        return self

    def has_split(self, split: str) -> bool:
        return split == "dev" or (split == "test" and self.test is not None)

    def split_file(self, split: str) -> tuple[Path, int | None]:
        """(JSONL file of the split's examples, limit): other sources are converted to JSONL first."""
        if split == "dev":
            return materialize(self.dev, "utility.dev"), self.max_examples
        if split == "test" and self.test is not None:
            return materialize(self.test, "utility.test"), self.max_test_examples
        raise ValueError(f"utility.{split}: no {split} split configured")

    def evaluator(self, pool: Any):
        ev = particle_evaluator(pool, model=self.model, tokenizer=self.tokenizer, dtype=self.dtype,
                                device=self.device, share_prefix=self.share_prefix,
                                layer_cache_bytes=int(self.layer_cache_mb * 2**20))
        known = self._state.setdefault("evaluators", [])  # build_utility hands them to the scorers
        if all(e is not ev for e in known):
            known.append(ev)
        return ev

    def encode_prompts(self, tokenizer, texts: Sequence[str]) -> list[list[int]]:
        ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        if self.max_length is not None:
            ids = [s[-self.max_length:] for s in ids]
        return ids


class Scorer(FunctionUtility):
    """A utility that only scores: Scorer(fn, name) with fn(particles [B, D]) -> [B] (see protocol.py)."""


class PredictionScorer(Ensembling):
    """A utility made of its prediction functions (every built-in dataset utility is one):

    predict(particles [B, D]) -> Predictions; example_scores(preds) -> [B, N] (None: the utility is no
    mean over examples, then `score` is required); score(preds) -> [B] (default: mean of
    example_scores); ensemble(preds, how) -> (score, how used); ids: the N examples' ids.
    Predictions are remembered per particle content (memo.py; memo_rows=0: never)."""

    def __init__(self, name: str, *, predict: Callable[[torch.Tensor], Predictions],
                 ensemble: Callable[[Predictions, str], tuple[float, str]], ids: Sequence[str],
                 example_scores: Callable[[Predictions], torch.Tensor] | None = None,
                 score: Callable[[Predictions], torch.Tensor] | None = None, memo_rows: int = DEFAULT_MEMO_ROWS):
        if example_scores is None and score is None:
            raise ValueError(f"{name}: needs example_scores or score")
        self.name = name
        self._predict, self._ensemble, self._ids = predict, ensemble, list(ids)
        self._example_scores, self._score = example_scores, score
        self.memo = PredictionMemo(memo_rows)

    def predict(self, particles: torch.Tensor) -> Predictions:
        return self.memo.predict(particles, self._predict)

    def example_scores(self, preds: Predictions) -> torch.Tensor | None:
        return None if self._example_scores is None else self._example_scores(preds).double()

    def score(self, preds: Predictions) -> torch.Tensor:
        if self._score is not None:
            return torch.as_tensor(self._score(preds), dtype=torch.float64)
        return self.example_scores(preds).mean(1)

    @property
    def example_ids(self) -> list[str]:
        return list(self._ids)

    def ensemble(self, preds: Predictions, how: str = "auto") -> tuple[float, str]:
        if len(preds) == 0:
            raise ValueError(f"{self.name}: an ensemble needs at least one member")
        return self._ensemble(preds, how)


def jsonl_example_ids(path: str | Path, examples: Sequence[Any]) -> list[str]:
    """Ids of the examples read from a JSONL file (in order, blank lines skipped as load_jsonl does):
    each example's own "id" field when it has one, else its 1-based line number."""
    with open(path, encoding="utf-8") as fh:
        lines = [n for n, line in enumerate(fh, start=1) if line.strip()]
    return [str((getattr(ex, "model_extra", None) or {}).get("id", n)) for ex, n in zip(examples, lines)]


def _describe(source: Any) -> str:
    return source.describe() if hasattr(source, "describe") else str(source)


def same_source(a: Any, b: Any) -> bool:
    """Whether two data sources (a file path, or a DataSource: a file or a dataset split) hold the same
    examples: files by `same_data`, datasets by their id, configuration and split. A file and a dataset
    are taken as different (telling would mean reading the dataset at config time)."""
    def key(src: Any) -> tuple[str, Any]:
        if isinstance(src, (str, Path)):
            return "file", src
        if getattr(src, "path", None) is not None:
            return "file", src.path
        return "dataset", (src.dataset, src.config, src.split)
    (ka, va), (kb, vb) = key(a), key(b)
    if ka != kb:
        return False
    return same_data(va, vb) if ka == "file" else va == vb


def same_data(a: str | Path, b: str | Path) -> bool:
    """Whether two data files are the same file or hold the same bytes (False when one cannot be read:
    the loader reports that)."""
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        if pa.resolve() == pb.resolve():
            return True
        if pa.stat().st_size != pb.stat().st_size:
            return False
        return hashlib.sha256(pa.read_bytes()).digest() == hashlib.sha256(pb.read_bytes()).digest()
    except OSError:
        return False


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def particle_evaluator(pool: Any, *, model: str | None = None, tokenizer: str | None = None,
                       dtype: str = "auto", device: str = "auto", share_prefix: bool = True,
                       layer_cache_bytes: int | None = None):
    """The evaluator for a pool's particles on a local causal LM, built once per process and shared by
    every utility (dev and test, every task of a multi-task utility).

    PEFT pools -> LoraEvaluator (model defaults to the adapters' base_model_name_or_path);
    safetensors / state-dict pools -> FullWeightEvaluator (model required). `layer_cache_bytes`: the
    lower-layer cache's limit (evaluate/layer_cache.py); a shared evaluator keeps the largest asked, or 0
    (off) once any utility asks for 0.
    """
    from swarmkern.evaluate import LoraEvaluator
    from swarmkern.evaluate.full import FullWeightEvaluator
    from swarmkern.evaluate.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype

    kind = getattr(pool, "kind", None)
    if kind not in ("peft", "safetensors", "tensors") or not hasattr(pool, "layout"):
        raise ValueError("utility: model-based utilities need a pool of PEFT LoRA adapters or full-weight "
                         f"experts (got {type(pool).__name__} of kind {kind!r})")
    if model is None:
        model = (pool.adapter_config or {}).get("base_model_name_or_path") if kind == "peft" else None
        if not model:
            raise ValueError("utility.model: required (the base model directory the experts belong to)")
    model_path = resolve_local(model, what="utility.model", kind="model")
    if not model_path.is_dir():
        raise ValueError(f"utility.model: {model_path} is not a local directory (nor a Hub id org/name[@revision])")
    model_dir = str(model_path.resolve())
    tok_dir = (str(resolve_local(tokenizer, what="utility.tokenizer", kind="tokenizer").resolve())
               if tokenizer else model_dir)
    dev = str(resolve_device(device))
    dtype = resolve_dtype(dtype, dev)
    key = (kind, model_dir, tok_dir, dtype, dev, share_prefix,
           _digest([pool.layout.to_json(), pool.adapter_config if kind == "peft" else None]))
    if key in _EVALUATORS:
        ev = _EVALUATORS[key]
        # the largest limit asked wins, except 0: a utility that turns the cache off turns it off for good
        if layer_cache_bytes == 0:
            _CACHE_OFF.add(key)
        if key in _CACHE_OFF:
            ev.layer_cache.resize(0)
        elif layer_cache_bytes is not None and layer_cache_bytes > ev.layer_cache.limit_bytes:
            ev.layer_cache.resize(layer_cache_bytes)
        return ev
    tok = load_tokenizer(tok_dir)
    lm = load_causal_lm(model_dir, dtype=dtype, device=dev)
    if any(e.model is lm and (kind == "peft" or isinstance(e, LoraEvaluator)) for e in _EVALUATORS.values()):
        # a LoRA evaluator patches its model's layers in place: it never shares a model another evaluator
        # uses (nor lends its patched model to one), so this evaluator gets a private copy
        lm = load_causal_lm(model_dir, dtype=dtype, device=dev, private=True)
    if kind == "peft":
        ev = LoraEvaluator(lm, tok, pool.layout, pool.adapter_config or {}, share_prefix=share_prefix)
    else:
        ev = FullWeightEvaluator(lm, tok, pool.layout)
    if layer_cache_bytes is not None:
        ev.layer_cache.resize(layer_cache_bytes)
    if layer_cache_bytes == 0:
        _CACHE_OFF.add(key)
    _EVALUATORS[key] = ev
    return ev


def plain_evaluator(model_dir: str, *, tokenizer: str | None = None, dtype: str = "auto",
                    device: str = "auto"):
    """An evaluator of an unadapted causal LM (an LLM judge), cached per process."""
    from swarmkern.evaluate.base import PlainEvaluator
    from swarmkern.evaluate.models import load_causal_lm, load_tokenizer, resolve_device, resolve_dtype

    model_dir = str(resolve_local(model_dir, what="utility.judge", kind="model").resolve())
    tok_dir = (str(resolve_local(tokenizer, what="utility.judge_tokenizer", kind="tokenizer").resolve())
               if tokenizer else model_dir)
    dev = str(resolve_device(device))
    dtype = resolve_dtype(dtype, dev)
    key = ("plain", model_dir, tok_dir, dtype, dev)
    if key not in _EVALUATORS:
        _EVALUATORS[key] = PlainEvaluator(load_causal_lm(model_dir, dtype=dtype, device=dev),
                                          load_tokenizer(tok_dir))
    return _EVALUATORS[key]


def clear_evaluators() -> None:
    """Forget cached evaluators (tests, benchmarks); LoRA evaluators give their model back unpatched,
    so the cached model can serve a new evaluator."""
    from swarmkern.evaluate import LoraEvaluator

    for ev in _EVALUATORS.values():
        if isinstance(ev, LoraEvaluator):
            ev.unpatch()
    _EVALUATORS.clear()


# -- answer normalisation (exact match) ---------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _last_number(s: str) -> str:
    found = _NUMBER.findall(s)
    if not found:
        return ""
    num = found[-1].replace(",", "")
    if "." in num:  # "42.0" and "42" are the same answer
        num = num.rstrip("0").rstrip(".")
    return num


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "strip": str.strip,
    "lower": str.lower,
    "punctuation": lambda s: "".join(ch for ch in s if ch.isalnum() or ch.isspace()),
    "articles": lambda s: _ARTICLES.sub(" ", s),
    "whitespace": lambda s: " ".join(s.split()),
    "number": _last_number,
    "first_line": lambda s: s.strip().split("\n", 1)[0] if s.strip() else "",
}


def normalize_text(text: str, steps: Sequence[str]) -> str:
    """Apply NORMALIZERS in order (e.g. ["first_line", "lower", "punctuation", "whitespace"])."""
    for s in steps:
        text = NORMALIZERS[s](text)
    return text


def harmonic_mean(values: torch.Tensor, weights: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Weighted harmonic mean along `dim`; 0 wherever a value is <= 0 (it is undefined there)."""
    w = weights.reshape([-1] + [1] * (values.dim() - 1)).to(values)
    bad = (values <= 0).any(dim)
    hm = w.sum() / (w / values.clamp(min=1e-300)).sum(dim)
    return torch.where(bad, torch.zeros_like(hm), hm)
