"""Hugging Face Hub ids wherever a model, adapter or dataset path is accepted.

    resolve_local("org/name@v1.0", what="experts.paths[0]", kind="expert")  -> Path of a local snapshot

A value is first taken as a local path: if it exists, it wins (nothing is looked up). Otherwise a value
shaped like a Hub id (`org/name` or `org/name@revision`; the revision a branch, tag or commit) is
looked up in the local Hugging Face cache, and only then downloaded (with huggingface_hub's progress
bars). Offline (HF_HUB_OFFLINE=1, or no network) a missing id is a one-line error naming the id, the
revision and the cache directory it looked in; so are gated and unknown repositories and a snapshot
without the files its role needs (an adapter without adapter_config.json, a model without weights).

Every id resolved in this process is remembered with the commit it resolved to (`resolved_ids()`),
and a run writes that list into summary.json (`hub_ids`), so it can be reproduced exactly by pinning
each id to its commit (`org/name@<commit>`).
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

__all__ = ["HubError", "HubRef", "parse_hub_id", "is_hub_id", "resolve_local", "resolved_ids", "clear_resolved",
           "hub_cache_dir", "hub_offline", "keep_hub_id", "cached_snapshot", "record_resolved"]

Kind = Literal["model", "tokenizer", "adapter", "expert", "dataset", "any"]

# org/name[@revision]: the Hub's own character set for names; a revision may hold slashes (refs/pr/1).
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<rev>[A-Za-z0-9][\w./-]*))?$")
_WEIGHTS = ("*.safetensors", "*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                    "spiece.model")
# What a model or adapter download fetches: configs, tokenizer files and weights (not ONNX, GGUF, TF, Flax).
_MODEL_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.tiktoken", "*.jinja", "*.md"]


class HubError(ValueError):
    """A Hub id that cannot be resolved (offline and not cached, gated, unknown, wrong layout); one line."""


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None  # None: the default branch

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class Resolved:
    """One resolved id, as summary.json records it."""
    id: str
    revision: str
    commit: str
    repo_type: str
    role: str
    source: str  # "cache" or "download"


_RESOLVED: dict[tuple[str, str, str | None], Resolved] = {}
_LOCK = threading.Lock()


def parse_hub_id(value: str) -> HubRef | None:
    """"org/name" / "org/name@rev" -> HubRef; anything else (absolute, ./relative, ~, one name) -> None."""
    if not isinstance(value, str):
        return None
    m = _HUB_ID.match(value.strip())
    if m is None or value.startswith((".", "~")):
        return None
    return HubRef(m["repo"], m["rev"])


def is_hub_id(value: object) -> bool:
    return isinstance(value, str) and parse_hub_id(value) is not None


def keep_hub_id(value: object, base: str | Path) -> bool:
    """Whether a config value should stay a Hub id rather than become a path under `base` (the config
    file's directory): it is shaped like one and no such path exists there."""
    return is_hub_id(value) and not (Path(base) / str(value).split("@")[0]).exists() and not Path(str(value)).exists()


def hub_cache_dir() -> Path:
    """The hub cache in use now (read at call time, so HF_HOME / HF_HUB_CACHE set later count)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or _truthy("HF_HUB_OFFLINE") or _truthy("TRANSFORMERS_OFFLINE")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def cached_snapshot(ref: HubRef, repo_type: str = "model") -> Path | None:
    """The snapshot directory of `ref` in the local Hub cache, or None when it is not there."""
    return _from_cache(ref, repo_type, hub_cache_dir())


def record_resolved(ref: HubRef, repo_type: str, commit: str, role: str, source: str) -> None:
    """Remember an id this process resolved (resolved_ids(); summary.json's hub_ids)."""
    with _LOCK:
        _RESOLVED[(repo_type, ref.repo_id, ref.revision)] = Resolved(
            id=ref.repo_id, revision=ref.revision or "main", commit=commit, repo_type=repo_type, role=role,
            source=source)


def _from_cache(ref: HubRef, repo_type: str, cache: Path) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(ref.repo_id, repo_type=repo_type, revision=ref.revision, cache_dir=cache,
                                      local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None


def _download(ref: HubRef, repo_type: str, cache: Path, kind: Kind, what: str) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hf

    where = f"{what}: {ref.repo_id} (revision {ref.revision or 'main'})"
    try:
        info = HfApi().repo_info(ref.repo_id, repo_type=repo_type, revision=ref.revision)
        files = [s.rfilename for s in (info.siblings or [])]
        patterns = ignore = None
        if kind == "tokenizer":  # no weights
            patterns = [p for p in _MODEL_PATTERNS if p not in _WEIGHTS]
        elif kind in ("model", "adapter", "expert"):
            patterns = list(_MODEL_PATTERNS)
            if any(f.endswith(".safetensors") for f in files):
                ignore = ["*.bin"]  # the same weights twice: take the safetensors
        return Path(snapshot_download(ref.repo_id, repo_type=repo_type, revision=ref.revision, cache_dir=cache,
                                      allow_patterns=patterns, ignore_patterns=ignore))
    except hf.GatedRepoError:
        raise HubError(f"{where} is gated: accept its terms on huggingface.co and log in "
                       "(`hf auth login` or HF_TOKEN)") from None
    except hf.RepositoryNotFoundError:
        raise HubError(f"{where}: no such {repo_type} repository on the Hub (or it is private: log in)") from None
    except hf.RevisionNotFoundError:
        raise HubError(f"{where}: the repository has no revision {ref.revision!r}") from None
    except (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError, hf.HfHubHTTPError, OSError, RuntimeError,
            ValueError) as err:
        raise HubError(f"{where}: not in the cache {cache} and cannot be downloaded ({_first_line(err)})") from None
    except Exception as err:  # httpx's transport errors (no network) have no common base we import here
        raise HubError(f"{where}: not in the cache {cache} and cannot be downloaded "
                       f"({type(err).__name__}: {_first_line(err)})") from None


def _check_layout(path: Path, kind: Kind, label: str) -> None:
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    has_weights = any(any(path.glob(p)) for p in _WEIGHTS)
    adapter = "adapter_config.json" in names
    adapter_weights = bool(names & {"adapter_model.safetensors", "adapter_model.bin"})
    problem = None
    if kind == "adapter" and not adapter:
        problem = "has no adapter_config.json (not a PEFT adapter)"
    elif kind == "adapter" and not adapter_weights:
        problem = "has adapter_config.json but no adapter_model.safetensors / adapter_model.bin"
    elif kind == "expert" and adapter and not adapter_weights:
        problem = "has adapter_config.json but no adapter_model.safetensors / adapter_model.bin"
    elif kind == "expert" and not adapter and not any(path.glob("*.safetensors")):
        problem = "has neither adapter_config.json (a PEFT adapter) nor *.safetensors files (a full-weight expert)"
    elif kind == "model" and "config.json" not in names:
        problem = "has no config.json (not a transformers model)"
    elif kind == "model" and not has_weights:
        problem = "has config.json but no weights (*.safetensors or *.bin)"
    elif kind == "tokenizer" and not names & set(_TOKENIZER_FILES):
        problem = f"has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...)"
    if problem:
        raise HubError(f"{label} {problem}")


def resolve_local(value: str | os.PathLike, *, what: str, kind: Kind = "any", repo_type: str = "model") -> Path:
    """The local directory of `value`: an existing path as it is (expanded, absolute), else the snapshot
    of a Hub id (cache first, then a download). A value that is neither an existing path nor shaped like
    a Hub id comes back as a path, for the caller's own "not found" message. `what` names the config
    field in errors; `kind` says which files the snapshot must have."""
    text = os.fspath(value)
    local = Path(text).expanduser()
    if local.exists():
        return local.absolute()
    ref = parse_hub_id(text)
    if ref is None:
        return local.absolute()
    cache = hub_cache_dir()
    path, source = _from_cache(ref, repo_type, cache), "cache"
    if path is None:
        if hub_offline():
            raise HubError(f"{what}: {ref.repo_id} (revision {ref.revision or 'main'}) is not in the Hugging Face "
                           f"cache {cache} and HF_HUB_OFFLINE is set (download it online first, or give a local path)")
        path, source = _download(ref, repo_type, cache, kind, what), "download"
    _check_layout(path, kind, f"{what}: {ref} (commit {path.name[:12]})")
    record_resolved(ref, repo_type, path.name, what, source)
    return path


def resolved_ids() -> list[dict[str, str]]:
    """Every id resolved in this process: {id, revision, commit, repo_type, role, source}, in order."""
    with _LOCK:
        return [asdict(r) for r in _RESOLVED.values()]


def clear_resolved() -> None:
    with _LOCK:
        _RESOLVED.clear()
