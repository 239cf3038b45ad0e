"""MCQ evaluation: one forward pass per item, per-item vectors out (SPEC §5).

For each item the context and the continuations come from `prompts.item_request`
under the scoring mode (`letter`: the lm-eval MMLU prompt and " A", " B", ...;
`choice-text[-norm]`: `Question: ...\nAnswer:` and " " + each choice's text).
When every continuation is one token appended to the context's tokens (letters,
for the reference tokenizer and for Llama/Qwen/Mistral/GPT-2 BPE), one forward
pass of the context gives all choices' log-likelihoods at its last position.
Otherwise the item follows lm-eval's scheme: one sequence per choice, summing the
continuation tokens' log-probabilities. Predictions equal lm-eval's
`multiple_choice` `acc` (argmax, first index on ties), or `acc_norm` for
`choice-text-norm` (argmax of log-likelihood / len(choice)).

Batches are right-padded (positions of real tokens unchanged, causal attention
never sees padding) and sorted by length to waste little compute. Models whose
forward takes transformers' `logits_to_keep` project only the scored positions
through the LM head (the model's own head, so soft-capping and scaling stay
exact; bit-identical log-likelihoods): measured 1.37x on a SmolLM2-shaped model
(49k vocabulary), 1.03x on the 1k-vocabulary reference (perf/eval_throughput.py).

Context length: a sequence longer than the model's context
(`max_position_embeddings`, or `n_positions`) is refused in one `InputError`
line naming the first such item, before any forward pass; with
`truncate="left"` its oldest tokens are dropped instead, as lm-eval does
(`(context + continuation)[-(max_length + 1):][:-1]`), and
`MCQResult.truncated` counts the items cut.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from mansu_audit.data import MCQItem
from mansu_audit.errors import InputError
from mansu_audit.prompts import check_scoring, item_request, pad_token_id

TRUNCATE_MODES = ("left",)


@dataclass(frozen=True)
class MCQResult:
    """Per-item results of one model on one split, aligned with `ids`."""

    split: str
    ids: tuple[str, ...]
    answers: np.ndarray  # int64 [n]
    predictions: np.ndarray  # int64 [n]
    logprobs: np.ndarray  # float64 [n, k]: log-likelihood of each choice's continuation
    truncated: int = 0  # items whose prompt was cut on the left to fit the context (truncate="left")

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.answers

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def num_choices(self) -> np.ndarray:
        """Choices per item (unused columns of `logprobs` are -inf)."""
        return np.maximum(np.isfinite(self.logprobs).sum(axis=1), 1)

    @property
    def chance(self) -> float:
        """Expected accuracy of uniform guessing on these items: mean of 1/k_i (items may differ in k)."""
        return float(np.mean(1.0 / self.num_choices)) if self.n else 0.0

    @property
    def margin(self) -> np.ndarray:
        """log p(answer) − max log p(other): > 0 when correct; how far from flipping."""
        lp = self.logprobs.copy()
        rows = np.arange(len(lp))
        right = lp[rows, self.answers].copy()
        lp[rows, self.answers] = -np.inf
        return right - lp.max(axis=1)

    def to_dict(self) -> dict:
        out = {"split": self.split, "ids": list(self.ids), "answers": self.answers.tolist(),
               "predictions": self.predictions.tolist(), "logprobs": self.logprobs.round(6).tolist()}
        if self.truncated:
            out["truncated"] = self.truncated
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "MCQResult":
        return cls(d["split"], tuple(d["ids"]), np.asarray(d["answers"], dtype=np.int64),
                   np.asarray(d["predictions"], dtype=np.int64), np.asarray(d["logprobs"], dtype=np.float64),
                   int(d.get("truncated", 0)))


@dataclass(frozen=True)
class _Request:
    """One sequence to run and, per choice, the (position, token) pairs to score in it."""

    item: int
    tokens: list[int]
    scored: list[tuple[int, list[tuple[int, int]]]]  # (choice, [(position, token), ...])


def context_length(model: torch.nn.Module) -> int | None:
    """The longest sequence the model's positions allow (None when the config declares none)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_context(requests: list[_Request], max_length: int | None, truncate: str | None,
                ids: Sequence[str]) -> tuple[list[_Request], int]:
    """Refuse (or, with truncate="left", cut the oldest tokens of) sequences longer than `max_length`.

    Returns the requests that fit and the number of items cut."""
    if truncate is not None and truncate not in TRUNCATE_MODES:
        raise InputError(f"--truncate must be one of {', '.join(TRUNCATE_MODES)}, not '{truncate}'")
    if max_length is None:
        return requests, 0
    out, cut_items = [], set()
    for r in requests:
        excess = len(r.tokens) - max_length
        if excess <= 0:
            out.append(r)
            continue
        if truncate is None:
            raise InputError(f"item '{ids[r.item]}' is {len(r.tokens)} tokens long, more than the model's context "
                             f"of {max_length} (max_position_embeddings); shorten it, or pass --truncate left")
        scored = [(c, [(p - excess, t) for p, t in pairs]) for c, pairs in r.scored]
        if any(p < 0 for _, pairs in scored for p, _ in pairs):
            raise InputError(f"item '{ids[r.item]}': an answer continuation alone exceeds the model's context "
                             f"of {max_length} tokens")
        out.append(_Request(r.item, r.tokens[excess:], scored))
        cut_items.add(r.item)
    return out, len(cut_items)


def build_requests(tokenizer, prompts: Sequence[str], conts: Sequence[Sequence[str]]) -> list[_Request]:
    """Tokenise as lm-eval's `_encode_pair` does: encode context+continuation whole, split off
    the context's length (`conts[i]`: item i's continuation strings). Single-token
    continuations share one sequence per item."""
    requests: list[_Request] = []
    contexts = tokenizer(list(prompts)).input_ids
    texts = [prompt + c for prompt, cs in zip(prompts, conts) for c in cs]
    all_wholes = tokenizer(texts).input_ids  # one batched call: tokenisation is a visible share of CPU time
    offsets = np.cumsum([0, *(len(cs) for cs in conts)])
    for i, ctx in enumerate(contexts):
        wholes = all_wholes[offsets[i]:offsets[i + 1]]
        if all(len(w) == len(ctx) + 1 and w[:len(ctx)] == ctx for w in wholes):
            requests.append(_Request(i, list(ctx), [(c, [(len(ctx) - 1, w[-1])]) for c, w in enumerate(wholes)]))
            continue
        for c, whole in enumerate(wholes):
            cont = whole[len(ctx):]
            start = len(whole) - len(cont)
            scored = [(start - 1 + j, t) for j, t in enumerate(cont)]
            requests.append(_Request(i, list(whole[:-1]), [(c, scored)]))
    return requests


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _scored_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: list[int],
                   keep: bool) -> tuple[torch.Tensor, dict[int, int]]:
    """Logits [batch, columns, vocab] and the column of each scored position: only `positions` when `keep`
    (the model takes `logits_to_keep`; a 1-D tensor: those positions for every row), else every position.
    A model that takes the argument but returns every position is read as such (one forward either way)."""
    if keep:
        logits = model(input_ids=ids, attention_mask=mask,
                       logits_to_keep=torch.tensor(positions, device=ids.device)).logits
        if logits.shape[1] == len(positions) != ids.shape[1]:
            return logits, {p: c for c, p in enumerate(positions)}
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits
    if logits.shape[1] != ids.shape[1]:
        raise RuntimeError(f"the model returned logits for {logits.shape[1]} of {ids.shape[1]} positions")
    return logits, {p: p for p in positions}


@torch.no_grad()
def score_requests(model: torch.nn.Module, requests: list[_Request], pad_id: int, batch_size: int,
                   n_items: int, max_choices: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Run every request once; returns float64 log-likelihoods [n_items, max_choices] (-inf unused)."""
    device = next(model.parameters()).device
    out = np.full((n_items, max_choices), -np.inf, dtype=np.float64)
    order = sorted(range(len(requests)), key=lambda r: -len(requests[r].tokens))
    keep = _takes_logits_to_keep(model)
    for start in range(0, len(order), batch_size):
        batch = [requests[r] for r in order[start:start + batch_size]]
        width = max(len(r.tokens) for r in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, r in enumerate(batch):
            ids[b, :len(r.tokens)] = torch.tensor(r.tokens)
            mask[b, :len(r.tokens)] = 1
        rows, pos, tok, dest_item, dest_choice = [], [], [], [], []
        for b, r in enumerate(batch):
            for choice, pairs in r.scored:
                for p, t in pairs:
                    rows.append(b), pos.append(p), tok.append(t), dest_item.append(r.item), dest_choice.append(choice)
        logits, column = _scored_logits(model, ids.to(device), mask.to(device), sorted(set(pos)), keep)
        picked = logits[torch.tensor(rows), torch.tensor([column[p] for p in pos])].float().log_softmax(-1)
        values = picked[torch.arange(len(tok)), torch.tensor(tok)].double().cpu().numpy()
        scores: dict[tuple[int, int], float] = {}
        for v, i, c in zip(values, dest_item, dest_choice):
            scores[(i, c)] = scores.get((i, c), 0.0) + float(v)
        for (i, c), v in scores.items():
            out[i, c] = v
        if progress:
            progress(len(batch))
    return out


def predict(lls: np.ndarray, items: Sequence[MCQItem], scoring: str = "letter") -> np.ndarray:
    """Predicted choice per item: argmax of the log-likelihoods (`acc`), or for
    `choice-text-norm` of log-likelihood / len(choice string) (`acc_norm`); first index on ties."""
    if scoring != "choice-text-norm":
        return lls.argmax(axis=1)
    lengths = np.ones_like(lls)
    for i, it in enumerate(items):
        lengths[i, :len(it.choices)] = [max(len(c), 1) for c in it.choices]
    return (lls / lengths).argmax(axis=1)


def evaluate_mcq(model: torch.nn.Module, tokenizer, items: Sequence[MCQItem], *, split: str = "",
                 batch_size: int = 64, subject_line: bool = False,
                 prompt_fn: Callable[[str], str] | None = None, progress: bool = False,
                 truncate: str | None = None, scoring: str = "letter") -> MCQResult:
    """Accuracy of `model` on `items`, with per-item predictions and choice log-likelihoods.

    `prompt_fn` post-processes each prompt (chat templates); `subject_line` adds
    lm-eval's MMLU header when items carry a subject; `scoring` is one of
    `prompts.SCORING_MODES`. Items longer than the model's context are refused,
    or cut on the left with `truncate="left"`.
    """
    check_scoring(scoring)
    pairs = [item_request(it, scoring, subject_line) for it in items]
    prompts = [ctx if prompt_fn is None else prompt_fn(ctx) for ctx, _ in pairs]
    k = [len(it.choices) for it in items]
    requests = build_requests(tokenizer, prompts, [cs for _, cs in pairs])
    requests, truncated = fit_context(requests, context_length(model), truncate, [it.id for it in items])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(requests), desc=f"evaluate {split}".strip(), unit="seq", leave=False,
                   disable=None)  # None: no bar (cursor-control sequences) unless stderr is a terminal
    was_training = model.training
    model.eval()
    try:
        lls = score_requests(model, requests, pad_token_id(tokenizer), batch_size, len(items), max(k),
                             bar.update if bar else None)
    finally:
        model.train(was_training)
        if bar:
            bar.close()
    predictions = predict(lls, items, scoring)
    answers = np.array([it.answer for it in items], dtype=np.int64)
    return MCQResult(split, tuple(it.id for it in items), answers, predictions.astype(np.int64), lls, truncated)
