"""Utilities that score generated responses with another model: a reward model (any local
AutoModelForSequenceClassification with one label) or an LLM judge (a local causal LM prompted to
answer "Rating: k/10"). Responses are greedy generations of each particle for {"prompt"} JSONL."""
from __future__ import annotations

import re
from typing import Any, Callable, Literal

import torch
from pydantic import Field, field_validator

from swarmkern.data import PromptExample, load_jsonl

from .common import ModelUtility, PredictionScorer, jsonl_example_ids, plain_evaluator
from .ensemble import consensus_responses
from .protocol import Responses
from .registry import register_utility

__all__ = ["RewardModel", "LLMJudge", "parse_rating"]


class _ResponseUtility(ModelUtility):
    template: str = Field("{prompt}", description="prompt given to the particles; field {prompt}")
    max_new_tokens: int = Field(64, gt=0, description="length of each generated response")
    stop: list[str] = Field(default_factory=list, description="responses end at these strings")

    def _responses(self, pool: Any, split: str):
        path, limit = self.split_file(split)
        examples = load_jsonl(path, PromptExample, limit=limit)
        ev = self.evaluator(pool)
        prompts = self.encode_prompts(ev.tokenizer, [self.template.format(prompt=ex.prompt) for ex in examples])

        def generate(particles: torch.Tensor) -> Responses:
            return Responses(ev.generate(particles, prompts, max_new_tokens=self.max_new_tokens, stop=self.stop,
                                         micro_batch=self.micro_batch))
        return examples, ev, generate, jsonl_example_ids(path, examples)


@register_utility("reward_model")
class RewardModel(_ResponseUtility):
    """Mean normalised reward of each particle's responses.

    reward = (r - lo) / (hi - lo) with `bounds: [lo, hi]`, or `bounds: dev` (default): lo/hi are the
    lowest and highest raw reward of the first dev evaluation (the initial swarm), frozen for the rest
    of the run and reused for test; `bounds: null` keeps raw rewards. An optional length term adds
    length_weight * L (verbose) or length_weight * (1 - L) (concise), L = response tokens / max_new_tokens.
    """
    type: str = "reward_model"
    reward_model: str = Field(description="directory or Hub id of an AutoModelForSequenceClassification with one label")
    reward_tokenizer: str | None = Field(None, description="its tokenizer (default: the reward model dir)")
    reward_template: str = Field("{prompt}{response}", description="text the reward model scores")
    reward_batch_size: int = Field(16, gt=0)
    reward_max_length: int = Field(1024, gt=0, description="reward-model inputs are cut (from the left) to this")
    bounds: tuple[float, float] | Literal["dev"] | None = "dev"
    length_weight: float = 0.0
    length_preference: Literal["verbose", "concise"] = "verbose"

    @field_validator("bounds")
    @classmethod
    def _check_bounds(cls, v):
        if isinstance(v, tuple) and not v[1] > v[0]:
            raise ValueError(f"need lo < hi, got {list(v)}")
        return v

    def _reward_fn(self):
        from swarmkern.evaluate.models import check_vocab, load_reward_model, load_tokenizer

        model = load_reward_model(self.reward_model, dtype=self.dtype, device=self.device)
        tok = load_tokenizer(self.reward_tokenizer or self.reward_model)  # both take a Hub id too
        check_vocab(tok, model, f"reward_model {self.reward_model}")
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id  # needed to find each row's last token

        @torch.inference_mode()
        def rewards(texts: list[str]) -> torch.Tensor:
            out = []
            for s in range(0, len(texts), self.reward_batch_size):
                ids = tok(texts[s:s + self.reward_batch_size], add_special_tokens=True)["input_ids"]
                ids = [x[-self.reward_max_length:] for x in ids]
                T = max(len(x) for x in ids)
                batch = torch.full((len(ids), T), tok.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(ids), T), dtype=torch.long)
                for i, x in enumerate(ids):
                    batch[i, :len(x)] = torch.tensor(x)
                    mask[i, :len(x)] = 1
                dev = model.device
                out.append(model(input_ids=batch.to(dev), attention_mask=mask.to(dev)).logits[:, 0].double().cpu())
            return torch.cat(out)
        return rewards

    def build(self, pool: Any, split: str) -> PredictionScorer:
        examples, ev, generate, ids = self._responses(pool, split)
        rewards = self._reward_fn()
        state = self._state

        def per_example(preds: Responses) -> torch.Tensor:
            """[B, N]: each response's normalised reward (plus its length term); the utility is the mean."""
            responses = preds.texts
            texts = [self.reward_template.format(prompt=ex.prompt, response=r)
                     for row in responses for ex, r in zip(examples, row)]
            raw = rewards(texts).view(len(responses), len(examples))
            if self.bounds == "dev":
                if "bounds" not in state:
                    finite = raw[torch.isfinite(raw)]
                    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 1.0)
                    state["bounds"] = (lo, hi if hi > lo else lo + 1.0)
                lo, hi = state["bounds"]
                norm = (raw - lo) / (hi - lo)
            elif self.bounds is not None:
                lo, hi = self.bounds
                norm = (raw - lo) / (hi - lo)
            else:
                norm = raw
            if self.length_weight:
                n_tok = torch.tensor([[len(ev.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in row]
                                      for row in responses], dtype=torch.float64)
                frac = (n_tok / self.max_new_tokens).clamp(0, 1)
                norm = norm + self.length_weight * (frac if self.length_preference == "verbose" else 1 - frac)
            return norm
        return PredictionScorer(f"reward_model[{split}]", predict=generate, example_scores=per_example,
                                ensemble=_consensus_ensemble(per_example), ids=ids,
                                memo_rows=self.memo_rows)


DEFAULT_JUDGE_TEMPLATE = ("Rate the response to the instruction on a scale of 1 to 10 and answer as "
                          "\"Rating: k/10\".\nInstruction: {prompt}\nResponse: {response}\nRating:")


def parse_rating(text: str, pattern: str, lo: float, hi: float) -> float:
    """The first rating matched by `pattern` (group 1) in `text`, clipped to [lo, hi]; lo when none."""
    m = re.search(pattern, text)
    if m is None:
        return lo
    try:
        value = float(m.group(1))
    except (ValueError, IndexError):
        return lo
    return min(max(value, lo), hi)


@register_utility("llm_judge")
class LLMJudge(_ResponseUtility):
    """Mean rating of each particle's responses by a local causal LM (greedy, `judge_max_new_tokens`).
    The judge sees `judge_template` ({prompt}, {response}); its output is searched with
    `rating_pattern` (default: "k/10", optionally after "Rating:"); unparseable -> `min_rating`."""
    type: str = "llm_judge"
    judge: str = Field(description="directory or Hub id of the judge AutoModelForCausalLM")
    judge_tokenizer: str | None = None
    judge_template: str = DEFAULT_JUDGE_TEMPLATE
    judge_max_new_tokens: int = Field(8, gt=0)
    judge_max_length: int = Field(2048, gt=0, description="judge prompts are cut (from the left) to this")
    rating_pattern: str = r"(?:Rating:\s*)?(\d+(?:\.\d+)?)\s*/\s*10"
    min_rating: float = 1.0
    max_rating: float = 10.0

    @field_validator("rating_pattern")
    @classmethod
    def _check_pattern(cls, v: str) -> str:
        try:
            if re.compile(v).groups < 1:
                raise ValueError("needs a group capturing the number")
        except re.error as err:
            raise ValueError(f"invalid regular expression ({err})") from None
        return v

    def build(self, pool: Any, split: str) -> PredictionScorer:
        examples, _, generate, ids = self._responses(pool, split)
        judge = plain_evaluator(self.judge, tokenizer=self.judge_tokenizer, dtype=self.dtype, device=self.device)

        def ratings(preds: Responses) -> torch.Tensor:
            """[B, N] the judge's rating of every response."""
            texts = [self.judge_template.format(prompt=ex.prompt, response=r)
                     for row in preds.texts for ex, r in zip(examples, row)]
            ids_ = [x[-self.judge_max_length:] for x in judge.tokenizer(texts, add_special_tokens=True)["input_ids"]]
            verdicts = judge.generate(None, ids_, max_new_tokens=self.judge_max_new_tokens,
                                      micro_batch=self.micro_batch)[0]
            found = torch.tensor([parse_rating(v, self.rating_pattern, self.min_rating, self.max_rating)
                                  for v in verdicts], dtype=torch.float64)
            return found.view(len(preds), len(examples))
        return PredictionScorer(f"llm_judge[{split}]", predict=generate, example_scores=ratings,
                                ensemble=_consensus_ensemble(ratings), ids=ids,
                                memo_rows=self.memo_rows)


def _consensus_ensemble(per_example: Callable[[Responses], torch.Tensor]):
    """The ensemble of a response utility: the consensus response per prompt among the members'
    responses (utilities/ensemble.py), scored like one particle's responses."""
    def ensemble(preds: Responses, how: str) -> tuple[float, str]:
        return float(per_example(Responses([consensus_responses(preds.texts)])).mean()), "consensus"
    return ensemble
