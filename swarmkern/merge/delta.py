"""The ΔW = B·A space for LoRA experts.

Merging lora_A and lora_B separately (the paper's space) does not merge the experts' weight updates:
(Σ w_k B_k)(Σ w_k A_k) has cross terms B_i A_j. In ΔW space each module's update ΔW_k = B_k A_k
[out, in] is merged instead. A linear merge Σ w_k ΔW_k has rank <= K*r and is exactly a LoRA of rank K*r
(concatenate the w_k B_k and the A_k); elementwise merges (TIES, DARE, Breadcrumbs) are full rank in
general. To keep the pool's layout (so the same utility can score the result and the swarm's exporter can
save it), the merged ΔW is re-factorised by a truncated SVD to the pool's rank r:
    ΔW ≈ U_r S_r V_r^T,  B' = U_r S_r^(1/2),  A' = S_r^(1/2) V_r^T
(the balanced split keeps A' and B' on one scale). The fraction of ||ΔW||_F^2 kept is reported; it is 1
when the merge has rank <= r. `factorize(..., rank)` with a larger rank (<= K*r for linear merges: then
exact) and `delta_weights` (the full ΔW per module, with the LoRA scaling) serve exports outside the layout.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .segments import LoraPair, Segment, lora_pairs

__all__ = ["factorize", "delta_merge", "delta_weights", "module_deltas"]


def factorize(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Best rank-`rank` factorisation of delta [out, in] (Eckart–Young): returns A [rank, in],
    B [out, rank] (B @ A ≈ delta; zero-padded when rank > min(out, in)), the squared Frobenius norm kept
    and the total. fp32 math."""
    d = delta.float()
    U, S, Vh = torch.linalg.svd(d, full_matrices=False)
    q = min(rank, S.numel())
    root = S[:q].sqrt()
    A = torch.zeros((rank, d.shape[1]), dtype=torch.float32, device=d.device)
    B = torch.zeros((d.shape[0], rank), dtype=torch.float32, device=d.device)
    A[:q] = root.unsqueeze(1) * Vh[:q]
    B[:, :q] = U[:, :q] * root.unsqueeze(0)
    energy = S.square()
    return A, B, float(energy[:q].sum()), float(energy.sum())


def module_deltas(experts: torch.Tensor, pair: LoraPair) -> torch.Tensor:
    """ΔW_k = B_k @ A_k of every expert for one module: experts [K, D] -> [K, out * in] (fp32,
    in B @ A orientation; no LoRA scaling, which all experts of a pool share)."""
    K = experts.shape[0]
    A = experts[:, pair.a.offset:pair.a.stop].float().reshape(K, *pair.a.shape)
    B = experts[:, pair.b.offset:pair.b.stop].float().reshape(K, *pair.b.shape)
    return torch.bmm(B, A).reshape(K, -1)


def delta_merge(experts: torch.Tensor, segments: Sequence[Segment],
                merge_block: Callable[[torch.Tensor, Segment], torch.Tensor],
                collect: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, float]:
    """Merge K LoRA experts in ΔW space. experts [K, D]; merge_block(block [K, n], segment) -> [n] is
    applied to each module's stacked ΔW (segment: "<module>.delta", shape [out, in], offsets counted in
    ΔW space so seeded methods get distinct streams) and to every non-LoRA tensor as stored.
    Returns the merged row [D] in experts' dtype (each ΔW re-factorised to the pool's rank) and the
    fraction of the merged ΔWs' squared Frobenius norm kept by the factorisation. With `collect`, the
    merged ΔW of every module before factorisation is stored there as "<module>.weight" (fp32, B @ A
    orientation, no LoRA scaling)."""
    pairs, _ = lora_pairs(segments)
    if not pairs:
        raise ValueError("space 'delta' needs LoRA experts (lora_A / lora_B tensor pairs); these have none")
    by_a = {p.a.name: p for p in pairs}
    in_pair = {p.b.name for p in pairs} | set(by_a)
    row = torch.empty(experts.shape[1], dtype=experts.dtype, device=experts.device)
    kept = total = 0.0
    voffset = 0
    for seg in segments:
        if seg.name in by_a:
            p = by_a[seg.name]
            deltas = module_deltas(experts, p)
            out_dim, in_dim = p.b.shape[0], p.a.shape[1]
            vseg = Segment(f"{p.module}.delta", (out_dim, in_dim), voffset, out_dim * in_dim)
            merged = merge_block(deltas, vseg).reshape(out_dim, in_dim)
            if collect is not None:
                collect[f"{p.module}.weight"] = (merged.T if p.transpose else merged).contiguous()
            A, B, k_, t_ = factorize(merged, p.rank)
            row[p.a.offset:p.a.stop] = A.reshape(-1).to(row.dtype)
            row[p.b.offset:p.b.stop] = B.reshape(-1).to(row.dtype)
            kept, total = kept + k_, total + t_
            voffset += vseg.numel
        elif seg.name not in in_pair:
            vseg = Segment(seg.name, seg.shape, voffset, seg.numel)
            row[seg.offset:seg.stop] = merge_block(experts[:, seg.offset:seg.stop].float(), vseg).to(row.dtype)
            voffset += seg.numel
    return row, (kept / total if total > 0 else 1.0)


def delta_weights(row: torch.Tensor, segments: Sequence[Segment], scaling: float = 1.0) -> dict[str, torch.Tensor]:
    """The full weight update of every LoRA module of one row [D]: {"<module>.weight": scaling * B @ A}
    (transposed for embedding LoRAs, as PEFT's get_delta_weight does), fp32. scaling = lora_alpha / r
    (or / sqrt(r) with rsLoRA), from the adapter config."""
    pairs, _ = lora_pairs(segments)
    out = {}
    for p in pairs:
        A = row[p.a.offset:p.a.stop].float().reshape(p.a.shape)
        B = row[p.b.offset:p.b.stop].float().reshape(p.b.shape)
        d = scaling * (B @ A)
        out[f"{p.module}.weight"] = (d.T if p.transpose else d).contiguous()
    return out
