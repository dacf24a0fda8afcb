"""Dataset utilities: multiple choice (log-likelihood of each choice, or the paper's generate-and-parse
the letter) and exact match of greedy generations. Each dataset is read, validated and tokenised once
per split when the scorer is built; every call then scores all particles with the batched evaluator."""
from __future__ import annotations

import re
import string
from typing import Any, Literal

import torch
from pydantic import Field

from swarmkern.data import MultipleChoiceExample, PromptAnswerExample, load_jsonl
from swarmkern.evaluate import encode_requests

from .common import NORMALIZERS, ModelUtility, PredictionScorer, jsonl_example_ids, normalize_text
from .ensemble import combine_class_scores, majority_vote
from .protocol import Answers, ClassScores
from .registry import register_utility

__all__ = ["MultipleChoice", "ExactMatch", "parse_choice_letter"]

LETTERS = string.ascii_uppercase


def parse_choice_letter(text: str, n_choices: int) -> int | None:
    """Index of the first standalone choice letter in `text` ("B", "(B)", "B:", "answer is B."), or None."""
    for m in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", text):
        k = LETTERS.index(m.group(1))
        if k < n_choices:
            return k
    return None


@register_utility("multiple_choice")
class MultipleChoice(ModelUtility):
    """Accuracy on {"question", "choices", "answer"} JSONL.

    scoring: "loglik" picks the choice with the highest sum of token log-probabilities after the
    prompt; "loglik_norm" divides by the choice's token count; "first_token" (cheaper: one position per
    question) tokenises prompt + continuation of every choice, takes their common token prefix as the
    context and picks the choice whose token at the first differing position has the highest logit
    (docs/UTILITIES.md says what it approximates); "generate" (the paper's reference code) lists the
    lettered choices, generates `max_new_tokens` greedily and parses the first choice letter (none ->
    wrong).
    """
    type: str = "multiple_choice"
    scoring: Literal["loglik", "loglik_norm", "first_token", "generate"] = "loglik"
    template: str | None = Field(None, description="prompt; fields {question} and {choices} (the lettered "
                                 "list). Default: 'Question: {question}\\nAnswer:' for loglik, "
                                 "'Question: {question}\\n{choices}\\nThe answer is' for generate")
    choice_format: str = Field("{letter}: {choice}", description="one line of {choices}")
    continuation: str = Field(" {choice}", description="scored text of a choice (loglik); {choice}, {letter}")
    max_new_tokens: int = Field(10, gt=0, description="generate scoring: tokens to generate")

    def _prompt(self, ex: MultipleChoiceExample) -> str:
        default = ("Question: {question}\nAnswer:" if self.scoring != "generate"
                   else "Question: {question}\n{choices}\nThe answer is")
        choices = "\n".join(self.choice_format.format(letter=LETTERS[k], choice=c)
                            for k, c in enumerate(ex.choices))
        return (self.template or default).format(question=ex.question, choices=choices)

    def build(self, pool: Any, split: str) -> PredictionScorer:
        path, limit = self.split_file(split)
        examples = load_jsonl(path, MultipleChoiceExample, limit=limit)
        if any(len(ex.choices) > len(LETTERS) for ex in examples) and self.scoring == "generate":
            raise ValueError(f"{path}: generate scoring supports at most {len(LETTERS)} choices")
        ev = self.evaluator(pool)
        answers = torch.tensor([ex.answer for ex in examples])
        name, ids = f"multiple_choice[{split}]", jsonl_example_ids(path, examples)
        if self.scoring == "generate":
            prompts = self.encode_prompts(ev.tokenizer, [self._prompt(ex) for ex in examples])
            n_choices = [len(ex.choices) for ex in examples]

            def picked(particles: torch.Tensor) -> Answers:
                texts = ev.generate(particles, prompts, max_new_tokens=self.max_new_tokens,
                                    micro_batch=self.micro_batch)
                return Answers([[parse_choice_letter(t, n) for t, n in zip(row, n_choices)] for row in texts])

            def letter_correct(preds: Answers) -> torch.Tensor:
                return (torch.tensor([[_or_minus1(k) for k in row] for row in preds.answers]) == answers[None]).double()

            def vote(preds: Answers, how: str) -> tuple[float, str]:
                return float(letter_correct(Answers([majority_vote(preds.answers)])).mean()), "vote"
            return PredictionScorer(name, predict=picked, example_scores=letter_correct, ensemble=vote, ids=ids,
                                    memo_rows=self.memo_rows)

        choice_scores = (self._first_token_scorer(ev, examples, ids, path) if self.scoring == "first_token"
                         else self._choice_scorer(ev, examples))

        def correct(preds: ClassScores) -> torch.Tensor:  # argmax: the first choice wins ties
            return (preds.scores.argmax(-1) == answers).double()

        def combine(preds: ClassScores, how: str) -> tuple[float, str]:
            how = "mean_prob" if how == "auto" else how
            return float(correct(ClassScores(combine_class_scores(preds.scores, how)[None])).mean()), how
        return PredictionScorer(name, predict=lambda particles: ClassScores(choice_scores(particles)),
                                example_scores=correct, ensemble=combine, ids=ids,
                                memo_rows=self.memo_rows)

    def _first_token_scorer(self, ev, examples: list[MultipleChoiceExample], ids: list[str], path):
        """particles [B, D] -> [B, N, C] float64 logit of each choice's token at the first position where
        the choices' tokenisations (prompt + continuation, whole text) differ; -inf pads."""
        contexts, candidates = [], []
        for ex, line in zip(examples, ids):
            prompt = self._prompt(ex)
            texts = [prompt + self.continuation.format(choice=c, letter=LETTERS[k]) for k, c in enumerate(ex.choices)]
            seqs = ev.tokenizer(texts, add_special_tokens=True)["input_ids"]
            d = 0
            while all(d < len(q) for q in seqs) and len({q[d] for q in seqs}) == 1:
                d += 1
            firsts = [q[d] if d < len(q) else None for q in seqs]
            if d == 0 or None in firsts or len(set(firsts)) != len(firsts):
                raise ValueError(f"{path}: example {line}: first_token scoring needs choices whose tokens differ "
                                 f"at one position after a shared context; {ex.choices} do not (use scoring: loglik)")
            ctx = list(seqs[0][:d])
            contexts.append(ctx[-self.max_length:] if self.max_length is not None else ctx)
            candidates.append(firsts)

        def choice_scores(particles: torch.Tensor) -> torch.Tensor:
            return ev.next_token_logits(particles, contexts, candidates, micro_batch=self.micro_batch)
        return choice_scores

    def _choice_scorer(self, ev, examples: list[MultipleChoiceExample]):
        """particles [B, D] -> [B, N, C] float64 score of every choice (-inf where a question has fewer)."""
        contexts, conts, where = [], [], []
        for i, ex in enumerate(examples):
            prompt = self._prompt(ex)
            for k, c in enumerate(ex.choices):
                contexts.append(prompt)
                conts.append(self.continuation.format(choice=c, letter=LETTERS[k]))
                where.append((i, k))
        requests = encode_requests(ev.tokenizer, contexts, conts, max_length=self.max_length)
        n_tok = torch.tensor(requests.n_cont, dtype=torch.float64)
        row_of, col_of = torch.tensor(where).T
        n_cols = max(len(ex.choices) for ex in examples)

        def choice_scores(particles: torch.Tensor) -> torch.Tensor:
            ll = ev.loglikelihood(particles, requests, micro_batch=self.micro_batch)  # [B, sum choices]
            if self.scoring == "loglik_norm":
                ll = ll / n_tok
            out = torch.full((ll.shape[0], len(examples), n_cols), -torch.inf, dtype=torch.float64)
            out[:, row_of, col_of] = ll.double()
            return out
        return choice_scores


def _or_minus1(k: int | None) -> int:
    return -1 if k is None else k


@register_utility("exact_match")
class ExactMatch(ModelUtility):
    """Fraction of {"prompt", "answer"} examples whose greedy generation, normalised, equals the
    normalised answer. `answer_regex` (optional) extracts the answer from the generation first (group 1
    when it has one); `normalize` is a list of steps applied in order to both sides:
    strip, lower, punctuation, articles, whitespace, number (the last number), first_line."""
    type: str = "exact_match"
    template: str = Field("{prompt}", description="prompt; field {prompt}")
    max_new_tokens: int = Field(32, gt=0)
    stop: list[str] = Field(default_factory=lambda: ["\n"], description="generation stops at these strings")
    answer_regex: str | None = None
    normalize: list[str] = Field(default_factory=lambda: ["strip", "lower", "whitespace"])

    def model_post_init(self, _: Any) -> None:
        for step in self.normalize:
            if step not in NORMALIZERS:
                raise ValueError(f"normalize: unknown step {step!r}; known: {', '.join(NORMALIZERS)}")
        if self.answer_regex is not None:
            try:
                re.compile(self.answer_regex)
            except re.error as err:
                raise ValueError(f"answer_regex: invalid regular expression ({err})") from None

    def extract(self, text: str) -> str:
        if self.answer_regex is not None:
            m = re.search(self.answer_regex, text)
            if m is None:
                return ""
            text = m.group(1) if m.groups() else m.group(0)
        return normalize_text(text, self.normalize)

    def build(self, pool: Any, split: str) -> PredictionScorer:
        path, limit = self.split_file(split)
        examples = load_jsonl(path, PromptAnswerExample, limit=limit)
        ev = self.evaluator(pool)
        prompts = self.encode_prompts(ev.tokenizer, [self.template.format(prompt=ex.prompt) for ex in examples])
        targets = [normalize_text(ex.answer, self.normalize) for ex in examples]

        def answers(particles: torch.Tensor) -> Answers:
            texts = ev.generate(particles, prompts, max_new_tokens=self.max_new_tokens, stop=self.stop,
                                micro_batch=self.micro_batch)
            return Answers([[self.extract(t) or None for t in row] for row in texts])  # "" is no answer

        def correct(preds: Answers) -> torch.Tensor:
            return torch.tensor([[float((g or "") == a) for g, a in zip(row, targets)] for row in preds.answers],
                                dtype=torch.float64)

        def vote(preds: Answers, how: str) -> tuple[float, str]:
            return float(correct(Answers([majority_vote(preds.answers)])).mean()), "vote"
        return PredictionScorer(f"exact_match[{split}]", predict=answers, example_scores=correct, ensemble=vote,
                                ids=jsonl_example_ids(path, examples), memo_rows=self.memo_rows)
