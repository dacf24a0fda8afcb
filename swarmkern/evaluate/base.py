"""The particle-evaluation engine shared by LoRA and full-weight particles.

A `ParticleEvaluator` runs one causal LM for many particles at once. Batches are *particle-major*:
with Pb particles bound and n examples, row p*n + i of every activation is example i under particle p,
so an adapter can reshape [Pb*n, T, h] -> [Pb, n*T, h] and use one batched matmul, no gather.

Two primitives serve every utility:
- `loglikelihood(rows, requests)`: sum of log p(continuation | context) per particle and request;
  log-probabilities are computed only at the scored positions (the LM head never sees the rest).
- `generate(rows, prompts, ...)`: greedy decoding with the KV cache, stop strings and EOS.

Memory is bounded by `micro_batch` (rows of one forward pass = particles x examples). Subclasses say
how to bind particle rows (`bind`) and may share the layers below the first adapted layer across
particles (`shared_layers`): those run once on the n examples, then a pre-hook on the first adapted
layer repeats the hidden states (and the per-example masks / rotary tables) for each particle. Those
frozen layers' outputs are also kept across calls, per example (`layer_cache.py`): the batches of a call
depend on its particle count, an example's states do not, so any later grouping of cached examples skips
the lower layers.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .fast_layers import speed_up
from .layer_cache import BatchKeys, LowerLayerCache, SkipLayer

__all__ = ["ParticleEvaluator", "PlainEvaluator", "Requests", "encode_requests"]


@dataclass
class Requests:
    """Tokenised (context, continuation) pairs, made once per dataset by `encode_requests`.
    contexts: the distinct contexts' ids; owner[e]: request e's context; conts[e]: its continuation
    ids (the scored tokens). ids[e] = contexts[owner[e]] + conts[e] (the whole sequence)."""
    contexts: list[list[int]]
    owner: list[int]
    conts: list[list[int]]

    def __len__(self) -> int:
        return len(self.conts)

    @property
    def ids(self) -> list[list[int]]:
        return [self.contexts[o] + k for o, k in zip(self.owner, self.conts)]

    @property
    def n_cont(self) -> list[int]:
        return [len(k) for k in self.conts]


def encode_requests(tokenizer, contexts: Sequence[str], continuations: Sequence[str], *,
                    max_length: int | None = None) -> Requests:
    """Tokenise pairs (the context with the tokenizer's special tokens, the continuation without).
    Equal contexts are stored once (a question shared by its choices is computed once per particle).
    A context is cut from the left when it plus its longest continuation exceeds `max_length`."""
    if len(contexts) != len(continuations):
        raise ValueError("encode_requests: contexts and continuations differ in length")
    index: dict[str, int] = {}
    owner = [index.setdefault(c, len(index)) for c in contexts]
    unique = list(index)
    ctx_ids = [list(x) for x in tokenizer(unique, add_special_tokens=True)["input_ids"]] if unique else []
    conts = [list(x) for x in tokenizer(list(continuations), add_special_tokens=False)["input_ids"]] if contexts else []
    longest = [0] * len(unique)
    for o, k in zip(owner, conts):
        if not k:
            raise ValueError(f"encode_requests: continuation tokenises to nothing (context {unique[o]!r})")
        if max_length is not None and len(k) >= max_length:
            raise ValueError(f"encode_requests: continuation of {len(k)} tokens exceeds max_length={max_length}")
        longest[o] = max(longest[o], len(k))
    if max_length is not None:
        ctx_ids = [c[max(0, len(c) + n - max_length):] for c, n in zip(ctx_ids, longest)]
    return Requests(ctx_ids, owner, conts)


class _Runner(nn.Module):
    """Decoder + LM head at selected positions only. A module (not a function) so that full-weight
    particles can swap its parameters with torch.func.functional_call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache, select: torch.Tensor | None, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> logits [M, V] at flat positions `select` (indices into B*T), or at the
        last position of every row ([B', V]) when select is None. B' may exceed B (prefix sharing).
        With tokens [M, K] (vocab ids per selected position) only those K rows of the LM head are
        computed: logits [M, K] (no projection onto the whole vocabulary)."""
        decoder = self.model.get_decoder()
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                  "use_cache": cache is not None}
        if cache is not None:
            kwargs[_cache_kwarg(decoder)] = cache
        hidden = decoder(**kwargs)[0]
        flat = hidden[:, -1] if select is None else hidden.reshape(-1, hidden.shape[-1]).index_select(0, select)
        head = self.model.get_output_embeddings()
        if tokens is not None and isinstance(head, nn.Linear):
            w = head.weight.index_select(0, tokens.reshape(-1)).view(*tokens.shape, -1)  # [M, K, H]
            logits = torch.bmm(w, flat.to(w.dtype)[:, :, None])[:, :, 0]
            if head.bias is not None:
                logits = logits + head.bias.index_select(0, tokens.reshape(-1)).view(tokens.shape)
        else:
            logits = head(flat)
            if tokens is not None:
                logits = logits.gather(1, tokens)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits.float()


def _cache_kwarg(decoder: nn.Module) -> str:
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class ParticleEvaluator:
    """Base class: evaluates a causal LM under Pb particle rows at a time (or under no particle:
    rows=None runs the plain model, e.g. for an LLM judge).

    Subclasses implement `bind(rows)` (a context manager routing batch rows to particles) and may set
    `shared_layers` = (ModuleList, first adapted index) to share the layers below across particles,
    and `max_particles` (1 for full-weight particles).
    """
    shared_layers: tuple[nn.ModuleList, int] | None = None
    max_particles: int | None = None

    def __init__(self, model: nn.Module, tokenizer, *, share_prefix: bool = True):
        from .models import check_vocab

        check_vocab(tokenizer, model, "evaluator")
        speed_up(model)  # fused RMSNorm, in-place SiLU gating: the same numbers (fast_layers.py)
        self.model = model
        self.tokenizer = tokenizer
        self.runner = _Runner(model)
        self.share_prefix = share_prefix
        self.share_context = True  # score continuations of one context from its KV cache
        self._expand: tuple[int, int] | None = None  # (n, Pb) while a shared-prefix pass runs
        # id(x) -> (x, x repeated per particle): a shared-prefix pass expands each tensor once, not per layer
        self._repeated: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks: list = []
        self._token_text: dict[int, str] = {}
        self.layer_cache = LowerLayerCache()  # lower layers' outputs across calls (layer_cache.py)
        self.tail_mlp = _last_layer_mlp(model)  # computed only where something is scored (_trimmed_tail)
        self._lower_tuple_len: int | None | str = "unknown"  # what a lower layer returns (for SkipLayer)

    # -- binding -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @contextlib.contextmanager
    def bind(self, rows: torch.Tensor) -> Iterator[None]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def _call(self, rows: torch.Tensor | None, **kwargs) -> torch.Tensor:
        """One forward pass of the runner under the bound rows (full weights override this)."""
        return self.runner(**kwargs)

    def _install_prefix_hooks(self) -> None:
        if self._hooks or self.shared_layers is None:
            return
        layers, first = self.shared_layers
        for layer in layers[first:]:
            self._hooks.append(layer.register_forward_pre_hook(self._expand_hook, with_kwargs=True))

    def _expand_hook(self, module, args, kwargs):
        """Repeat per-example tensors [n, ...] to [Pb*n, ...] (particle-major) at the adapted layers."""
        if self._expand is None:
            return None
        n, pb = self._expand

        def rep(x):
            if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == n:
                hit = self._repeated.get(id(x))
                if hit is None or hit[0] is not x:  # keep x alive with its copy: ids are not reused
                    hit = self._repeated[id(x)] = (x, x.repeat(pb, *([1] * (x.dim() - 1))))
                return hit[1]
            if isinstance(x, tuple):
                return tuple(rep(y) for y in x)
            return x

        return tuple(rep(a) for a in args), {k: rep(v) for k, v in kwargs.items()}

    def _particle_chunks(self, P: int, micro_batch: int) -> list[tuple[int, int]]:
        pb = min(P, micro_batch, self.max_particles or P)
        return [(s, min(s + pb, P)) for s in range(0, P, pb)]

    # -- log-likelihood ------------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood(self, rows: torch.Tensor | None, requests: Requests, *,
                      micro_batch: int = 64) -> torch.Tensor:
        """Sum of log p(continuation | context) for every particle and request: [P, E] float64
        (P = 1 when rows is None). rows [P, D] are row views of the swarm buffer.

        When contexts are shared (the choices of a question), each context runs once per particle
        and its KV cache is reused by every continuation; otherwise each sequence runs whole."""
        P = 1 if rows is None else rows.shape[0]
        E = len(requests)
        out = torch.empty(P, E, dtype=torch.float64)
        grouped = self.share_context and len(requests.contexts) < E
        for p0, p1 in self._particle_chunks(P, micro_batch):
            pb = p1 - p0
            sub = None if rows is None else rows[p0:p1]
            with self._bound(sub):
                if grouped:
                    for ctx_idx, req_idx in _context_batches(requests, max(1, micro_batch // pb)):
                        local = {c: i for i, c in enumerate(ctx_idx)}
                        out[p0:p1, req_idx] = self._loglik_shared_context(
                            sub, pb, [requests.contexts[c] for c in ctx_idx],
                            [requests.conts[e] for e in req_idx], [local[requests.owner[e]] for e in req_idx])
                    continue
                ids, n_cont = requests.ids, requests.n_cont
                order = sorted(range(E), key=lambda e: len(ids[e]))  # similar lengths share a batch
                n = max(1, micro_batch // pb)
                for s in range(0, E, n):
                    idx = order[s:s + n]
                    out[p0:p1, idx] = self._loglik_batch(sub, pb, [ids[e] for e in idx], [n_cont[e] for e in idx])
        return out

    def _loglik_shared_context(self, rows, pb: int, ctxs: list[list[int]], conts: list[list[int]],
                               owner: list[int]) -> torch.Tensor:
        """[pb, len(conts)] log-likelihoods: contexts [n_q] prefilled once into the KV cache (left
        padded), then every continuation [n_e] attends to its own context's cached rows."""
        from transformers import DynamicCache

        dev = self.device
        n_q, n_e = len(ctxs), len(conts)
        ids0, mask0 = self._left_padded(ctxs)
        cache = DynamicCache(config=self.model.config)
        shared = self._sharing(pb)
        own = torch.tensor(owner, device=dev)
        multi = max(len(k) for k in conts) > 1
        if multi:  # a continuation's last token predicts nothing that is scored: it is not run
            kid, kmask, Tk = self._right_padded([k[:-1] for k in conts])
            full_mask = torch.cat([mask0.index_select(0, own), kmask], 1)
        # both passes are served from the lower-layer cache, or neither (the KV cache must be all real
        # or all placeholders below the adapted layers); a continuation's key includes its context
        key_ctx = self._lower_key(ids0, mask0, shared or pb == 1)
        key_cont = (self._lower_key(torch.cat([ids0.index_select(0, own), kid], 1), full_mask, shared or pb == 1,
                                    covered=Tk) if multi and key_ctx is not None else None)
        hits = self._lower_hit(key_ctx, *([key_cont] if multi else []))
        hit_ctx, hit_cont = hits[0], (hits[1] if multi else None)
        ids, mask = (ids0, mask0) if shared or pb == 1 else (ids0.repeat(pb, 1), mask0.repeat(pb, 1))
        tail = torch.arange(ids.shape[0] if not shared else pb * n_q, device=dev) * ids.shape[1] + ids.shape[1] - 1
        with self._expanding(n_q if shared else None, pb), self._lower_cached(key_ctx, hit_ctx), \
                self._trimmed_tail(tail, pb):  # only the last position's logits are used
            last = self._call(rows, input_ids=ids, attention_mask=mask,
                              position_ids=(mask.cumsum(-1) - 1).clamp(min=0), cache=cache, select=None)
        row_of = (torch.arange(pb, device=dev)[:, None] * n_q + own[None]).reshape(-1)  # [pb * n_e]
        first = torch.tensor([k[0] for k in conts], device=dev).repeat(pb)
        total = torch.log_softmax(last, -1)[row_of, first].double()  # no copy of whole-vocabulary rows
        if multi:
            # every continuation row gets its own copy of its context's cached keys and values
            lower = self.shared_layers[1] if shared else 0
            for l, layer in enumerate(cache.layers):
                idx = own if l < lower else row_of
                layer.keys, layer.values = layer.keys.index_select(0, idx), layer.values.index_select(0, idx)
            pos = mask0.sum(1).index_select(0, own)[:, None] + torch.arange(Tk, device=dev)[None]
            flat, tgt, seg = [], [], []
            for e, k in enumerate(conts):  # position j predicts token j+1; token 0 came from the context
                flat.extend(range(e * Tk, e * Tk + len(k) - 1))
                tgt.extend(k[1:])
                seg.extend([e] * (len(k) - 1))
            flat_t, tgt_t, seg_t = (torch.tensor(v, device=dev, dtype=torch.long) for v in (flat, tgt, seg))
            sel = (torch.arange(pb, device=dev)[:, None] * (n_e * Tk) + flat_t[None]).reshape(-1)
            if not shared and pb > 1:
                kid, full_mask, pos = kid.repeat(pb, 1), full_mask.repeat(pb, 1), pos.repeat(pb, 1)
            with self._expanding(n_e if shared else None, pb), self._lower_cached(key_cont, hit_cont), \
                    self._trimmed_tail(sel, pb):
                logits = self._call(rows, input_ids=kid, attention_mask=full_mask, position_ids=pos,
                                    cache=cache, select=sel)
            logp = torch.log_softmax(logits, -1).gather(1, tgt_t.repeat(pb)[:, None])[:, 0].double()
            seg_all = (torch.arange(pb, device=dev)[:, None] * n_e + seg_t[None]).reshape(-1)
            total = total.index_add(0, seg_all, logp)
        return total.view(pb, n_e).cpu()

    def _left_padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, T] ids and mask, left padded: every row's last token is at position T-1."""
        n, T = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((n, T), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, T), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, T - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _right_padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """[n, T] ids and mask, right padded: real tokens keep positions 0..len-1."""
        n, T = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((n, T), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((n, T), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, :len(s)] = 1
        return ids.to(self.device), mask.to(self.device), T

    def _forward_selected(self, rows, pb: int, ids: torch.Tensor, mask: torch.Tensor,
                          pos: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [pb * len(pos), V] at flat positions `pos` (into n*T) of every particle's copy; with
        tokens [len(pos), K] only those vocabulary entries: [pb * len(pos), K]."""
        n, T = ids.shape
        shared = self._sharing(pb)
        # particle p's copy of batch row i is row p*n + i
        sel = (torch.arange(pb, device=ids.device)[:, None] * (n * T) + pos[None]).reshape(-1)
        if tokens is not None and pb > 1:
            tokens = tokens.repeat(pb, 1)
        if not shared and pb > 1:
            ids, mask = ids.repeat(pb, 1), mask.repeat(pb, 1)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        key = self._lower_key(ids, mask, shared or pb == 1)
        with self._expanding(n if shared else None, pb), self._lower_cached(key, self._lower_hit(key)[0]), \
                self._trimmed_tail(sel, pb):
            return self._call(rows, input_ids=ids, attention_mask=mask, position_ids=position_ids,
                              cache=None, select=sel, tokens=tokens)

    @contextlib.contextmanager
    def _trimmed_tail(self, sel: torch.Tensor, pb: int) -> Iterator[None]:
        """Run the last decoder layer's MLP only at the flat positions `sel` (particle-major indices into
        the last layer's [B*T] rows): nothing else reads that layer's output, and an MLP is position-wise,
        so the other positions get zeros instead of values nobody uses. The MLP is most of a layer's
        arithmetic, so this saves most of one layer per pass."""
        if self.tail_mlp is None:
            yield
            return
        shape: list = []

        def pick(module, args):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] * x.shape[1] <= int(sel.max()):
                return None
            shape[:] = [x.shape]
            return (x.reshape(-1, x.shape[-1]).index_select(0, sel).view(pb, -1, x.shape[-1]), *args[1:])

        def spread(module, args, out):
            if not shape:
                return None
            (B, T, _), y = shape.pop(), out
            full = y.new_zeros(B * T, y.shape[-1]).index_copy_(0, sel, y.reshape(-1, y.shape[-1]))
            return full.view(B, T, -1)
        handles = [self.tail_mlp.register_forward_pre_hook(pick), self.tail_mlp.register_forward_hook(spread)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _lower_key(self, ids: torch.Tensor, mask: torch.Tensor, per_example: bool,
                   covered: int | None = None) -> BatchKeys | None:
        """The cross-call cache keys of a batch ids, mask [n, T] whose lower layers see one row per example
        (per_example) and whose hidden states cover the last `covered` columns (default all), or None
        when the cache is off: nothing is shared below the adapted layers, the limit is 0, or rows are
        repeated per particle (share_prefix off)."""
        if (not per_example or self.shared_layers is None or self.shared_layers[1] == 0
                or self.layer_cache.limit_bytes <= 0):
            return None
        return self.layer_cache.keys(ids, mask, ids.shape[1] if covered is None else covered)

    def _lower_hit(self, *keys: BatchKeys | None) -> list[torch.Tensor | None]:
        """The cached states [n, T_h, H] of each batch, served together: all, or None for each."""
        if any(k is None for k in keys):
            return [None] * len(keys)
        got = self.layer_cache.get(*keys)  # entries exist only once a recording pass saw the lower layers
        return [None] * len(keys) if got is None or self._lower_tuple_len == "unknown" else got

    @contextlib.contextmanager
    def _lower_cached(self, key: BatchKeys | None, hit: torch.Tensor | None) -> Iterator[None]:
        """With a cached `hit` for this batch: the layers below the first adapted one are skipped (SkipLayer)
        and the first adapted layer gets the cached hidden states. Without: the batch runs normally and
        its examples' states entering the first adapted layer are recorded under `key` (None: neither)."""
        if key is None:
            yield
            return
        layers, first = self.shared_layers
        handles = []
        if hit is None:
            def record(module, args, kwargs):
                self.layer_cache.put(key, args[0] if args else kwargs["hidden_states"])

            def output_kind(module, args, out):
                self._lower_tuple_len = len(out) if isinstance(out, tuple) else None
            handles.append(layers[first].register_forward_pre_hook(record, with_kwargs=True, prepend=True))
            handles.append(layers[first - 1].register_forward_hook(output_kind))
            try:
                yield
            finally:
                for h in handles:
                    h.remove()
            return

        def serve(module, args, kwargs):
            if args:
                return (hit, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hit}
        originals = [layers[i] for i in range(first)]
        for i, layer in enumerate(originals):
            layers[i] = SkipLayer(layer, i, self._lower_tuple_len)
        handles.append(layers[first].register_forward_pre_hook(serve, with_kwargs=True, prepend=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            for i, layer in enumerate(originals):
                layers[i] = layer

    @torch.inference_mode()
    def next_token_logits(self, rows: torch.Tensor | None, contexts: Sequence[Sequence[int]],
                          candidates: Sequence[Sequence[int]], *, micro_batch: int = 64) -> torch.Tensor:
        """Logits of candidate next tokens after each context: [P, N, K] float64, K the most candidates
        of any context, -inf where a context has fewer (P = 1 when rows is None).

        Only the K candidate rows of the LM head are computed at each context's last position (no
        projection onto the vocabulary): a softmax over one context's candidates equals its log-probs
        renormalised among them, but the logits are not log-probabilities of the whole vocabulary."""
        P = 1 if rows is None else rows.shape[0]
        N = len(contexts)
        if len(candidates) != N:
            raise ValueError("next_token_logits: contexts and candidates differ in length")
        K = max(len(c) for c in candidates)
        cand = torch.zeros(N, K, dtype=torch.long)
        pad = torch.ones(N, K, dtype=torch.bool)
        for i, c in enumerate(candidates):
            cand[i, :len(c)] = torch.tensor(list(c), dtype=torch.long)
            pad[i, :len(c)] = False
        out = torch.empty(P, N, K, dtype=torch.float64)
        for p0, p1, sub, idx in self._length_batches(rows, [len(c) for c in contexts], micro_batch):
            ids, mask, T = self._right_padded([list(contexts[i]) for i in idx])
            last = torch.tensor([j * T + len(contexts[i]) - 1 for j, i in enumerate(idx)], device=self.device)
            lg = self._forward_selected(sub, p1 - p0, ids, mask, last, cand[idx].to(self.device))
            out[p0:p1, idx] = lg.view(p1 - p0, len(idx), K).double().cpu()
        return out.masked_fill_(pad[None], -torch.inf)

    def _length_batches(self, rows: torch.Tensor | None, lengths: Sequence[int], micro_batch: int):
        """Yield (p0, p1, rows[p0:p1], item indices) with those rows bound: particle chunks times batches
        of about micro_batch / (p1 - p0) items, items of similar length together (less padding)."""
        P = 1 if rows is None else rows.shape[0]
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        for p0, p1 in self._particle_chunks(P, micro_batch):
            sub = None if rows is None else rows[p0:p1]
            n = max(1, micro_batch // (p1 - p0))
            with self._bound(sub):
                for s in range(0, len(order), n):
                    yield p0, p1, sub, order[s:s + n]

    def _loglik_batch(self, rows, pb: int, seqs: list[list[int]], n_cont: list[int]) -> torch.Tensor:
        ids, mask, T = self._right_padded(seqs)
        n, dev = len(seqs), self.device
        # positions predicting each scored token, and the tokens themselves
        pos, tgt, seg = [], [], []
        for i, (s, k) in enumerate(zip(seqs, n_cont)):
            pos.extend(range(i * T + len(s) - k - 1, i * T + len(s) - 1))
            tgt.extend(s[len(s) - k:])
            seg.extend([i] * k)
        pos_t, tgt_t, seg_t = (torch.tensor(v, device=dev) for v in (pos, tgt, seg))
        logits = self._forward_selected(rows, pb, ids, mask, pos_t)
        logp = torch.log_softmax(logits, -1).gather(-1, tgt_t.repeat(pb)[:, None])[:, 0].double()
        seg_all = (torch.arange(pb, device=dev)[:, None] * n + seg_t[None]).reshape(-1)
        res = torch.zeros(pb * n, dtype=torch.float64, device=dev).index_add_(0, seg_all, logp)
        return res.view(pb, n).cpu()

    @torch.inference_mode()
    def logits(self, rows: torch.Tensor | None, seqs: Sequence[Sequence[int]], *,
               micro_batch: int = 64) -> list[torch.Tensor]:
        """Next-token logits at every position of every sequence: one [P, len(seq), V] float32 tensor
        per sequence (for checks and debugging; scorers use `loglikelihood`, which runs the LM head
        only where something is scored)."""
        P = 1 if rows is None else rows.shape[0]
        out: list[list[torch.Tensor]] = [[] for _ in seqs]
        for p0, p1 in self._particle_chunks(P, micro_batch):
            pb = p1 - p0
            sub = None if rows is None else rows[p0:p1]
            n = max(1, micro_batch // pb)
            with self._bound(sub):
                for s in range(0, len(seqs), n):
                    batch = [list(x) for x in seqs[s:s + n]]
                    ids, mask, T = self._right_padded(batch)
                    pos = torch.cat([torch.arange(len(x)) + i * T for i, x in enumerate(batch)]).to(self.device)
                    lg = self._forward_selected(sub, pb, ids, mask, pos).view(pb, pos.numel(), -1).cpu()
                    start = 0
                    for i, x in enumerate(batch):
                        out[s + i].append(lg[:, start:start + len(x)])
                        start += len(x)
        return [torch.cat(parts) for parts in out]

    # -- generation ----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, rows: torch.Tensor | None, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                 stop: Sequence[str] = (), micro_batch: int = 64) -> list[list[str]]:
        """Greedy continuations of tokenised prompts: texts [P][E] (special tokens removed, cut at the
        first stop string). Uses the KV cache; stops early when every row hit EOS or a stop string."""
        P = 1 if rows is None else rows.shape[0]
        E = len(prompts)
        out: list[list[str]] = [[""] * E for _ in range(P)]
        for p0, p1, sub, idx in self._length_batches(rows, [len(p) for p in prompts], micro_batch):
            texts = self._generate_batch(sub, p1 - p0, [list(prompts[e]) for e in idx], max_new_tokens, stop)
            for p in range(p1 - p0):
                for j, e in enumerate(idx):
                    out[p0 + p][e] = texts[p * len(idx) + j]
        return out

    def _generate_batch(self, rows, pb: int, prompts: list[list[int]], max_new: int,
                        stop: Sequence[str]) -> list[str]:
        from transformers import DynamicCache

        dev, tok = self.device, self.tokenizer
        n = len(prompts)
        ids, mask = self._left_padded(prompts)  # every row's next token is at position T
        cache = DynamicCache(config=self.model.config)
        shared = self._sharing(pb) and hasattr(cache, "layers")
        if not shared and pb > 1:
            ids, mask = ids.repeat(pb, 1), mask.repeat(pb, 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with self._expanding(n if shared else None, pb):
            logits = self._call(rows, input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, select=None)
        if shared and pb > 1:
            # the layers below the first adapted one cached n rows: repeat them for each particle
            _, first = self.shared_layers
            for layer in cache.layers[:first]:
                layer.keys = layer.keys.repeat(pb, 1, 1, 1)
                layer.values = layer.values.repeat(pb, 1, 1, 1)
            mask = mask.repeat(pb, 1)
            pos = pos.repeat(pb, 1)
        B = pb * n
        eos = set(_as_list(tok.eos_token_id) + _as_list(getattr(self.model.generation_config, "eos_token_id", None)))
        generated = torch.full((B, max_new), tok.pad_token_id, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        last = pos[:, -1:]
        lengths = torch.zeros(B, dtype=torch.long)
        stop_chars = {s[-1] for s in stop if s}
        for step in range(max_new):
            nxt = logits.argmax(-1).cpu()
            nxt[done] = tok.pad_token_id
            generated[:, step] = nxt
            lengths[~done] += 1
            for b in (~done).nonzero()[:, 0].tolist():
                t = int(nxt[b])
                if t in eos:
                    done[b] = True
                    lengths[b] -= 1
                elif stop_chars and any(c in self._piece(t) for c in stop_chars):
                    text = tok.decode(generated[b, :lengths[b]], skip_special_tokens=True)
                    if any(s in text for s in stop):
                        done[b] = True
            if bool(done.all()) or step == max_new - 1:
                break
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=dev)], 1)
            last = last + 1
            logits = self._call(rows, input_ids=nxt[:, None].to(dev), attention_mask=mask, position_ids=last,
                                cache=cache, select=None)
        texts = tok.batch_decode([generated[b, :lengths[b]] for b in range(B)], skip_special_tokens=True)
        return [_cut(t, stop) for t in texts]

    def _piece(self, token: int) -> str:
        if token not in self._token_text:
            self._token_text[token] = self.tokenizer.decode([token])
        return self._token_text[token]

    # -- helpers --------------------------------------------------------------------------------
    def _sharing(self, pb: int) -> bool:
        return self.share_prefix and self.shared_layers is not None and pb > 1

    @contextlib.contextmanager
    def _bound(self, rows: torch.Tensor | None) -> Iterator[None]:
        if rows is None:
            yield
            return
        if rows.device != self.device:
            rows = rows.to(self.device)
        with self.bind(rows):
            yield

    @contextlib.contextmanager
    def _expanding(self, n: int | None, pb: int) -> Iterator[None]:
        if n is not None:
            self._install_prefix_hooks()
        self._expand = (n, pb) if n is not None else None
        self._repeated = {}
        try:
            yield
        finally:
            self._expand = None
            self._repeated = {}


def _last_layer_mlp(model: nn.Module) -> nn.Module | None:
    """The MLP (`mlp` submodule: position-wise, [B, T, H] -> [B, T, H]) of the decoder's last layer, or
    None when the decoder has no layer list of config.num_hidden_layers layers with one."""
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        return None
    n = getattr(model.config, "num_hidden_layers", None)
    for mod in decoder.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and n:
            mlp = getattr(mod[-1], "mlp", None)
            return mlp if isinstance(mlp, nn.Module) else None
    return None


def _as_list(x) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [int(x)]


def _cut(text: str, stop: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:cut]



class PlainEvaluator(ParticleEvaluator):
    """The model itself, with no particles (e.g. an LLM judge): call with rows=None."""

    @contextlib.contextmanager
    def bind(self, rows: torch.Tensor) -> Iterator[None]:
        raise ValueError("PlainEvaluator runs the unadapted model: pass rows=None")
        yield


def _context_batches(requests: Requests, rows: int) -> list[tuple[list[int], list[int]]]:
    """Group requests by context (contexts sorted by length) into batches of about `rows` requests:
    [(context indices, request indices)]; a context's requests never straddle two batches."""
    by_ctx: dict[int, list[int]] = {}
    for e, o in enumerate(requests.owner):
        by_ctx.setdefault(o, []).append(e)
    batches, ctx, req = [], [], []
    for c in sorted(by_ctx, key=lambda c: len(requests.contexts[c])):
        if req and len(req) + len(by_ctx[c]) > rows:
            batches.append((ctx, req))
            ctx, req = [], []
        ctx.append(c)
        req.extend(by_ctx[c])
    if req:
        batches.append((ctx, req))
    return batches
