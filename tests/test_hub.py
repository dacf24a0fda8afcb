"""Hub ids (org/name[@revision]) resolved from a fake Hugging Face cache in a temporary HF_HOME, offline:
local paths win, then the cache; every error is one line naming the id, the revision and the cache."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from swarmkern.hub import HubError, parse_hub_id, resolve_local, resolved_ids
from swarmkern.testing import write_hub_snapshot

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


pytestmark = pytest.mark.usefixtures("offline_hub")


@pytest.fixture
def hub(tmp_path, setup):
    """The tiny model as tiny/llama (main = commit A, tag v1 = commit B: the same files) and its experts as
    tiny/expert-<i> in the fake cache."""
    cache = tmp_path / "hf" / "hub"
    write_hub_snapshot(cache, "tiny/llama", setup.model_dir, commit=COMMIT_A)
    write_hub_snapshot(cache, "tiny/llama", setup.model_dir, commit=COMMIT_B, refs=("v1",))
    for i, d in enumerate(setup.expert_dirs):
        write_hub_snapshot(cache, f"tiny/expert-{i}", d, commit=f"{i}" * 40)
    return cache


def test_parse_hub_id():
    assert str(parse_hub_id("org/name")) == "org/name"
    ref = parse_hub_id("org/name@refs/pr/3")
    assert (ref.repo_id, ref.revision) == ("org/name", "refs/pr/3")
    for not_an_id in ("/abs/path", "./org/name", "~/x/y", "name", "a/b/c", "org/name.jsonl/x", ""):
        assert parse_hub_id(not_an_id) is None, not_an_id


def test_cache_main_tag_and_commit(hub):
    assert resolve_local("tiny/llama", what="model", kind="model").name == COMMIT_A
    assert resolve_local("tiny/llama@v1", what="model", kind="model").name == COMMIT_B
    assert resolve_local(f"tiny/llama@{COMMIT_B}", what="model", kind="model").name == COMMIT_B
    ids = {(r["id"], r["revision"]): r["commit"] for r in resolved_ids()}
    assert ids == {("tiny/llama", "main"): COMMIT_A, ("tiny/llama", "v1"): COMMIT_B,
                   ("tiny/llama", COMMIT_B): COMMIT_B}


def test_existing_local_path_wins(hub, tmp_path, monkeypatch, setup):
    local = tmp_path / "work" / "tiny" / "llama"
    shutil.copytree(setup.model_dir, local)
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_local("tiny/llama", what="model", kind="model") == local
    assert resolved_ids() == []


def test_offline_missing_names_id_revision_and_cache(hub):
    with pytest.raises(HubError) as err:
        resolve_local("tiny/missing@v2", what="utility.model", kind="model")
    msg = str(err.value)
    assert "\n" not in msg and "utility.model" in msg and "tiny/missing" in msg and "v2" in msg
    assert str(hub) in msg and "HF_HUB_OFFLINE" in msg
    with pytest.raises(HubError, match="revision nope"):
        resolve_local("tiny/llama@nope", what="utility.model", kind="model")


def test_wrong_layouts(hub, tmp_path, setup):
    # a model repo named as an adapter; an adapter without weights; a model without weights
    with pytest.raises(HubError, match=r"experts.paths\[0\]: tiny/bare .*neither adapter_config.json"):
        bare = tmp_path / "bare"
        bare.mkdir()
        (bare / "README.md").write_text("nothing")
        write_hub_snapshot(hub, "tiny/bare", bare, commit="c" * 40)
        resolve_local("tiny/bare", what="experts.paths[0]", kind="expert")
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    shutil.copy(setup.expert_dirs[0] / "adapter_config.json", no_weights)
    write_hub_snapshot(hub, "tiny/noweights", no_weights, commit="d" * 40)
    with pytest.raises(HubError, match="no adapter_model.safetensors"):
        resolve_local("tiny/noweights", what="experts.paths[1]", kind="expert")
    with pytest.raises(HubError, match="no adapter_config.json"):
        resolve_local("tiny/llama", what="adapter", kind="adapter")
    cfg_only = tmp_path / "cfgonly"
    cfg_only.mkdir()
    shutil.copy(setup.model_dir / "config.json", cfg_only)
    write_hub_snapshot(hub, "tiny/cfgonly", cfg_only, commit="e" * 40)
    with pytest.raises(HubError, match="no weights"):
        resolve_local("tiny/cfgonly", what="utility.model", kind="model")


def _raising(exc):
    def fn(*args, **kwargs):
        raise exc
    return fn


@pytest.mark.parametrize("error, message", [
    ("GatedRepoError", "is gated"), ("RepositoryNotFoundError", "no such model repository"),
    ("RevisionNotFoundError", "has no revision"), ("connect", "cannot be downloaded")])
def test_online_errors_are_one_line(hub, monkeypatch, error, message):
    from huggingface_hub import HfApi, errors

    httpx = pytest.importorskip(errors.HTTPError.__module__.split(".")[0])  # the HTTP client huggingface_hub uses

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    if error == "connect":
        exc = httpx.ConnectError("network is unreachable")
    else:
        exc = getattr(errors, error)("boom\nsecond line", response=httpx.Response(404, request=httpx.Request("GET", "https://x")))
    monkeypatch.setattr(HfApi, "repo_info", _raising(exc))
    with pytest.raises(HubError) as err:
        resolve_local("tiny/elsewhere@v3", what="utility.judge", kind="model")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert "utility.judge: tiny/elsewhere (revision v3)" in str(err.value)


def test_search_with_hub_ids_records_commits(hub, tmp_path, setup):
    from swarmkern.config import load_run_config
    from swarmkern.runner import run_search

    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "experts": {"paths": ["tiny/expert-0", "tiny/expert-1@main", "tiny/expert-2"]},
        "swarm": {"max_iters": 1, "progress": False, "report_ensemble_k": [], "report_emergence": False,
                  "report_trajectory": False},
        "utility": {"type": "multiple_choice", "model": "tiny/llama@v1", "dev": str(setup.data["mc_dev"]),
                    "max_examples": 4, "device": "cpu", "dtype": "float32"},
        "output": {"dir": "out"}}))
    config = load_run_config(cfg_path)
    assert config.experts.paths[0] == "tiny/expert-0" and config.utility["model"] == "tiny/llama@v1"
    result = run_search(config)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    ids = {(r["id"], r["revision"]): r["commit"] for r in saved["hub_ids"]}
    assert ids[("tiny/llama", "v1")] == COMMIT_B
    assert ids[("tiny/expert-1", "main")] == "1" * 40 and ids[("tiny/expert-0", "main")] == "0" * 40
    assert result.summary["hub_ids"] == saved["hub_ids"]
    assert json.loads((tmp_path / "out" / "experts.json").read_text())["names"] == [
        "expert-0", "expert-1@main", "expert-2"]  # named after their repositories, not commit directories


def test_demo_model_takes_a_hub_id(hub):
    from swarmkern.demo.model import resolve_model_dir

    assert resolve_model_dir("tiny/llama", tiny=False).name == COMMIT_A
    with pytest.raises(HubError, match="--model: tiny/absent"):
        resolve_model_dir("tiny/absent", tiny=False)


def test_download_when_not_cached_fetches_weights_once(hub, monkeypatch, setup, tmp_path):
    """Online and not cached: the repository's file list decides what to fetch (safetensors, not .bin
    copies), the snapshot lands in the cache, and the id is recorded as downloaded."""
    import huggingface_hub
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    files = [p.name for p in setup.model_dir.iterdir()] + ["pytorch_model.bin", "model.onnx"]

    class Info:
        sha = "9" * 40
        siblings = [type("S", (), {"rfilename": f})() for f in files]
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kw: Info())
    calls = []
    real = huggingface_hub.snapshot_download

    def fake_download(repo_id, **kw):
        if kw.get("local_files_only"):
            return real(repo_id, **kw)
        calls.append(kw)
        return str(write_hub_snapshot(kw["cache_dir"], repo_id, setup.model_dir, commit=Info.sha))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    path = resolve_local("tiny/new-model", what="utility.model", kind="model")
    assert path.name == Info.sha and (path / "config.json").is_file()
    assert calls[0]["ignore_patterns"] == ["*.bin"] and "*.safetensors" in calls[0]["allow_patterns"]
    assert "*.onnx" not in calls[0]["allow_patterns"]
    assert [(r["id"], r["source"]) for r in resolved_ids()] == [("tiny/new-model", "download")]
    assert resolve_local("tiny/new-model", what="utility.model", kind="model") == path and len(calls) == 1
