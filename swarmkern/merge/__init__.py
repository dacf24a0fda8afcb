"""Composition baselines: the ways of combining K experts that Model Swarms is compared with.

Pure tensor math over the flat [K, D] expert buffer (one module per method, registered by name) and a
registry for `swarmkern compare`. Functions:
    magnitude_trim, outlier_trim, dare_keep_mask, dare_drop        (sparsify.py)
    task_arithmetic, ties_merge, elect_sign, disjoint_merge, dare_merge, breadcrumbs_merge,
    slerp, spherical_mean                                          (one module each)
    factorize, delta_merge, delta_weights                          (delta.py: the ΔW = B·A space)
Methods (YAML `compare.methods` entries, see docs/COMPARE.md): available_methods().
"""
from .base import MergeContext, MergeMethod, MethodResult, StaticMerge
from .breadcrumbs import breadcrumbs_merge
from .dare import dare_merge
from .delta import delta_merge, delta_weights, factorize
from .registry import METHODS, available_methods, parse_method_config, register_method
from .segments import LoraPair, Segment, lora_pairs, segments_of, whole
from .slerp import slerp, spherical_mean
from .sparsify import dare_drop, dare_keep_mask, magnitude_trim, outlier_trim
from .task_arithmetic import task_arithmetic
from .ties import disjoint_merge, elect_sign, ties_merge

__all__ = ["MergeContext", "MergeMethod", "MethodResult", "StaticMerge", "METHODS", "available_methods",
           "parse_method_config", "register_method", "Segment", "LoraPair", "lora_pairs", "segments_of",
           "whole", "magnitude_trim", "outlier_trim", "dare_keep_mask", "dare_drop", "task_arithmetic",
           "ties_merge", "elect_sign", "disjoint_merge", "dare_merge", "breadcrumbs_merge", "slerp",
           "spherical_mean", "factorize", "delta_merge", "delta_weights"]
