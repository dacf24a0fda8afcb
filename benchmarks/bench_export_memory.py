"""Peak memory of `swarmkern export --merged` against the size of the model it writes.

    python benchmarks/bench_export_memory.py            # writes benchmarks/results/export_memory_cpu.md
    python benchmarks/bench_export_memory.py --hidden 512 --layers 4

Builds a random Llama (fp32, saved in 100 MB shards) and one LoRA adapter for it, lays them out as a
finished run (best/ + summary.json), then runs the real CLI in a fresh process twice: `--no-verify`
(the streamed merge alone) and with the logits check (the unmerged PEFT model, then the merged one,
one after the other). The peak resident memory of each process (VmHWM) is compared with the
model's size on disk and with the baseline of a process that only imports the CLI and transformers.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

# VmHWM (the peak resident set of this process image; unlike ru_maxrss it is not inherited across fork+exec)
_HWM = "print('PEAK_KB', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0], file=sys.stderr)"

_PEAK = """
import runpy, sys
sys.argv = ["swarmkern", *sys.argv[1:]]
try:
    runpy.run_module("swarmkern", run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
""" + _HWM + """
sys.exit(code or 0)
"""

_BASELINE = """
import sys
import swarmkern.cli, swarmkern.export.merged, transformers, peft, safetensors.torch
from transformers import AutoModelForCausalLM
""" + _HWM


def _peak(args: list[str]) -> float:
    done = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return _kb(done.stderr)


def _kb(stderr: str) -> float:
    line = [x for x in stderr.splitlines() if x.startswith("PEAK_KB")][-1]
    return int(line.split()[1]) / 1024  # MiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_memory_cpu.md"))
    a = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from swarmkern.testing import char_tokenizer, write_lora_experts

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.hidden * 11 // 4,
                          num_hidden_layers=a.layers, num_attention_heads=max(1, a.hidden // 64),
                          num_key_value_heads=max(1, a.hidden // 64), tie_word_embeddings=False)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(str(tmp / "base"), max_shard_size="100MB")
        del model
        char_tokenizer(tmp / "base")
        run = tmp / "run"
        write_lora_experts(tmp / "base", run, 1, r=8, std=0.02)
        (run / "expert_0").rename(run / "best")
        (run / "summary.json").write_text(json.dumps({"best_dev_utility": None}))
        disk = sum(f.stat().st_size for f in (tmp / "base").glob("*.safetensors")) / 2**20

        base = subprocess.run([sys.executable, "-c", _BASELINE], capture_output=True, text=True)
        baseline = _kb(base.stderr)
        common = ["export", str(run), "--base-model", str(tmp / "base"), "--no-progress", "--max-shard-size", "100MB"]
        stream = _peak([*common, "--merged", str(tmp / "m1"), "--no-verify"])
        checked = _peak([*common, "--merged", str(tmp / "m2")])

    lines = [
        "# Peak memory of `swarmkern export --merged` (CPU)", "",
        f"Command: `python benchmarks/bench_export_memory.py --hidden {a.hidden} --layers {a.layers} --vocab {a.vocab}`", "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}.", "",
        f"Model: random Llama, {n_params / 1e6:.0f}M parameters, fp32, {disk:.0f} MiB on disk in 100 MB shards; "
        "one LoRA adapter (r = 8, q_proj and v_proj of every layer); output in 100 MB shards, fp32.", "",
        "| process | peak RSS (MiB) | above the import baseline (MiB) | of the model's size |",
        "| --- | ---: | ---: | ---: |",
        f"| imports only (CLI, transformers, peft) | {baseline:.0f} | — | — |",
        f"| export --merged --no-verify (streamed merge) | {stream:.0f} | {stream - baseline:.0f} | "
        f"{(stream - baseline) / disk:.2f}x |",
        f"| export --merged (merge + logits check) | {checked:.0f} | {checked - baseline:.0f} | "
        f"{(checked - baseline) / disk:.2f}x |", "",
        "The streamed merge holds one tensor and at most one output shard besides the adapter; the check "
        "holds one model at a time (the unmerged PEFT model, freed before the merged one is loaded).", ""]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
