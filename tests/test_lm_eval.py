"""The lm_eval utility against lm-evaluation-harness itself, on local tasks (tests/data/lm_eval) and the
tiny model: same requests, same metrics, log-likelihoods within 1e-5; offline and bad-input errors."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("peft")
pytest.importorskip("lm_eval")

from swarmkern.utilities import build_utility, parse_utility_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "data" / "lm_eval"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # the task files name their data relative to the repository root


def spec(**kw):
    return {"type": "lm_eval", "include_path": str(TASKS), "dtype": "float32", **kw}  # lm-eval runs fp32 below


def lm_eval_reference(setup, expert: int, task: str, include_path=TASKS) -> dict:
    """lm-eval's own numbers for one expert: its HF model class with the PEFT adapter."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(setup.model_dir), peft=str(setup.expert_dirs[expert]), device="cpu",
              dtype="float32", batch_size=4)
    return lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(include_path)),
                                   log_samples=True, bootstrap_iters=0)


def test_multiple_choice_equals_lm_eval(setup, pool):
    acc = build_utility(spec(task="arith_mc"), pool).test
    acc_norm = build_utility(spec(task="arith_mc", metric="acc_norm"), pool).test
    preds = acc.predict(pool.weights)
    ours, ours_norm = acc.score(preds), acc_norm(pool.weights)
    for k in range(len(setup.expert_dirs)):
        ref = lm_eval_reference(setup, k, "arith_mc")
        res = ref["results"]["arith_mc"]
        assert ours[k].item() == pytest.approx(res["acc,none"], abs=1e-12)
        assert ours_norm[k].item() == pytest.approx(res["acc_norm,none"], abs=1e-12)
        ll = torch.tensor([r[0][0] for s in ref["samples"]["arith_mc"] for r in s["resps"]], dtype=torch.float64)
        assert (preds.ll[k] - ll).abs().max().item() < 1e-5
    assert len(set(ours.tolist())) > 1  # the experts differ: each particle got its own score


def test_generate_until_equals_lm_eval(setup, pool, tmp_path):
    # first pass: lm-eval's greedy answers of expert 0; make half of them the gold answers so that the
    # metric is not trivially 0, then compare the utility and lm-eval on that task
    task = yaml.safe_load((TASKS / "arith_qa.yaml").read_text())
    ref = lm_eval_reference(setup, 0, "arith_qa")
    gens = [s["resps"][0][0] for s in ref["samples"]["arith_qa"] if s["filter"] == "strict"]
    files = {}
    for split, path in task["dataset_kwargs"]["data_files"].items():
        rows = [json.loads(line) for line in (REPO / path).read_text().splitlines()]
        if split == "test":
            rows = [dict(r, answer=g.strip().upper() if i % 2 else r["answer"]) for i, (r, g) in enumerate(zip(rows, gens))]
        files[split] = str(tmp_path / f"{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    task["dataset_kwargs"]["data_files"] = files
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "arith_qa.yaml").write_text(yaml.safe_dump(task))

    strict = build_utility(spec(task="arith_qa", include_path=str(tmp_path / "tasks")), pool).test
    number = build_utility(spec(task="arith_qa", include_path=str(tmp_path / "tasks"),
                                metric="exact_match,number"), pool).test
    preds = strict.predict(pool.weights[:2])
    for k in range(2):
        ref = lm_eval_reference(setup, k, "arith_qa", tmp_path / "tasks")
        res = ref["results"]["arith_qa"]
        assert strict.score(preds[[k]]).item() == pytest.approx(res["exact_match,strict"], abs=1e-12)
        assert number(pool.weights[k:k + 1]).item() == pytest.approx(res["exact_match,number"], abs=1e-12)
        theirs = [s["resps"][0][0] for s in ref["samples"]["arith_qa"] if s["filter"] == "strict"]
        assert [preds.texts[g][k][j] for _, g, j in strict.plans[0].source] == theirs
    assert strict.score(preds[[0]]).item() == pytest.approx(0.5)  # the odd half answers as expert 0 does


def test_dev_and_test_splits_and_limit(pool):
    default = build_utility(spec(task="arith_mc"), pool)
    swapped = build_utility(spec(task="arith_mc", dev_split="test", test_split="validation"), pool)
    rows = pool.weights
    torch.testing.assert_close(swapped.dev(rows), default.test(rows))
    torch.testing.assert_close(swapped.test(rows), default.dev(rows))
    limited = build_utility(spec(task="arith_mc", limit=5), pool).dev
    assert limited.example_ids == ["0", "1", "2", "3", "4"]
    assert len(default.dev.example_ids) == 12


def test_prediction_api(pool):
    from swarmkern.utilities.protocol import Ensembling

    for task in ("arith_mc", "arith_qa"):
        scorer = build_utility(spec(task=task), pool).dev
        assert isinstance(scorer, Ensembling)
        rows = pool.weights
        preds = scorer.predict(rows)
        torch.testing.assert_close(scorer.score(preds), scorer(rows))
        per_example = scorer.example_scores(preds)
        assert per_example.shape == (rows.shape[0], len(scorer.example_ids))
        torch.testing.assert_close(per_example.mean(1), scorer(rows))
        torch.testing.assert_close(scorer.score(preds[[2, 0]]), scorer(rows)[[2, 0]])
        # one member: the ensemble is that member
        assert scorer.ensemble(preds[[1]])[0] == pytest.approx(scorer(rows)[1].item())


def test_ensemble_combines_members_per_document(pool):
    from swarmkern.utilities.ensemble import combine_class_scores, majority_vote

    mc = build_utility(spec(task="arith_mc"), pool).dev
    preds = mc.predict(pool.weights)
    plan = mc.plans[0]
    lls = torch.stack([preds.ll[:, [plan.source[p][1] for p in pos]] for _, pos in plan.docs], 1)  # [M, N, C]
    gold = torch.tensor([doc["answer"] for doc, _ in plan.docs])
    for how in ("mean_prob", "vote"):
        expect = (combine_class_scores(lls, how).argmax(-1) == gold).double().mean().item()
        assert mc.ensemble(preds, how) == (pytest.approx(expect), how)

    qa = build_utility(spec(task="arith_qa", metric="exact_match,number"), pool).dev
    preds = qa.predict(pool.weights)
    plan = qa.plans[0]
    import re
    answers = [[(re.findall(r"(-?[0-9]+)", preds.texts[g][b][j]) or ["[invalid]"])[0] for _, g, j in plan.source]
               for b in range(len(preds))]
    voted = majority_vote(answers)
    expect = sum(v == doc["answer"] for v, (doc, _) in zip(voted, plan.docs)) / len(plan.docs)
    assert qa.ensemble(preds) == (pytest.approx(expect), "vote")


def test_several_tasks_combine_like_multitask(pool):
    rows = pool.weights
    mc = build_utility(spec(task="arith_mc"), pool).dev(rows)
    qa = build_utility(spec(task="arith_qa"), pool).dev(rows)
    both = build_utility(spec(task=["arith_mc", "arith_qa"], combine="mean", weights={"arith_mc": 3.0}), pool).dev
    torch.testing.assert_close(both(rows), (3 * mc + qa) / 4)
    assert both.example_ids[0] == "arith_mc/0" and both.example_scores(both.predict(rows)) is None
    group = build_utility(spec(task="arith", combine="min"), pool).dev(rows)  # an lm-eval group
    torch.testing.assert_close(group, torch.minimum(mc, qa))
    # and as one task of a multitask utility
    multi = build_utility({"type": "multitask", "combine": "mean",
                           "tasks": {"mc": spec(task="arith_mc"), "qa": spec(task="arith_qa")}}, pool)
    torch.testing.assert_close(multi.dev(rows), (mc + qa) / 2)


# -- errors -----------------------------------------------------------------------------------------
def _one_line_error(cfg, pool, match):
    with pytest.raises(ValueError, match=match) as err:
        build_utility(cfg, pool)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_unknown_task_and_malformed_task_file(pool, tmp_path):
    msg = _one_line_error(spec(task="arith_mcq"), pool, "unknown lm-eval task 'arith_mcq'")
    assert "arith_mc" in msg  # did you mean
    (tmp_path / "broken.yaml").write_text("task: broken\ndoc_to_text: [unclosed\n")
    _one_line_error(spec(task="broken", include_path=str(tmp_path)), pool,
                    r"unknown lm-eval task 'broken'.*broken\.yaml")
    _one_line_error(spec(task="x", include_path=str(tmp_path / "nowhere")), pool,
                    "include_path: .* is not a directory")


def test_missing_split_and_metric(pool):
    _one_line_error(spec(task="arith_mc", dev_split="nope"), pool, r"no split 'nope' \(its dataset has train, validation, test\)")
    _one_line_error(spec(task="arith_mc", metric="f1"), pool, "task arith_mc has no metric 'f1'")
    _one_line_error(spec(task="arith_qa", metric="exact_match,loose"), pool, "has no filter 'loose'")


def test_offline_datasets_fail_before_anything_loads(tmp_path):
    task = {"task": "hub_task", "dataset_path": "some-org/some-dataset", "output_type": "multiple_choice",
            "test_split": "test", "doc_to_text": "{{q}}", "doc_to_choice": "choices", "doc_to_target": 0}
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump(task))
    local = dict(task, task="missing_file", dataset_path="json",
                 dataset_kwargs={"data_files": {"test": str(tmp_path / "absent.jsonl")}})
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(local))
    # pool=None: had anything been loaded (a dataset, the model) the error would be another one
    msg = _one_line_error({"type": "lm_eval", "task": "hub_task", "include_path": str(tmp_path)}, None,
                          "hub_task: its dataset 'some-org/some-dataset' would come from the Hugging Face Hub")
    assert "dataset_path: json" in msg
    _one_line_error({"type": "lm_eval", "task": "missing_file", "include_path": str(tmp_path)}, None,
                    "missing_file: data file .*absent.jsonl does not exist")


def test_missing_lm_eval_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    cfg = parse_utility_config(spec(task="arith_mc"))
    with pytest.raises(ValueError, match=r"pip install 'swarmkern\[lm-eval\]'"):
        cfg.build(None, "dev")


def test_config_validation():
    with pytest.raises(ValueError, match="utility.num_fewshot"):
        parse_utility_config(spec(task="arith_mc", num_fewshot=-1))
    with pytest.raises(ValueError, match="utility.bogus"):
        parse_utility_config(spec(task="arith_mc", bogus=1))


def test_search_and_compare_through_the_cli(setup, tmp_path):
    """`swarmkern search` and `swarmkern compare` (incl. the prediction ensemble) with an lm_eval utility;
    include_path is relative to the config file like every path of a run config."""
    from click.testing import CliRunner

    from swarmkern.cli import main

    cfg = {"experts": {"paths": [str(p) for p in setup.expert_dirs]},
           "swarm": {"n_particles": 3, "max_iters": 1, "patience": 1, "seed": 0, "progress": False},
           "utility": {"type": "lm_eval", "task": "arith_mc", "include_path": "tasks", "limit": 4,
                       "dtype": "float32"},
           "output": {"dir": str(tmp_path / "run")}}
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "arith_mc.yaml").write_text((TASKS / "arith_mc.yaml").read_text())
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["search", str(path), "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_utility"] is not None and len(summary["initial_dev_utilities"]) == 3
    path.write_text(yaml.safe_dump({**cfg, "compare": {"methods": ["uniform_soup", {"type": "ensemble", "k": 2}]}}))
    res = CliRunner().invoke(main, ["compare", str(path)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    data = json.loads((tmp_path / "run" / "compare.json").read_text())
    assert "error" not in data["ensemble"] and data["ensemble"]["dev"] is not None


def test_no_validation_split_is_an_error_not_the_test_split(pool, tmp_path):
    """A task without a validation split is never searched on its test split silently; dev_split == test_split
    is refused unless allowed."""
    cfg = yaml.safe_load((TASKS / "arith_mc.yaml").read_text())
    cfg.pop("validation_split")
    cfg["task"] = "arith_mc_noval"
    cfg["dataset_kwargs"]["data_files"] = {k: str(REPO / v) for k, v in cfg["dataset_kwargs"]["data_files"].items()}
    (tmp_path / "noval.yaml").write_text(yaml.safe_dump(cfg))
    _one_line_error(spec(task="arith_mc_noval", include_path=str(tmp_path)), pool,
                    "task arith_mc_noval has no validation split; choose the split to search on with dev_split "
                    r"\(e.g. dev_split: train\)")
    built = build_utility(spec(task="arith_mc_noval", include_path=str(tmp_path), dev_split="train"), pool)
    assert built.test is not None  # the test split stays the report's
    _one_line_error(spec(task="arith_mc", dev_split="test", test_split="test"), pool,
                    "'test' is also the dev split, so the test score would not be held out")
    same = build_utility(spec(task="arith_mc", dev_split="test", test_split="test", allow_same_dev_and_test=True), pool)
    assert torch.equal(same.dev(pool.weights[:1]), same.test(pool.weights[:1]))
