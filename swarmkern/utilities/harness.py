"""lm-evaluation-harness tasks as the utility (`type: lm_eval`), scored for every particle in one pass.

lm-eval builds the requests (its prompts, few-shot sampling with a fixed seed, its tokenisation rules
for a Hugging Face causal LM); swarmkern's batched evaluator answers them for all particles at once:
- `loglikelihood` / `multiple_choice` requests: each context runs once per particle and the choices
  are scored from its KV cache (`ParticleEvaluator.loglikelihood`);
- `generate_until` requests: batched greedy decoding with the task's `until` stop strings and
  `max_gen_toks` (`ParticleEvaluator.generate`).
The answers then go back through the task's own filters, `process_results` and aggregation, so the
utility is lm-eval's metric. Several tasks (a list, a group or a tag) combine like `multitask`.

Offline by design: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE are set before lm-eval is imported, and each
task's dataset is checked (local data files exist, or a hub dataset is in the local cache) before any
dataset or model is loaded.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import Field, PrivateAttr

from swarmkern.evaluate.layer_cache import DEFAULT_LIMIT_BYTES

from .common import harmonic_mean, particle_evaluator
from .ensemble import combine_class_scores, majority_vote
from .memo import DEFAULT_MEMO_ROWS, PredictionMemo
from .protocol import Ensembling, Predictions
from .registry import UtilityConfig, register_utility

__all__ = ["LmEval", "LmEvalScorer", "LmEvalPredictions"]

INSTALL_HINT = "pip install 'swarmkern[lm-eval]'"
# datasets' packaged builders: dataset_path names a file format, the files come from data_files
_PACKAGED = {"json", "csv", "parquet", "text", "arrow", "pandas", "xml", "sql"}


def _import_lm_eval():
    """Go offline, then import lm-eval (one-line error when it is missing)."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
        import huggingface_hub.constants
        import lm_eval  # noqa: F401
        from lm_eval.tasks import TaskManager  # noqa: F401
    except ImportError:
        raise ValueError(f"utility.type: lm_eval needs the lm-eval package ({INSTALL_HINT})") from None
    # both read the variables at import: an already imported module needs the flags set directly
    datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    for name in ("lm-eval", "lm_eval"):  # lm-eval logs every request batch, and warns about settings
        logging.getLogger(name).setLevel(logging.ERROR)  # it was given on purpose (a model object, few-shot)
    import lm_eval
    return lm_eval


@dataclass(frozen=True)
class LmEvalPredictions(Predictions):
    """Every particle's answers to every request (owned by the utility; preds[idx] selects particles).
    ll [B, E] float64 and greedy [B, E] bool: log-likelihood requests; texts[g][b][j]: generation
    group g's j-th prompt under particle b."""
    ll: torch.Tensor
    greedy: torch.Tensor
    texts: list[list[list[str]]]

    def __len__(self) -> int:
        return self.ll.shape[0]

    def take(self, rows: list[int]) -> "LmEvalPredictions":
        return LmEvalPredictions(self.ll[rows], self.greedy[rows], [[g[r] for r in rows] for g in self.texts])

    @classmethod
    def join(cls, parts: Sequence["LmEvalPredictions"]) -> "LmEvalPredictions":
        texts = [[row for p in parts for row in p.texts[g]] for g in range(len(parts[0].texts))]
        return LmEvalPredictions(torch.cat([p.ll for p in parts]), torch.cat([p.greedy for p in parts]), texts)


@dataclass
class _TaskPlan:
    """One lm-eval task of one split: its instances, where each one's answer comes from, the metric."""
    name: str
    task: Any
    instances: list  # lm-eval Instances, in the task's order
    source: list[tuple[str, int, int]]  # per instance: ("ll", request, 0) or ("gen", group, prompt)
    docs: list[tuple[dict, list[int]]]  # per document: (doc, its instances' positions by idx)
    doc_ids: list[int]
    metric: str
    filter: str
    sign: float  # -1 for lower-is-better metrics (the utility is maximised)

    @property
    def choices(self) -> bool:
        return all(kind == "ll" for kind, _, _ in self.source)


@register_utility("lm_eval")
class LmEval(UtilityConfig):
    """An lm-evaluation-harness task (or several) as the utility: the task's own metric for every particle.

    task: a task, group or tag name (or a list); include_path: directories of task YAML files.
    dev_split (default: the task's validation_split; a task without one needs dev_split) is scored during
    the search; test_split (default: the task's test_split when it differs from the dev split) only for
    the report. dev_split == test_split is an error unless allow_same_dev_and_test.
    metric: the metric (`acc`, `exact_match`, or lm-eval's `metric,filter` key); default: the task's
    first metric and first filter. Lower-is-better metrics (perplexity) are negated.
    """
    type: str = "lm_eval"
    task: str | list[str] = Field(description="lm-eval task, group or tag name(s)")
    include_path: str | list[str] | None = Field(None, description="directories with task YAML files")
    dev_split: str | None = Field(None, description="dataset split scored during the search")
    test_split: str | None = Field(None, description="dataset split scored only for the report")
    allow_same_dev_and_test: bool = Field(False, description="allow dev_split == test_split (the test score "
                                          "is then no held-out number)")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples (lm-eval's rule: a task "
                                    "whose YAML says 0 stays at 0)")
    fewshot_random_seed: int = Field(1234, description="seed of lm-eval's few-shot sampler (lm-eval's default)")
    limit: int | float | None = Field(None, gt=0, description="first N documents per task (N < 1: a fraction)")
    metric: str | None = Field(None, description="metric name or 'metric,filter'")
    gen_kwargs: dict[str, Any] | None = Field(None, description="override the tasks' generation_kwargs "
                                              "(until, max_gen_toks; greedy only)")
    combine: Literal["harmonic", "mean", "min"] = Field("mean", description="how several tasks combine")
    weights: dict[str, float] | None = Field(None, description="per-task weights of the combination")
    max_length: int | None = Field(None, gt=0, description="context window (lm-eval's HF default: from the "
                                   "model config, else 2048)")
    add_bos_token: bool | None = Field(None, description="as lm-eval's HF model: None = the tokenizer's default")
    model: str | None = Field(None, description="base model directory or Hub id (default: the adapters' base)")
    tokenizer: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description='compute dtype; "auto": bf16 where the device computes it natively, else float32 '
                            '(lm-eval reference numbers need the dtype lm-eval ran with)')
    device: str = "auto"
    micro_batch: int = Field(64, gt=0, description="rows per forward pass (particles x requests)")
    share_prefix: bool = True
    layer_cache_mb: float = Field(DEFAULT_LIMIT_BYTES / 2**20, ge=0, description="as the other model-based "
                                  "utilities: frozen lower layers' outputs kept across calls (0: off)")
    memo_rows: int = Field(DEFAULT_MEMO_ROWS, ge=0, description="as the other model-based utilities: "
                           "particles whose predictions are kept by content (0: off)")
    _state: dict = PrivateAttr(default_factory=dict)

    # -- tasks -----------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [self.task] if isinstance(self.task, str) else list(self.task)

    def _include_paths(self) -> list[str]:
        paths = [] if self.include_path is None else (
            [self.include_path] if isinstance(self.include_path, str) else list(self.include_path))
        for p in paths:
            if not Path(p).is_dir():
                raise ValueError(f"utility.include_path: {p} is not a directory")
        return paths

    def _manager(self):
        """lm-eval's TaskManager: the include_path tasks only when they name every task (indexing
        lm-eval's own ~15k task files takes seconds), else lm-eval's tasks too."""
        if "manager" not in self._state:
            _import_lm_eval()  # its one-line error even when another utility already built a manager
            paths = self._include_paths()
            tm = _task_manager(tuple(paths), False) if paths else None
            if tm is None or any(n not in tm.task_index for n in self.task_names):
                tm = _task_manager(tuple(paths), True)
            for name in self.task_names:
                if name not in tm.task_index and not Path(name).is_file():
                    raise ValueError(f"utility.task: unknown lm-eval task {name!r}"
                                     f"{_parse_errors(paths)}{_did_you_mean(name, tm.all_tasks)}")
            self._state["manager"] = tm
        return self._state["manager"]

    def _leaf_configs(self) -> list[tuple[str, dict]]:
        """(name, YAML config) of every leaf task the names expand to, read without loading anything."""
        if "leaves" not in self._state:
            tm = self._manager()
            leaves: list[tuple[str, dict]] = []
            for name in self.task_names:
                _walk(tm.task_index, name, None, leaves, set())
            self._state["leaves"] = leaves
        return self._state["leaves"]

    def _check_datasets(self) -> None:
        for name, cfg in self._leaf_configs():
            _check_dataset(name, cfg)

    def has_split(self, split: str) -> bool:
        if split == "dev":
            return True
        if split != "test":
            return False
        if self.test_split is not None:
            return True
        return all(_default_splits(cfg, self.dev_split)[1] is not None for _, cfg in self._leaf_configs())

    def _load(self, split: str) -> dict[str, Any]:
        """Fresh Task objects for one split (lm-eval tasks keep their requests as state)."""
        self._check_datasets()
        tm = self._manager()
        try:
            loaded = tm.load(self.task_names)
        except Exception as err:  # lm-eval raises anything from KeyError to datasets' errors
            raise ValueError(f"utility.task: lm-eval could not load {self.task_names}: {_one_line(err)}") from None
        tasks = loaded["tasks"]
        for name, task in tasks.items():
            self._configure(name, task, split)
        return tasks

    def _configure(self, name: str, task: Any, split: str) -> None:
        """lm-eval's simple_evaluate settings (num_fewshot, few-shot seed, gen_kwargs), then the split."""
        out = task.get_config("output_type")
        if out not in ("multiple_choice", "loglikelihood", "generate_until"):
            raise ValueError(f"utility.task: {name}: output_type {out!r} is not supported "
                             "(multiple_choice, loglikelihood, generate_until)")
        if out == "generate_until" and self.gen_kwargs is not None:
            task.set_config(key="generation_kwargs", value=dict(self.gen_kwargs), update=True)
        if self.num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=self.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=self.fewshot_random_seed)
        dev, test = _default_splits({"validation_split": task.config.validation_split,
                                     "test_split": task.config.test_split}, self.dev_split)
        chosen = dev if split == "dev" else (self.test_split or test)
        if chosen is None and split == "dev":  # never its test split, silently: the search would fit the test
            raise ValueError(f"utility.dev_split: task {name} has no validation split; choose the split to search "
                             f"on with dev_split (e.g. dev_split: {task.config.training_split or 'train'})")
        if chosen is None:
            raise ValueError(f"utility.{split}_split: task {name} has no {split} split; set {split}_split")
        if split == "test" and chosen == dev and not self.allow_same_dev_and_test:
            raise ValueError(f"utility.test_split: task {name}: {chosen!r} is also the dev split, so the test score "
                             "would not be held out; choose another split, or set allow_same_dev_and_test: true")
        available = list(getattr(task, "dataset", None) or [])
        if available and chosen not in available:
            raise ValueError(f"utility.{split}_split: task {name} has no split {chosen!r} "
                             f"(its dataset has {', '.join(available)})")
        task.set_config(key="test_split", value=chosen)  # lm-eval evaluates the test split when one is set

    # -- requests ----------------------------------------------------------------------------------
    def _encoder(self, ev):
        """lm-eval's HF model class around the evaluator's model, used only for its tokenisation rules
        (never for a forward pass): requests are encoded exactly as `lm_eval --model hf` encodes them."""
        if "encoder" not in self._state:
            from lm_eval.models.huggingface import HFLM

            self._state["encoder"] = HFLM(pretrained=ev.model, tokenizer=copy.deepcopy(ev.tokenizer),
                                          backend="causal", max_length=self.max_length,
                                          add_bos_token=self.add_bos_token, batch_size=1)
        return self._state["encoder"]

    def _plans(self, tasks: dict[str, Any], enc) -> tuple[list[_TaskPlan], Any, list[int], list[dict]]:
        """Build every task's requests; returns the plans, the log-likelihood Requests (all tasks),
        the requests whose greedy match is needed, and the generation groups."""
        from lm_eval.evaluator_utils import get_sample_size
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        from swarmkern.evaluate import Requests

        ctx_index: dict[tuple, int] = {}
        owner, conts, need_greedy = [], [], []
        groups: dict[tuple, dict] = {}
        eos = enc.tok_decode(enc.eot_token_id, skip_special_tokens=False)
        plans = []
        metric_name, _, filter_name = (self.metric or "").partition(",")
        for name, task in tasks.items():
            limit = get_sample_size(task, self.limit)
            try:
                task.build_all_requests(limit=limit, rank=0, world_size=1)
            except Exception as err:
                raise ValueError(f"utility.task: {name}: lm-eval could not build its requests: {_one_line(err)}") from None
            source = []
            for inst in task.instances:
                if inst.request_type == "loglikelihood":
                    ctx, cont = _encode_pair(enc, *inst.args)
                    source.append(("ll", len(conts), 0))
                    if task.get_config("output_type") == "loglikelihood":
                        need_greedy.append(len(conts))
                    owner.append(ctx_index.setdefault(tuple(ctx), len(ctx_index)))
                    conts.append(cont)
                elif inst.request_type == "generate_until":
                    ctx, gen = inst.args
                    kw = normalize_gen_kwargs(gen, enc.max_gen_toks)
                    if kw.get("do_sample"):
                        raise ValueError(f"utility.task: {name} samples (do_sample: true); swarmkern scores "
                                         "greedy generation only (set gen_kwargs: {do_sample: false})")
                    until = handle_stop_sequences(kw.pop("until", None), eos=eos)
                    max_gen = kw.pop("max_gen_toks")
                    ids = enc.tok_batch_encode([ctx], left_truncate_len=enc.max_length - max_gen,
                                               truncation=enc.truncation)[0][0].tolist()
                    g = groups.setdefault((max_gen, tuple(until)), {"index": len(groups), "max_new": max_gen,
                                                                    "stop": list(until), "prompts": []})
                    source.append(("gen", g["index"], len(g["prompts"])))
                    g["prompts"].append(ids)
                else:
                    raise ValueError(f"utility.task: {name}: request type {inst.request_type!r} is not supported")
            by_doc: dict[int, list[int]] = defaultdict(list)
            for pos, inst in enumerate(task.instances):
                by_doc[inst.doc_id].append(pos)
            docs, doc_ids = [], []
            for doc_id, doc in task.doc_iterator(rank=0, limit=limit, world_size=1):
                pos = sorted(by_doc[doc_id], key=lambda p: task.instances[p].idx)
                docs.append((doc, pos))
                doc_ids.append(doc_id)
            metrics = list(task.aggregation())
            filters = [f.name for f in getattr(task, "_filters", [])] or ["none"]
            metric = metric_name or metrics[0]
            if metric not in metrics:
                raise ValueError(f"utility.metric: task {name} has no metric {metric!r} (it has {', '.join(metrics)})")
            filt = filter_name or filters[0]
            if filt not in filters:
                raise ValueError(f"utility.metric: task {name} has no filter {filt!r} (it has {', '.join(filters)})")
            sign = 1.0 if task.higher_is_better().get(metric, True) else -1.0
            plans.append(_TaskPlan(name, task, list(task.instances), source, docs, doc_ids, metric, filt, sign))
        contexts = [list(c) for c in ctx_index]
        requests = Requests(contexts, owner, conts)
        return plans, requests, need_greedy, sorted(groups.values(), key=lambda g: g["index"])

    # -- scoring -------------------------------------------------------------------------------------
    def build(self, pool: Any, split: str) -> "LmEvalScorer":
        from swarmkern.hub import resolve_local

        # a Hub id (utility.model, or the adapters' base) is resolved, and downloaded when missing, before
        # lm-eval's import turns the process offline
        base = self.model or (getattr(pool, "adapter_config", None) or {}).get("base_model_name_or_path")
        model = str(resolve_local(base, what="utility.model", kind="model")) if base else None
        tokenizer = (str(resolve_local(self.tokenizer, what="utility.tokenizer", kind="tokenizer"))
                     if self.tokenizer else None)
        with _lm_eval_seeds():
            tasks = self._load(split)
            ev = particle_evaluator(pool, model=model, tokenizer=tokenizer, dtype=self.dtype,
                                    device=self.device, share_prefix=self.share_prefix,
                                    layer_cache_bytes=int(self.layer_cache_mb * 2**20))
            enc = self._encoder(ev)
            plans, requests, need_greedy, groups = self._plans(tasks, enc)
        return LmEvalScorer(self, ev, plans, requests, need_greedy, groups, f"lm_eval[{split}]")

    def combine_scores(self, scores: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """scores [B, T] -> [B], like `multitask` (one task: itself)."""
        if scores.shape[1] == 1:
            return scores[:, 0]
        w = torch.tensor([(self.weights or {}).get(n, 1.0) for n in names], dtype=torch.float64)
        if self.combine == "min":
            return scores.min(1).values
        if self.combine == "mean":
            return (scores * w).sum(1) / w.sum()
        return harmonic_mean(scores.T, w)


class LmEvalScorer(Ensembling):
    """particles [B, D] -> the tasks' metric [B], with per-document predictions and ensembles."""

    def __init__(self, cfg: LmEval, ev, plans: list[_TaskPlan], requests, need_greedy: list[int],
                 groups: list[dict], name: str):
        self.name = name
        self.cfg, self.ev, self.plans, self.requests, self.groups = cfg, ev, plans, requests, groups
        self.need_greedy = need_greedy
        self.memo = PredictionMemo(cfg.memo_rows)

    @property
    def example_ids(self) -> list[str]:
        return [f"{p.name}/{d}" if len(self.plans) > 1 else str(d) for p in self.plans for d in p.doc_ids]

    def predict(self, particles: torch.Tensor) -> LmEvalPredictions:
        return self.memo.predict(particles, self._predict)

    def _predict(self, particles: torch.Tensor) -> LmEvalPredictions:
        B, mb = particles.shape[0], self.cfg.micro_batch
        E = len(self.requests)
        ll = self.ev.loglikelihood(particles, self.requests, micro_batch=mb) if E else torch.zeros(B, 0, dtype=torch.float64)
        greedy = torch.zeros(B, E, dtype=torch.bool)
        if self.need_greedy:
            greedy[:, self.need_greedy] = self._greedy(particles, self.need_greedy)
        texts = [self.ev.generate(particles, g["prompts"], max_new_tokens=g["max_new"], stop=g["stop"], micro_batch=mb)
                 for g in self.groups]
        return LmEvalPredictions(ll, greedy, texts)

    def _greedy(self, particles: torch.Tensor, idx: list[int]) -> torch.Tensor:
        """[B, len(idx)]: is every continuation token the argmax (lm-eval's `is_greedy`)?"""
        reqs = self.requests
        seqs = [(reqs.contexts[reqs.owner[e]] + reqs.conts[e])[:-1] for e in idx]
        logits = self.ev.logits(particles, seqs, micro_batch=self.cfg.micro_batch)
        out = torch.zeros(particles.shape[0], len(idx), dtype=torch.bool)
        for j, (e, lg) in enumerate(zip(idx, logits)):
            k = reqs.conts[e]
            out[:, j] = (lg[:, -len(k):].argmax(-1) == torch.tensor(k)).all(-1)
        return out

    def _responses(self, plan: _TaskPlan, preds: LmEvalPredictions, b: int) -> list:
        return [(float(preds.ll[b, i]), bool(preds.greedy[b, i])) if kind == "ll" else preds.texts[i][b][j]
                for kind, i, j in plan.source]

    def _filtered(self, plan: _TaskPlan, responses: list) -> list:
        """The task's filters on one particle's responses -> the chosen filter's output per instance."""
        for inst, r in zip(plan.instances, responses):
            inst.resps = [r]
            inst.filtered_resps = {}
        plan.task.apply_filters()
        return [inst.filtered_resps[plan.filter] for inst in plan.instances]

    def _doc_values(self, plan: _TaskPlan, filtered: list) -> list:
        return [plan.task.process_results(doc, [filtered[p] for p in pos])[plan.metric] for doc, pos in plan.docs]

    def _aggregate(self, plan: _TaskPlan, values: list) -> float:
        from lm_eval.api.metrics import mean

        agg = plan.task.aggregation().get(plan.metric, mean)
        return plan.sign * float(agg(values))

    def _per_task(self, preds: LmEvalPredictions) -> torch.Tensor:
        """[B, T] each task's aggregated metric."""
        out = torch.empty(len(preds), len(self.plans), dtype=torch.float64)
        for t, plan in enumerate(self.plans):
            for b in range(len(preds)):
                out[b, t] = self._aggregate(plan, self._doc_values(plan, self._filtered(plan, self._responses(plan, preds, b))))
        return out

    def score(self, preds: LmEvalPredictions) -> torch.Tensor:
        return self.cfg.combine_scores(self._per_task(preds), [p.name for p in self.plans])

    def example_scores(self, preds: LmEvalPredictions) -> torch.Tensor | None:
        """[B, N] per-document metric values when the utility is their mean (one task, mean aggregation)."""
        from lm_eval.api.metrics import mean

        if len(self.plans) != 1 or self.plans[0].task.aggregation().get(self.plans[0].metric, mean) is not mean:
            return None
        plan = self.plans[0]
        rows = [self._doc_values(plan, self._filtered(plan, self._responses(plan, preds, b))) for b in range(len(preds))]
        try:
            return plan.sign * torch.tensor(rows, dtype=torch.float64)
        except (TypeError, ValueError):  # per-document values that are not numbers
            return None

    def ensemble(self, preds: LmEvalPredictions, how: str = "auto") -> tuple[float, str]:
        """Combine the members' (best first) answers per document: choice log-likelihoods by mean
        probability (or vote), generated answers by a majority vote of their filtered answers."""
        if len(preds) == 0:
            raise ValueError(f"{self.name}: an ensemble needs at least one member")
        if how == "auto":
            how = "mean_prob"
        if how not in ("mean_prob", "vote"):
            raise ValueError(f"ensemble.combine: expected 'auto', 'mean_prob' or 'vote', got {how!r}")
        values, used = [], set()
        for plan in self.plans:
            if plan.choices:
                members = torch.stack([torch.tensor([r[0] for r in self._responses(plan, preds, b)], dtype=torch.float64)
                                       for b in range(len(preds))])  # [M, n_instances]
                greedy = [[r[1] for r in self._responses(plan, preds, b)] for b in range(len(preds))]
                responses = list(self._responses(plan, preds, 0))
                for _, pos in plan.docs:
                    if len(pos) > 1:  # choices: their combined log-probabilities
                        combined = combine_class_scores(members[:, pos][:, None, :], how)[0]
                        for p, v in zip(pos, combined.tolist()):
                            responses[p] = (v, responses[p][1])
                    else:  # one continuation (output_type loglikelihood): mean log-likelihood, voted is_greedy
                        p = pos[0]
                        responses[p] = (float(members[:, p].mean()), majority_vote([[g[p]] for g in greedy])[0])
                filtered = self._filtered(plan, responses)
                used.add(how)
            else:
                per_member = [self._filtered(plan, self._responses(plan, preds, b)) for b in range(len(preds))]
                voted = majority_vote([[_hashable(x) for x in m] for m in per_member])
                lookup = {_hashable(x): x for m in per_member for x in m}
                filtered = [lookup.get(v, v) for v in voted]
                used.add("vote")
            values.append(self._aggregate(plan, self._doc_values(plan, filtered)))
        combined = self.cfg.combine_scores(torch.tensor([values], dtype=torch.float64), [p.name for p in self.plans])
        return float(combined[0]), "+".join(sorted(used))


# -- helpers -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _task_manager(paths: tuple[str, ...], defaults: bool):
    """An lm-eval TaskManager per (include paths, with lm-eval's own tasks), once per process: indexing
    lm-eval's task files takes seconds, and every lm_eval utility of a run (dev, test, multitask) shares it."""
    _import_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths) or None, include_defaults=defaults)


@contextlib.contextmanager
def _lm_eval_seeds():
    """The global seeds lm-eval's simple_evaluate sets (python 0, numpy 1234) while tasks load and
    build their requests (a task's own code may draw from them); the caller's states come back after."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    random.seed(0)
    np.random.seed(1234)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _encode_pair(enc, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of one log-likelihood request exactly as lm-eval's HF model makes them: an empty
    context becomes the prefix token, and the context is cut from the left to fit max_length + 1."""
    if context == "":
        cont = enc.tok_encode(continuation, add_special_tokens=False)
        ctx, cont = ([enc.prefix_token_id], cont) if enc.prefix_token_id != cont[0] else (cont[:1], cont[1:])
    else:
        ctx, cont = enc._encode_pair(context, continuation)
    over = len(ctx) + len(cont) - (enc.max_length + 1)
    if over > 0:
        if over >= len(ctx):
            raise ValueError(f"utility.max_length: a continuation of {len(cont)} tokens does not fit in "
                             f"max_length={enc.max_length}")
        ctx = ctx[over:]
    if not cont:
        raise ValueError(f"utility.task: a continuation tokenises to nothing (context {context[-40:]!r})")
    return ctx, cont


def _hashable(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_hashable(y) for y in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in x.items()))
    return x


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {', '.join(close)}?" if close else "; check the name and include_path"


def _parse_errors(paths: Sequence[str]) -> str:
    """Task files under include_path that lm-eval could not read (its index skips them silently)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    bad = []
    for root in paths:
        for f in sorted(Path(root).rglob("*.yaml")):
            try:
                cfg = load_yaml(f, resolve_func=False, recursive=True)
                if not isinstance(cfg, dict):
                    raise ValueError("not a mapping")
            except Exception as err:
                bad.append(f"{f}: {_one_line(err)}")
    return f" (unreadable task files: {'; '.join(bad)})" if bad else ""


def _walk(index: dict, name: str, overrides: dict | None, out: list, seen: set) -> None:
    """Expand a task / group / tag name into its leaf task configs (no dataset is touched)."""
    from lm_eval.tasks._index import Kind

    entry = index.get(name)
    if entry is None:
        if Path(name).is_file():
            from lm_eval.tasks._yaml_loader import load_yaml

            out.append((name, {**load_yaml(Path(name), resolve_func=False, recursive=True), **(overrides or {})}))
        elif overrides:  # an inline task defined inside a group
            out.append((name, dict(overrides)))
        return
    if name in seen:
        return
    seen.add(name)
    if entry.kind == Kind.TAG:
        for t in sorted(entry.tags):
            _walk(index, t, overrides, out, seen)
    elif entry.kind == Kind.GROUP:
        for item in (entry.cfg or {}).get("task", []):
            if isinstance(item, str):
                _walk(index, item, None, out, seen)
            elif isinstance(item, dict) and "task" in item:
                _walk(index, item["task"], {k: v for k, v in item.items() if k != "task"}, out, seen)
            elif isinstance(item, dict) and "group" in item:
                for sub in item.get("task", []):
                    if isinstance(sub, str):
                        _walk(index, sub, None, out, seen)
    else:
        out.append((name, {**(entry.cfg or {}), **(overrides or {})}))


def _default_splits(cfg: dict, dev_split: str | None) -> tuple[str | None, str | None]:
    """(dev, test) splits of a task config: dev = dev_split, else validation_split (None when the task
    has none: its test split is never searched on unless chosen); test = test_split when it is not the dev split."""
    val, test = cfg.get("validation_split"), cfg.get("test_split")
    dev = dev_split or val
    return dev, (test if test != dev else None)


def _check_dataset(name: str, cfg: dict) -> None:
    """One-line error before anything loads: local data files that do not exist, or a hub dataset
    that is not in the local cache (swarmkern never downloads)."""
    if cfg.get("custom_dataset") is not None or "class" in cfg:
        return
    path = cfg.get("dataset_path")
    if path is None:
        raise ValueError(f"utility.task: {name}: its task file has no dataset_path")
    kwargs = cfg.get("dataset_kwargs") or {}
    files = kwargs.get("data_files")
    if path in _PACKAGED or files is not None:
        if files is None:
            raise ValueError(f"utility.task: {name}: dataset_path {path!r} needs dataset_kwargs.data_files")
        listed = files.values() if isinstance(files, dict) else [files]
        for item in listed:
            for f in ([item] if isinstance(item, str) else item):
                if not any(c in f for c in "*?[") and "://" not in f and not Path(f).exists():
                    raise ValueError(f"utility.task: {name}: data file {f} does not exist (dataset_kwargs."
                                     "data_files; relative paths are relative to the working directory)")
        return
    if Path(path).expanduser().exists():
        return
    if not _in_hub_cache(path):
        raise ValueError(f"utility.task: {name}: its dataset {path!r} would come from the Hugging Face Hub and is "
                         "not in the local cache (swarmkern runs offline): download it once where there is "
                         "network (huggingface-cli download --repo-type dataset "
                         f"{path}), or point the task at local files (dataset_path: json + dataset_kwargs.data_files)")


def _in_hub_cache(path: str) -> bool:
    import datasets
    import huggingface_hub.constants

    hub = Path(huggingface_hub.constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}"
    local = Path(datasets.config.HF_DATASETS_CACHE) / path.replace("/", "___")
    return hub.is_dir() or local.is_dir()
