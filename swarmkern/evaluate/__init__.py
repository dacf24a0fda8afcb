"""Batched evaluation of many particles on one causal LM (LoRA or full weights); see base.py."""
from .base import ParticleEvaluator, Requests, encode_requests
from .lora import LoraEvaluator, UnsupportedAdapter, lora_targets

__all__ = ["ParticleEvaluator", "Requests", "encode_requests", "LoraEvaluator", "UnsupportedAdapter",
           "lora_targets"]
