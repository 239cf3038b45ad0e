"""EAP and EAP-IG node attribution with plain PyTorch hooks (SPEC §7).

Metric (per item, at the last prompt position): M = logit(correct letter) −
mean logit(other letters). Corrupted prompt: the item's `corrupt` question,
which must tokenise to the clean prompt's length (items that don't are skipped
and counted).

Score of a node z (an MLP neuron = one input of `down_proj`, or an attention
head = its chunk of the `o_proj` input), summed over token positions:

    EAP:     (z_clean − z_corrupt) · ∂M/∂z  at the clean input
    EAP-IG:  (z_clean − z_corrupt) · mean_k ∂M/∂z  at inputs e_k = e_corr + α_k (e_clean − e_corr)

with α_k = (k + ½)/steps (midpoint rule; our choice — Hanna et al. use a left
Riemann sum; the midpoint has a smaller error for the same cost). A positive
score means the node's clean activation pushes towards the correct answer:
score ≈ M(clean) − M(clean with that node patched to its corrupted value).
The input node (the token embeddings) gets the exact IG attribution, whose
per-item sum equals M(clean) − M(corrupt) up to the quadrature error
(completeness, tested).

Cost: 2 no-grad forwards (corrupt, clean activations) + `steps` forward and
backward passes per batch; gradients are taken with respect to the input
embeddings only (no weight gradients), and each node's contribution is
contracted inside a tensor hook, so only one activation difference per node
module is stored. Batches are right-padded; each item is scored at its own
last real position, and padding positions are masked out of every score.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from mansu_audit.circuits.adapters import Adapter, adapter_for
from mansu_audit.circuits.hooks import node_hooks
from mansu_audit.data import MCQItem
from mansu_audit.prompts import continuations, item_prompt
from mansu_audit.prompts import pad_token_id as pad_id

METHODS = ("eap", "eap-ig")


@dataclass(frozen=True)
class EncodedItem:
    """Token ids of one item's clean and corrupted prompt and of its answer letters."""

    id: str
    clean: tuple[int, ...]
    corrupt: tuple[int, ...]
    answer_id: int
    other_ids: tuple[int, ...]


@dataclass
class PairBatch:
    """Clean/corrupt prompt pairs of one attribution batch (shapes on the fields)."""

    index: torch.Tensor  # positions of these items in the encoded list
    clean: torch.Tensor  # [B, T] token ids, right-padded
    corrupt: torch.Tensor
    mask: torch.Tensor  # [B, T] 1 = real token
    last: torch.Tensor  # [B] last real position
    answer: torch.Tensor  # [B]
    others: torch.Tensor  # [B, K-1] (padded with the answer id where an item has fewer choices)
    others_w: torch.Tensor  # [B, K-1] 1 = real other choice


@dataclass
class Attribution:
    """Node scores of one model on a set of items (dense tensors, float32, on CPU).

    `mlp_items` [n, n_layers, d_ff] and `heads_items` [n, n_layers, n_heads] are per
    item (`mlp_items` is None when `keep_items=False`, to save memory on big models);
    `.mlp` and `.heads` are the means over items. `input_items` [n] is the input
    (embedding) node's score, ≈ metric_clean − metric_corrupt.
    """

    item_ids: tuple[str, ...]
    mlp_mean: torch.Tensor
    heads_mean: torch.Tensor
    mlp_items: torch.Tensor | None
    heads_items: torch.Tensor
    input_items: torch.Tensor
    metric_clean: torch.Tensor  # [n] float64
    metric_corrupt: torch.Tensor  # [n] float64
    skipped: tuple[str, ...]
    method: str
    steps: int
    seconds: float
    neuron_params: int
    mlp_params: int
    architecture: str
    batch_size: int
    n_forward: int = 0
    n_backward: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def mlp(self) -> torch.Tensor:
        return self.mlp_mean

    @property
    def heads(self) -> torch.Tensor:
        return self.heads_mean

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_layers, d_ff, n_heads)."""
        return (self.mlp_mean.shape[0], self.mlp_mean.shape[1], self.heads_mean.shape[1])

    def settings(self) -> dict:
        return {"method": self.method, "steps": self.steps, "batch_size": self.batch_size,
                "architecture": self.architecture, "quadrature": "midpoint" if self.method == "eap-ig" else "none"}

    def summary(self) -> dict:
        """Small JSON-able summary (no per-item tensors)."""
        return {**self.settings(), "n_items": self.n_items, "n_skipped": self.n_skipped,
                "skipped": list(self.skipped), "seconds": round(self.seconds, 3),
                "n_forward": self.n_forward, "n_backward": self.n_backward,
                "metric_clean_mean": float(self.metric_clean.mean()) if self.n_items else None,
                "metric_corrupt_mean": float(self.metric_corrupt.mean()) if self.n_items else None,
                "input_score_mean": float(self.input_items.mean()) if self.n_items else None}


def encode_items(tokenizer, items: Sequence[MCQItem]) -> tuple[list[EncodedItem], list[str]]:
    """Tokenise clean/corrupt prompts; returns (usable items, ids of skipped items).

    Skipped: no corrupt variant, clean and corrupt of different token length, or
    answer letters that are not a single token appended to the prompt.
    """
    usable, skipped = [], []
    for item in items:
        if item.corrupt is None:
            skipped.append(item.id)
            continue
        clean_prompt = item_prompt(item)
        clean = tokenizer(clean_prompt).input_ids
        corrupt = tokenizer(item_prompt(item, corrupt=True)).input_ids
        wholes = tokenizer([clean_prompt + c for c in continuations(len(item.choices))]).input_ids
        single = all(len(w) == len(clean) + 1 and w[:len(clean)] == clean for w in wholes)
        if len(clean) != len(corrupt) or not single:
            skipped.append(item.id)
            continue
        letters = [w[-1] for w in wholes]
        others = tuple(t for c, t in enumerate(letters) if c != item.answer)
        usable.append(EncodedItem(item.id, tuple(clean), tuple(corrupt), letters[item.answer], others))
    return usable, skipped


def make_batches(encoded: Sequence[EncodedItem], batch_size: int, pad: int,
                 device: torch.device) -> list[PairBatch]:
    """Right-padded batches of items sorted by length (longest first), with their original indices."""
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i].clean), i))
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i].clean) for i in idx)
        kmax = max(len(encoded[i].other_ids) for i in idx)
        b = len(idx)
        clean = torch.full((b, width), pad, dtype=torch.long)
        corrupt = torch.full((b, width), pad, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        others = torch.zeros((b, kmax), dtype=torch.long)
        others_w = torch.zeros((b, kmax))
        for r, i in enumerate(idx):
            e = encoded[i]
            n = len(e.clean)
            clean[r, :n] = torch.tensor(e.clean)
            corrupt[r, :n] = torch.tensor(e.corrupt)
            mask[r, :n] = 1
            others[r] = e.answer_id
            others[r, :len(e.other_ids)] = torch.tensor(e.other_ids)
            others_w[r, :len(e.other_ids)] = 1.0
        last = mask.sum(1) - 1
        answer = torch.tensor([encoded[i].answer_id for i in idx])
        batches.append(PairBatch(torch.tensor(idx), clean.to(device), corrupt.to(device), mask.to(device),
                             last.to(device), answer.to(device), others.to(device), others_w.to(device)))
    return batches


def run_metric(adapter: Adapter, embeds: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """Per-item metric M [B] (float32) from input embeddings."""
    hidden = adapter.body(inputs_embeds=embeds, attention_mask=batch.mask, use_cache=False).last_hidden_state
    rows = torch.arange(embeds.shape[0], device=embeds.device)
    logits = adapter.logits_at(hidden, rows, batch.last)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half/bf16 -> float32, float64 kept
    right = logits.gather(1, batch.answer[:, None])[:, 0]
    wrong = (logits.gather(1, batch.others) * batch.others_w).sum(1) / batch.others_w.sum(1)
    return right - wrong


def embed(adapter: Adapter, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return adapter.embedding(ids)


@dataclass
class BatchScores:
    mlp: torch.Tensor  # [B, L, F] float32
    heads: torch.Tensor  # [B, L, H]
    input: torch.Tensor  # [B]
    metric_clean: torch.Tensor  # [B]
    metric_corrupt: torch.Tensor


def alphas_for(method: str, steps: int) -> list[float]:
    if method == "eap":
        return [1.0]
    if method == "eap-ig":
        if steps < 1:
            raise ValueError("EAP-IG needs steps >= 1")
        return [(k + 0.5) / steps for k in range(steps)]
    raise ValueError(f"unknown attribution method '{method}' (choose from {', '.join(METHODS)})")


def score_embeddings(adapter: Adapter, e_clean: torch.Tensor, e_corrupt: torch.Tensor, batch: PairBatch,
                     alphas: Sequence[float]) -> BatchScores:
    """Node scores of one batch given its clean and corrupted input embeddings.

    Exposed separately so tests can use arbitrary (e.g. slightly perturbed) inputs.
    """
    b = e_clean.shape[0]
    n_layers, n_heads, head_dim = adapter.n_layers, adapter.n_heads, adapter.head_dim
    mask = batch.mask.to(e_clean.dtype)[:, :, None]
    diffs: dict[tuple[str, int], torch.Tensor] = {}

    def record_corrupt(kind: str, layer: int, x: torch.Tensor) -> None:
        diffs[(kind, layer)] = x.detach().clone()

    def record_clean(kind: str, layer: int, x: torch.Tensor) -> None:
        d = diffs[(kind, layer)]
        torch.sub(x.detach(), d, out=d)
        d.mul_(mask.to(d.dtype))

    with torch.no_grad():
        with node_hooks(adapter, record_corrupt):
            m_corrupt = run_metric(adapter, e_corrupt, batch)
        with node_hooks(adapter, record_clean):
            m_clean = run_metric(adapter, e_clean, batch)

    device = e_clean.device
    acc = torch.promote_types(e_clean.dtype, torch.float32)  # accumulate in at least float32
    mlp = torch.zeros((b, n_layers, adapter.d_ff), dtype=acc, device=device)
    heads = torch.zeros((b, n_layers, n_heads), dtype=acc, device=device)

    def attach(kind: str, layer: int, x: torch.Tensor) -> None:
        if not x.requires_grad:
            return
        diff = diffs[(kind, layer)]

        def on_grad(grad: torch.Tensor) -> None:
            contrib = (diff.to(acc) * grad.to(acc)).sum(1)  # [B, width]
            if kind == "mlp":
                mlp[:, layer] += contrib
            else:
                heads[:, layer] += contrib.view(b, n_heads, head_dim).sum(-1)

        x.register_hook(on_grad)

    delta = e_clean - e_corrupt
    grad_input = torch.zeros_like(e_clean, dtype=acc)
    with torch.enable_grad(), node_hooks(adapter, attach):
        for a in alphas:
            x = (e_corrupt + a * delta).detach().requires_grad_(True)
            m = run_metric(adapter, x, batch)
            (g,) = torch.autograd.grad(m.sum(), x)
            grad_input += g.to(acc)
    k = float(len(alphas))
    mlp /= k
    heads /= k
    input_scores = (delta.to(acc) * mask.to(acc) * grad_input).sum((1, 2)) / k
    return BatchScores(mlp, heads, input_scores, m_clean.detach(), m_corrupt.detach())


def attribute(model: torch.nn.Module, tokenizer, items: Sequence[MCQItem], *, steps: int = 5,
              method: str = "eap-ig", batch_size: int = 16, progress: bool = False,
              keep_items: bool = True) -> Attribution:
    """EAP / EAP-IG node scores of `model` on MCQ items with corrupted variants."""
    alphas = alphas_for(method, steps)
    adapter = adapter_for(model)
    device = next(model.parameters()).device
    encoded, skipped = encode_items(tokenizer, items)
    n, n_layers, d_ff, n_heads = len(encoded), adapter.n_layers, adapter.d_ff, adapter.n_heads
    mlp_items = torch.zeros((n, n_layers, d_ff), dtype=torch.float32) if keep_items else None
    mlp_sum = torch.zeros((n_layers, d_ff), dtype=torch.float64)
    heads_items = torch.zeros((n, n_layers, n_heads), dtype=torch.float32)
    input_items = torch.zeros(n, dtype=torch.float32)
    m_clean = torch.zeros(n, dtype=torch.float64)
    m_corrupt = torch.zeros(n, dtype=torch.float64)
    batches = make_batches(encoded, batch_size, pad_id(tokenizer), device)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"attribute ({method})", unit="item", leave=False,
                   disable=None)  # None: no bar unless stderr is a terminal
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        for batch in batches:
            scores = score_embeddings(adapter, embed(adapter, batch.clean), embed(adapter, batch.corrupt),
                                      batch, alphas)
            idx = batch.index
            if mlp_items is not None:
                mlp_items[idx] = scores.mlp.float().cpu()
            mlp_sum += scores.mlp.double().sum(0).cpu()
            heads_items[idx] = scores.heads.float().cpu()
            input_items[idx] = scores.input.float().cpu()
            m_clean[idx] = scores.metric_clean.double().cpu()
            m_corrupt[idx] = scores.metric_corrupt.double().cpu()
            if bar:
                bar.update(len(idx))
    finally:
        model.train(was_training)
        if bar:
            bar.close()
    seconds = time.perf_counter() - start
    mean_div = max(n, 1)
    return Attribution(
        item_ids=tuple(e.id for e in encoded), mlp_mean=(mlp_sum / mean_div).float(),
        heads_mean=heads_items.double().sum(0).div(mean_div).float(), mlp_items=mlp_items,
        heads_items=heads_items, input_items=input_items, metric_clean=m_clean, metric_corrupt=m_corrupt,
        skipped=tuple(skipped), method=method, steps=len(alphas), seconds=seconds,
        neuron_params=adapter.neuron_params(), mlp_params=adapter.mlp_params(),
        architecture=adapter.architecture, batch_size=batch_size,
        n_forward=len(batches) * (2 + len(alphas)), n_backward=len(batches) * len(alphas))


def per_item_array(attribution: Attribution) -> np.ndarray:
    """Per-item MLP scores as a numpy array (raises if they were not kept)."""
    if attribution.mlp_items is None:
        raise ValueError("per-item MLP scores were not kept (attribute(..., keep_items=True) is needed)")
    return attribution.mlp_items.numpy()
