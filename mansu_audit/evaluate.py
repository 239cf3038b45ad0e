"""MCQ evaluation: one forward pass per item, per-item vectors out (SPEC §5).

For each item the context and the continuations come from `prompts.item_request`
under the scoring mode (`letter`: the lm-eval MMLU prompt and " A", " B", ...;
`choice-text[-norm]`: `Question: ...\nAnswer:` and " " + each choice's text).
When every continuation is one token appended to the context's tokens (letters,
for the reference tokenizer and for Llama/Qwen/Mistral/GPT-2 BPE), one forward
pass of the context gives all choices' log-likelihoods at its last position.
Otherwise each choice's log-likelihood is lm-eval's: the sum of its continuation
tokens' log-probabilities after the context. Predictions equal lm-eval's
`multiple_choice` `acc` (argmax, first index on ties), or `acc_norm` for
`choice-text-norm` (argmax of log-likelihood / len(choice)).

Two levers reuse a key/value cache (models whose forward takes a cache and
`position_ids`, without sliding-window layers; others run plain):

- `share_context` (default: on for a float32 model on the CPU, off on a GPU,
  `auto_share_context`): when every choice's tokens start with the
  context's own tokens, the item's context runs once (batched with other
  items' contexts) and its choices' continuations run in a second forward that
  continues the context's cache, one row per choice; a continuation's first
  token is read at the context's last position. lm-eval instead runs one
  sequence per choice. Off, or when tokenisation merges across the boundary or
  an item was cut to fit the context, one sequence per choice.
- `share_prefix` (default off; opt-in: `api.evaluate(share_prefix=True)`,
  `mansu-audit evaluate --share-prefix`): a batch's longest common prefix
  (few-shot examples), if at least `MIN_SHARED_PREFIX` tokens and before the
  first scored position, runs once and its cache is copied to every row;
  sequences sharing a prefix are batched together (`_batches`).

In float32 both give the plain path's predictions, and lm-eval's: log-likelihoods
differ only in rounding (matrix products of other shapes), at most 5e-5 on the
reference model and SmolLM2-135M, CPU and CUDA. In bf16 on a GPU they moved by up
to 0.13 and flipped 1-3 of 400 predictions (near ties; `share_prefix` on the
reference model, both levers on a random 1B-shaped model), and for small models
two forwards measured slower than one there: hence the defaults. In certificates
the predictions (and every statistic derived from them) are unchanged; the stored
log-likelihoods (6 decimals) may move by up to 5e-5; the cache key hashes this
file, so results computed before the levers are not reused. Each lever's
ratio: perf/eval_throughput.py --levers, and the README's performance section.

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
MIN_SHARED_PREFIX = 16  # tokens: a shorter common prefix of a batch is not worth its own forward


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
    prefix: int = 0  # leading tokens that are the item's context, shared with its other choices' requests (0: none)


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
            shared = len(ctx) if cont and whole[:len(ctx)] == ctx else 0
            requests.append(_Request(i, list(whole[:-1]), [(c, scored)], shared))
    return requests


def _forward_params(model: torch.nn.Module) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    return "logits_to_keep" in _forward_params(model)


def _cache_argument(model: torch.nn.Module) -> str | None:
    """The forward argument that takes a key/value cache to continue from (`cache` in transformers >= 5.2x,
    `past_key_values` before), or None when the model cannot continue one we build: it must also take
    `position_ids` and have no sliding-window layers (their caches are not plain per-layer key/value pairs)."""
    config = getattr(model, "config", None)
    sliding = getattr(config, "sliding_window", None) or any(
        "sliding" in str(t) for t in (getattr(config, "layer_types", None) or ()))
    params = _forward_params(model)
    if sliding or "position_ids" not in params:
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def auto_share_context(model: torch.nn.Module) -> bool:
    """The `share_context` default: on for a float32 model on the CPU (where it measured faster and its
    log-likelihoods stay within float32 rounding), off elsewhere (on a GPU two forwards measured slower than
    one for small models, and bf16 rounding moves log-likelihoods by up to 0.06; module docstring)."""
    param = next(model.parameters(), None)
    return param is not None and param.device.type == "cpu" and param.dtype == torch.float32


@dataclass(frozen=True)
class _Past:
    """A key/value cache to continue from: per layer (keys, values) with rows first, the attention mask of its
    positions [rows, length] (0 over padding) and each row's next position (its count of real tokens)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor
    next_pos: torch.Tensor

    def select(self, index: torch.Tensor) -> "_Past":
        """The rows `index` (repeats allowed: one context row per choice continuing it)."""
        return _Past([(k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv],
                     self.mask.index_select(0, index), self.next_pos.index_select(0, index))

    def cache(self):
        """A fresh transformers cache holding these tensors (a forward appends to the cache it is given)."""
        from transformers import DynamicCache

        if hasattr(DynamicCache, "from_legacy_cache"):  # transformers 4.x
            return DynamicCache.from_legacy_cache(tuple(self.kv))
        return DynamicCache(list(self.kv))

    @staticmethod
    def key_values(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if hasattr(cache, "layers"):  # transformers >= 4.56
            return [(layer.keys, layer.values) for layer in cache.layers]
        if hasattr(cache, "key_cache"):
            return list(zip(cache.key_cache, cache.value_cache))
        return [(k, v) for k, v in cache]  # legacy tuple of pairs


def _scored_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, positions: list[int],
                   keep: bool, **extra) -> tuple[torch.Tensor, dict[int, int], object]:
    """Logits [batch, columns, vocab], the column of each scored position and the model's output: only
    `positions` when `keep` (the model takes `logits_to_keep`; a 1-D tensor: those positions for every row),
    else every position. A model that takes the argument but returns every position is read as such (one
    forward either way). `extra`: the cache arguments of a continued forward."""
    if keep:
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=torch.tensor(positions, device=ids.device),
                    **extra)
        if out.logits.shape[1] == len(positions) != ids.shape[1]:
            return out.logits, {p: c for c, p in enumerate(positions)}, out
    else:
        out = model(input_ids=ids, attention_mask=mask, **extra)
    if out.logits.shape[1] != ids.shape[1]:
        raise RuntimeError(f"the model returned logits for {out.logits.shape[1]} of {ids.shape[1]} positions")
    return out.logits, {p: p for p in positions}, out


@dataclass(frozen=True)
class _Runner:
    """A model with what every forward of one evaluation needs: padding id, whether it takes `logits_to_keep`,
    its cache argument (`_cache_argument`; None: no cache levers) and whether to share a batch's common prefix."""

    model: torch.nn.Module
    pad_id: int
    keep: bool
    cache_arg: str | None
    share_prefix: bool

    def forward(self, rows: list[list[int]], positions: list[int], past: _Past | None = None,
                want_past: bool = False) -> tuple[torch.Tensor, dict[int, int], _Past | None]:
        """One forward of right-padded `rows` (continuing `past`, row for row, when given): logits at `positions`
        (row coordinates), their columns, and with `want_past` the cache after these rows."""
        device = next(self.model.parameters()).device
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, :len(r)] = 1
        ids, mask = ids.to(device), mask.to(device)
        extra: dict = {"use_cache": True} if past is not None or want_past else {}
        if past is not None:  # padding inside the cache: each row's positions continue from its own length
            extra[self.cache_arg] = past.cache()
            extra["position_ids"] = past.next_pos[:, None] + torch.arange(width, device=device)
            mask = torch.cat([past.mask, mask], dim=1)
        logits, column, out = _scored_logits(self.model, ids, mask, positions, self.keep, **extra)
        if not want_past:
            return logits, column, None
        start = past.next_pos if past is not None else torch.zeros(len(rows), dtype=torch.long, device=device)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values  # 5.2x / earlier
        return logits, column, _Past(_Past.key_values(cache), mask, start + mask[:, -width:].sum(1))

    def forward_shared(self, rows: list[list[int]], positions: list[int], want_past: bool = False):
        """`forward`, running the rows' common prefix once (then copied to every row) when `share_prefix` and it
        is at least `MIN_SHARED_PREFIX` tokens long, up to the first scored position (all stay in the rest)."""
        shared = min(_common_prefix(rows), positions[0]) if self.share_prefix else 0
        if shared < MIN_SHARED_PREFIX:
            return self.forward(rows, positions, want_past=want_past)
        _, _, past = self.forward([rows[0][:shared]], [shared - 1], want_past=True)
        past = past.select(torch.zeros(len(rows), dtype=torch.long, device=past.mask.device))
        logits, column, after = self.forward([r[shared:] for r in rows], [p - shared for p in positions],
                                             past=past, want_past=want_past)
        return logits, {p + shared: c for p, c in column.items()}, after

    def score_plain(self, batch: list[_Request], scores: dict) -> None:
        """Each request's sequence in one forward."""
        entries = [(b, p, t, r.item, choice) for b, r in enumerate(batch) for choice, pairs in r.scored
                   for p, t in pairs]
        logits, column, _ = self.forward_shared([r.tokens for r in batch], sorted({e[1] for e in entries}))
        _accumulate(scores, logits, column, entries)

    def score_groups(self, groups: list[list[_Request]], scores: dict) -> None:
        """The contexts of `groups` in one forward, then every choice's continuation in a second forward that
        continues its context's key/value cache; a continuation's first token is scored at its context's last
        position (the context forward)."""
        contexts = [g[0].tokens[:g[0].prefix] for g in groups]
        first, later, source, rows = [], [], [], []
        for b, g in enumerate(groups):
            for r in g:
                for choice, pairs in r.scored:
                    for p, t in pairs:
                        if p < r.prefix:
                            first.append((b, p, t, r.item, choice))
                        else:
                            later.append((len(rows), p - r.prefix, t, r.item, choice))
                if len(r.tokens) > r.prefix:
                    rows.append(r.tokens[r.prefix:])
                    source.append(b)
        logits, column, past = self.forward_shared(contexts, sorted({e[1] for e in first}), want_past=bool(rows))
        _accumulate(scores, logits, column, first)
        if rows:
            past = past.select(torch.tensor(source, device=past.mask.device))
            logits, column, _ = self.forward(rows, sorted({e[1] for e in later}), past=past)
            _accumulate(scores, logits, column, later)


def _batches(entries: list, tokens: Callable[[object], list[int]], rows: Callable[[object], int], batch_size: int,
             share_prefix: bool) -> list[list]:
    """`entries` in batches of at most `batch_size` rows (one entry alone may exceed it), longest first (little
    padding). With `share_prefix`, entries that share at least `MIN_SHARED_PREFIX` leading tokens with a
    neighbour in lexicographic order (few-shot contexts) are batched in that order instead, a batch being closed
    early (once it holds a quarter of `batch_size`) where the next entry would halve its common prefix (the next
    subject's examples); the others are batched longest first."""
    def chunk(ordered: list, split: Callable[[list, object], bool]) -> list[list]:
        out: list[list] = []
        taken = 0
        for e in ordered:
            if not out or taken + rows(e) > batch_size or split(out[-1], e):
                out.append([])
                taken = 0
            out[-1].append(e)
            taken += rows(e)
        return out

    if not share_prefix:
        return chunk(sorted(entries, key=lambda e: -len(tokens(e))), lambda batch, e: False)
    ordered = sorted(entries, key=tokens)
    lcp = [_common_prefix([tokens(a), tokens(b)]) for a, b in zip(ordered, ordered[1:])]
    near = [max([0, *lcp[max(i - 1, 0):i + 1]]) >= MIN_SHARED_PREFIX for i in range(len(ordered))]
    prefixed = [e for e, n in zip(ordered, near) if n]
    alone = sorted((e for e, n in zip(ordered, near) if not n), key=lambda e: -len(tokens(e)))

    def halves(batch: list, e) -> bool:  # in lexicographic order a run's common prefix is its ends' one
        return (sum(map(rows, batch)) * 4 >= batch_size and _common_prefix([tokens(batch[0]), tokens(e)]) * 2
                < _common_prefix([tokens(batch[0]), tokens(batch[-1])]))
    return chunk(prefixed, halves) + chunk(alone, lambda batch, e: False)


def _common_prefix(rows: list[list[int]]) -> int:
    first, n = rows[0], min(len(r) for r in rows)
    for other in rows[1:]:
        n = next((j for j in range(n) if other[j] != first[j]), n)
    return n


def _accumulate(scores: dict[tuple[int, int], float], logits: torch.Tensor, column: dict[int, int],
                entries: list[tuple[int, int, int, int, int]]) -> None:
    """Add each entry's log-probability to its (item, choice) sum; entries: (row, position, token, item, choice)."""
    if not entries:
        return
    rows, pos, tok, items, choices = zip(*entries)
    index = logits.new_tensor(rows, dtype=torch.long), logits.new_tensor([column[p] for p in pos], dtype=torch.long)
    picked = logits[index].float().log_softmax(-1)
    values = picked[torch.arange(len(tok), device=picked.device), picked.new_tensor(tok, dtype=torch.long)]
    for v, i, c in zip(values.double().cpu().numpy(), items, choices):
        scores[(i, c)] = scores.get((i, c), 0.0) + float(v)


def _context_groups(requests: list[_Request]) -> tuple[list[list[_Request]], list[_Request]]:
    """Items whose choices' requests all start with the same context tokens (`prefix`), as groups; the rest."""
    by_item: dict[int, list[_Request]] = {}
    for r in requests:
        by_item.setdefault(r.item, []).append(r)
    groups, rest = [], []
    for reqs in by_item.values():
        first = reqs[0]
        if len(reqs) > 1 and first.prefix and all(
                r.prefix == first.prefix and r.tokens[:r.prefix] == first.tokens[:first.prefix] for r in reqs):
            groups.append(reqs)
        else:
            rest.extend(reqs)
    return groups, rest


@torch.no_grad()
def score_requests(model: torch.nn.Module, requests: list[_Request], pad_id: int, batch_size: int,
                   n_items: int, max_choices: int, progress: Callable[[int], None] | None = None, *,
                   share_context: bool | None = None, share_prefix: bool = False) -> np.ndarray:
    """Run every request once; returns float64 log-likelihoods [n_items, max_choices] (-inf unused).

    `share_context`: an item's choices continue one forward of its context (None: `auto_share_context`);
    `share_prefix`: a batch's common prefix runs once (module docstring; both need a model that can continue
    a cache, `_cache_argument`, and are off otherwise). A forward holds at most `batch_size` sequences, or one
    item's choices when they are more."""
    out = np.full((n_items, max_choices), -np.inf, dtype=np.float64)
    share_context = auto_share_context(model) if share_context is None else share_context
    cache_arg = _cache_argument(model)
    runner = _Runner(model, pad_id, _takes_logits_to_keep(model), cache_arg, share_prefix and cache_arg is not None)
    groups, plain = _context_groups(requests) if share_context and cache_arg else ([], requests)
    scores: dict[tuple[int, int], float] = {}
    for batch in _batches(plain, lambda r: r.tokens, lambda r: 1, batch_size, runner.share_prefix):
        runner.score_plain(batch, scores)
        if progress:
            progress(len(batch))
    for batch in _batches(groups, lambda g: g[0].tokens[:g[0].prefix], len, batch_size, runner.share_prefix):
        runner.score_groups(batch, scores)  # as many items as keep their continuations within batch_size rows
        if progress:
            progress(sum(map(len, batch)))
    for (i, c), v in scores.items():
        out[i, c] = v
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
                 truncate: str | None = None, scoring: str = "letter", share_context: bool | None = None,
                 share_prefix: bool = False) -> MCQResult:
    """Accuracy of `model` on `items`, with per-item predictions and choice log-likelihoods.

    `prompt_fn` post-processes each prompt (chat templates); `subject_line` adds
    lm-eval's MMLU header when items carry a subject; `scoring` is one of
    `prompts.SCORING_MODES`. Items longer than the model's context are refused,
    or cut on the left with `truncate="left"`. `share_context` (None: on for a
    float32 model on the CPU) and `share_prefix` are the cache levers of the
    module docstring: same predictions, log-likelihoods within float rounding.
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
                             bar.update if bar else None, share_context=share_context, share_prefix=share_prefix)
    finally:
        model.train(was_training)
        if bar:
            bar.close()
    predictions = predict(lls, items, scoring)
    answers = np.array([it.answer for it in items], dtype=np.int64)
    return MCQResult(split, tuple(it.id for it in items), answers, predictions.astype(np.int64), lls, truncated)
