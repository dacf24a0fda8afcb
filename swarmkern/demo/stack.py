"""A causal LM split in two for cheap LoRA work on CPU: the frozen lower layers run once per example
(their outputs are cached), only the top `n_top` layers carry LoRA adapters and are run per particle
(or trained). Multiple choice is scored at one position per question: the first token where the
choices' tokenisations diverge.

Works with any Llama-style `transformers` model whose decoder layers take
(hidden_states, attention_mask, position_ids, position_embeddings=...) - Llama, Mistral, Qwen2, SmolLM.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .tasks import Example

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """`base(x) + scale * (x @ A^T) @ B^T`, with A [P, r, in], B [P, out, r] for P particles.

    The input's leading dimension must be a multiple of P: rows [i*n, (i+1)*n) use particle i. With
    A = B = None it is the plain base layer. The adapter is *set*, not owned, so one module serves
    training (A, B are leaf parameters) and batched scoring (A, B are views of swarm rows)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.A: torch.Tensor | None = None
        self.B: torch.Tensor | None = None
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.A is None:
            return y
        p = self.A.shape[0]
        xs = x.reshape(p, -1, x.shape[-1]).to(self.A.dtype)
        delta = torch.bmm(torch.bmm(xs, self.A.transpose(1, 2)), self.B.transpose(1, 2))
        return y + (self.scale * delta).reshape(y.shape).to(y.dtype)


@dataclass
class Encoded:
    """A tokenised multiple-choice set, right-padded and sorted by length.

    ids [N, T] (pad 0), lengths [N], choice_ids [N, K] (token scored for each choice, -1 where the
    question has fewer choices), answer [N], skills [N] (each question's skill)."""
    ids: torch.Tensor
    lengths: torch.Tensor
    choice_ids: torch.Tensor
    answer: torch.Tensor
    skills: list[str]


def encode(tokenizer, examples: list[Example], prompt: str, drop_ambiguous: bool = False) -> Encoded:
    """Tokenise each question with `prompt` (a format string with {question}) followed by each choice;
    the model input is the common prefix of the choices' token sequences and each choice is scored by
    its token right after it. A question whose choices do not diverge at one shared position (e.g.
    "hot"/"high" under a character tokenizer) is an error, or skipped with `drop_ambiguous`."""
    rows, choices, answers, skills = [], [], [], []
    k_max = max(len(e.choices) for e in examples)
    for ex in examples:
        text = prompt.format(question=ex.question)
        seqs = [tokenizer.encode(text + " " + c, add_special_tokens=False) for c in ex.choices]
        d = 0
        while all(d < len(s) for s in seqs) and len({s[d] for s in seqs}) == 1:
            d += 1
        firsts = [s[d] if d < len(s) else -1 for s in seqs]
        if -1 in firsts or len(set(firsts)) != len(firsts):
            if drop_ambiguous:
                continue
            raise ValueError(f"choices {ex.choices} of {ex.question!r} do not start with distinct tokens")
        rows.append(seqs[0][:d])
        choices.append(firsts + [-1] * (k_max - len(firsts)))
        answers.append(ex.answer)
        skills.append(ex.skill)
    if not rows:
        raise ValueError("no question left to score (every one had ambiguous choices)")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    t = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    for j, i in enumerate(order):
        ids[j, :len(rows[i])] = torch.tensor(rows[i])
    return Encoded(ids, torch.tensor([len(rows[i]) for i in order]), torch.tensor([choices[i] for i in order]),
                   torch.tensor([answers[i] for i in order]), [skills[i] for i in order])


class SplitModel:
    """A Llama-style causal LM with LoRA slots on the top `n_top` layers.

    `lower(enc)` caches the hidden states entering the top layers ([N, T, H]); `top(h, lengths)` runs
    the top layers and returns the final hidden state at each row's last position ([rows, H]).
    """

    def __init__(self, model: nn.Module, n_top: int, targets: tuple[str, ...] = TARGET_MODULES,
                 dtype: torch.dtype = torch.float32):
        self.model = model.eval().to(dtype)
        for p in self.model.parameters():
            p.requires_grad_(False)
        inner = model.model
        self.layers = list(inner.layers)
        if not 1 <= n_top <= len(self.layers):
            raise ValueError(f"n_top must be in 1..{len(self.layers)}, got {n_top}")
        self.n_top = n_top
        self.first_top = len(self.layers) - n_top
        self.dtype = dtype
        self.slots: dict[str, LoRALinear] = {}
        for i in range(self.first_top, len(self.layers)):
            for parent_name, parent in self.layers[i].named_modules():
                for child_name, child in list(parent.named_children()):
                    if child_name in targets and isinstance(child, nn.Linear):
                        slot = LoRALinear(child)
                        setattr(parent, child_name, slot)
                        full = f"model.layers.{i}.{parent_name + '.' if parent_name else ''}{child_name}"
                        self.slots[full] = slot

    # -- adapters -------------------------------------------------------------------------------
    def set_adapter(self, tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None, scale: float = 1.0) -> None:
        """tensors: {module name: (A [P, r, in], B [P, out, r])}; None removes every adapter."""
        for name, slot in self.slots.items():
            if tensors is None:
                slot.A = slot.B = None
            else:
                slot.A, slot.B = tensors[name]
                slot.scale = scale

    # -- forward pieces -------------------------------------------------------------------------
    def _positions(self, h: torch.Tensor):
        pos = torch.arange(h.shape[1]).unsqueeze(0)
        return pos, self.model.model.rotary_emb(h, position_ids=pos)

    @torch.no_grad()
    def lower(self, enc: Encoded, batch: int = 64) -> torch.Tensor:
        """Hidden states entering layer `first_top` for every row of `enc`: [N, T, H] in self.dtype.
        (The lower layers carry no LoRA slots, so any adapter that is set stays set and unused.)"""
        out = []
        for s in range(0, len(enc.ids), batch):
            ids = enc.ids[s:s + batch, :int(enc.lengths[s:s + batch].max())]
            h = self.model.model.embed_tokens(ids)
            pos, pe = self._positions(h)
            for layer in self.layers[:self.first_top]:
                h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
            out.append(torch.nn.functional.pad(h, (0, 0, 0, enc.ids.shape[1] - h.shape[1])))
        return torch.cat(out)

    def top(self, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Run the top layers on h [rows, T, H] and return the normed state at each last position
        [rows, H]; rows = P * n when P particle adapters are set (lengths [n] repeat per particle)."""
        h = h[:, :int(lengths.max())].to(self.dtype)
        pos, pe = self._positions(h)
        for layer in self.layers[self.first_top:]:
            h = layer(h, attention_mask=None, position_ids=pos, position_embeddings=pe)
        last = (lengths - 1).repeat(h.shape[0] // len(lengths))
        return self.model.model.norm(h[torch.arange(h.shape[0]), last])

    def head_rows(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head.weight[token_ids.clamp(min=0)]

    # -- scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def choice_logits(self, h: torch.Tensor, enc: Encoded, n_particles: int, batch: int = 50) -> torch.Tensor:
        """Logits of each choice's scored token: [P, N, K] (-inf for missing choices). Needs the
        adapter for n_particles particles to be set (or none, with n_particles=1)."""
        outs = []
        for s in range(0, len(enc.ids), batch):
            hb, lb = h[s:s + batch], enc.lengths[s:s + batch]
            ch = enc.choice_ids[s:s + batch]
            z = self.top(hb.repeat(n_particles, 1, 1), lb).reshape(n_particles, len(lb), -1)
            w = self.head_rows(ch).to(z.dtype)                                 # [n, K, H]
            logit = torch.einsum("pnh,nkh->pnk", z, w).float()
            outs.append(logit.masked_fill(ch.unsqueeze(0) < 0, float("-inf")))
        return torch.cat(outs, dim=1)

    def accuracy(self, h: torch.Tensor, enc: Encoded, n_particles: int = 1) -> torch.Tensor:
        """Fraction of questions whose right choice gets the highest logit: [P]."""
        logits = self.choice_logits(h, enc, n_particles)
        return (logits.argmax(-1) == enc.answer.unsqueeze(0)).float().mean(-1)
