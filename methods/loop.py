"""The shared unlearning training loop (every bundled method and MANSU run on it).

One loop, four extension points, so a method is only its objective:

* `objective(model, forget, retain, step) -> {term: scalar tensor}` — the loss
  terms (summed for the step; each is logged per step). `retain` is `None` when
  the loop was given no retain data.
* `trainable` — `{parameter name: bool mask | None}`: only these parameters are
  optimised; a mask limits training to some entries (rows of gate/up, columns of
  down_proj...). Entries outside a mask stay **bit-identical**: their gradient is
  zeroed before the step (so Adam's moments stay 0) and their old values are
  written back after it (AdamW's weight decay would otherwise shrink them).
* `step_projection(step, before, params)` — called after every optimiser step
  with `before` (name -> tensor, the trainable parameters before the step) and
  `params` (name -> the live `nn.Parameter`, already holding the stepped values);
  it edits `params` in place (under `torch.no_grad`). MANSU projects the *step*
  `params - before` here, because projecting the raw gradient would not survive
  Adam's per-coordinate rescaling. Masked entries are restored after the hook too.
* `gradient_transform(step, grads) -> grads` — optional: the loop then computes
  each loss term's gradient separately (`grads[term][name]`) and the transform
  returns the combined gradient per parameter (GU projects the forget gradient
  orthogonal to retain gradients here). Without it the loop backpropagates the sum.

Data: `forget_sequences` / `retain_sequences` tokenise the bundle's
`forget_corpus` (loss on every token), `forget_attr` MCQ prompts (loss on the
answer letter, prompt as evaluated) and `retain_corpus`; `SequenceSampler`
draws reshuffled-per-epoch batches from explicit `torch.Generator`s (no global
seeding). Same seed, same data, same device -> identical weights. The model is kept in eval mode (no dropout: our
choice, so runs are deterministic; gradients flow regardless).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from mansu_audit.architecture import decoder_layers as architecture_decoder_layers
from mansu_audit.data import Bundle, MCQItem
from mansu_audit.errors import InputError
from mansu_audit.methods.base import UnlearnResult
from mansu_audit.prompts import LETTERS, item_prompt
from mansu_audit.prompts import pad_token_id as pad_id_of

IGNORE = -100


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class TrainSequence:
    """Token ids and per-position labels (`IGNORE` where no loss; labels[t] is predicted from t-1)."""

    ids: tuple[int, ...]
    labels: tuple[int, ...]
    kind: str  # "corpus" or "mcq"


@dataclass
class Batch:
    """Right-padded sequences: input_ids/attention_mask/labels [B, T] (labels IGNORE on padding)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    kinds: tuple[str, ...]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), self.kinds)


def corpus_sequences(tokenizer, texts: Sequence[str], max_length: int = 128) -> list[TrainSequence]:
    """Text + EOS, loss on every token after the first (BOS when the tokenizer adds one)."""
    out = []
    eos = tokenizer.eos_token_id
    for ids in tokenizer(list(texts)).input_ids:
        ids = list(ids) + ([eos] if eos is not None else [])
        ids = ids[:max_length]
        out.append(TrainSequence(tuple(ids), (IGNORE, *ids[1:]), "corpus"))
    return out


def mcq_sequences(tokenizer, items: Sequence[MCQItem], max_length: int = 128) -> list[TrainSequence]:
    """Evaluation prompt + " <correct letter>", loss on the letter's tokens only (as `evaluate_mcq` scores)."""
    prompts = [item_prompt(it) for it in items]
    contexts = tokenizer(prompts).input_ids
    wholes = tokenizer([p + " " + LETTERS[it.answer] for p, it in zip(prompts, items)]).input_ids
    out = []
    for ctx, whole in zip(contexts, wholes):
        whole = list(whole)
        n_ctx = len(ctx) if whole[:len(ctx)] == list(ctx) else len(whole) - 1
        cut = max(0, len(whole) - max_length)  # drop the prompt's start, never the answer
        whole, n_ctx = whole[cut:], max(1, n_ctx - cut)
        labels = [IGNORE] * n_ctx + whole[n_ctx:]
        out.append(TrainSequence(tuple(whole), tuple(labels), "mcq"))
    return out


def forget_sequences(bundle: Bundle, tokenizer, source: str = "corpus", max_length: int = 128) -> list[TrainSequence]:
    """The forget training data: `corpus` (forget_corpus), `attr` (forget_attr MCQs) or `both`."""
    seqs: list[TrainSequence] = []
    if source in ("corpus", "both"):
        seqs += corpus_sequences(tokenizer, bundle.texts("forget_corpus"), max_length)
    if source in ("attr", "both"):
        seqs += mcq_sequences(tokenizer, bundle.split("forget_attr"), max_length)
    if source not in ("corpus", "attr", "both"):
        raise ValueError(f"unknown forget source {source!r}")
    return seqs


def retain_sequences(bundle: Bundle, tokenizer, max_length: int = 128) -> list[TrainSequence]:
    """The retain training data: retain_corpus sentences (never retain_eval: that is held out)."""
    return corpus_sequences(tokenizer, bundle.texts("retain_corpus"), max_length)


def collate(seqs: Sequence[TrainSequence], pad_id: int) -> Batch:
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s.ids)] = torch.tensor(s.ids)
        labels[b, :len(s.labels)] = torch.tensor(s.labels)
        mask[b, :len(s.ids)] = 1
    return Batch(ids, mask, labels, tuple(s.kind for s in seqs))


class SequenceSampler:
    """Batches without replacement, reshuffled each epoch, drawn from an explicit `torch.Generator`.

    `seed` is an int (a fresh generator seeded with it) or a generator to draw from
    (deterministic under its state; shared generators interleave their draws).
    """

    def __init__(self, seqs: Sequence[TrainSequence], batch_size: int, pad_id: int, seed: int | torch.Generator):
        if not seqs:
            raise ValueError("no training sequences")
        self.seqs, self.batch_size, self.pad_id = list(seqs), min(batch_size, len(seqs)), pad_id
        self.generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
        self._order: list[int] = []

    def next(self) -> Batch:
        if len(self._order) < self.batch_size:
            self._order = torch.randperm(len(self.seqs), generator=self.generator).tolist()
        take, self._order = self._order[:self.batch_size], self._order[self.batch_size:]
        return collate([self.seqs[i] for i in take], self.pad_id)


@dataclass
class UnlearnData:
    """Forget and (optional) retain training sequences plus the pad id to batch them."""

    forget: list[TrainSequence]
    retain: list[TrainSequence] | None
    pad_id: int

    @classmethod
    def from_bundle(cls, bundle: Bundle, tokenizer, *, forget_source: str = "corpus", with_retain: bool = True,
                    max_length: int = 128) -> "UnlearnData":
        return cls(forget_sequences(bundle, tokenizer, forget_source, max_length),
                   retain_sequences(bundle, tokenizer, max_length) if with_retain else None, pad_id_of(tokenizer))


# --------------------------------------------------------------------------- loss helpers


def sequence_logprobs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(label) over each sequence's labelled tokens [B] (float32) and their count [B]."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return labelled_logprobs(logits, batch.labels)


def labelled_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probs [B], count [B]) of `labels[:, 1:]` under `logits[:, :-1]`."""
    target = labels[:, 1:]
    mask = target != IGNORE
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask
    return picked.sum(1), mask.sum(1)


def sequence_nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean token NLL per sequence [B]: corpus sentences and one-letter MCQ answers weigh alike."""
    total, count = sequence_logprobs(model, batch)
    return -total / count.clamp_min(1)


def kl_to_reference(model: torch.nn.Module, reference: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean over real tokens of KL(p_ref ‖ p_model) of the next-token distributions (scalar)."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    with torch.no_grad():
        ref = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    mask = batch.attention_mask.bool()
    logp, logq = torch.log_softmax(ref[mask], -1), torch.log_softmax(logits[mask], -1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def hidden_after_layer(model: torch.nn.Module, batch: Batch, layer: int) -> torch.Tensor:
    """Residual stream after decoder block `layer` (0-based) [B, T, d] (HF `hidden_states[layer + 1]`)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    return out.hidden_states[layer + 1]


def masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real tokens (`mask` [B, T]) and hidden units."""
    m = mask.bool()
    return ((a.float()[m] - b.float()[m]) ** 2).mean()


# --------------------------------------------------------------------------- trainable masks


TrainableSpec = Mapping[str, "torch.Tensor | None"]


def all_parameters(model: torch.nn.Module) -> dict[str, None]:
    """Every parameter, unmasked (Global GA)."""
    return {name: None for name, _ in model.named_parameters()}


def select_parameters(model: torch.nn.Module, predicate: Callable[[str], bool]) -> dict[str, None]:
    """Whole parameters whose name satisfies `predicate` (e.g. `lambda n: "mlp.down_proj" in n`)."""
    chosen = {name: None for name, _ in model.named_parameters() if predicate(name)}
    if not chosen:
        raise ValueError("no parameter matches the selection")
    return chosen


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM, from the one architecture table (`mansu_audit.architecture`)."""
    layers = [block for _, block in architecture_decoder_layers(model)]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return layers


def check_layers(model: torch.nn.Module, *layers: int) -> None:
    """InputError unless every index names a decoder block of `model` (and ranges are ordered)."""

    n = len(decoder_layers(model))
    for layer in layers:
        if not 0 <= layer < n:
            raise InputError(f"layer {layer} out of range: the model has {n} decoder layers (0..{n - 1})")
    if list(layers) != sorted(layers):
        raise InputError(f"layer range {layers} is not ordered (first <= last)")


# --------------------------------------------------------------------------- the loop

Objective = Callable[[torch.nn.Module, Batch, "Batch | None", int], dict[str, torch.Tensor]]
StepProjection = Callable[[int, dict[str, torch.Tensor], dict[str, torch.nn.Parameter]], None]
GradientTransform = Callable[[int, dict[str, dict[str, torch.Tensor]]], dict[str, torch.Tensor]]
StopRule = Callable[[int, dict[str, float]], bool]


@dataclass
class LoopConfig:
    """Optimiser and schedule: AdamW(lr, betas, weight_decay), constant lr, grad-norm clip (0 = off)."""

    steps: int
    lr: float
    batch_size: int = 16
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    seed: int = 0
    progress: bool = True
    desc: str = "unlearn"


@dataclass
class LoopReport:
    """Steps actually run, wall seconds, and per-step logs (loss terms, total, grad_norm)."""

    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    trainable_parameters: int = 0
    stopped_early: bool = False

    def summary(self) -> dict:
        """JSON-ready digest for `unlearn.json`: first/last logs and counts."""
        return {"steps": self.steps, "seconds": round(self.seconds, 3), "trainable_parameters": self.trainable_parameters,
                "stopped_early": self.stopped_early,
                "first": self.history[0] if self.history else {}, "last": self.history[-1] if self.history else {}}


def _resolve_trainable(model: torch.nn.Module, trainable: TrainableSpec | None
                       ) -> tuple[dict[str, torch.nn.Parameter], dict[str, torch.Tensor]]:
    named = dict(model.named_parameters())
    spec = all_parameters(model) if trainable is None else dict(trainable)
    params, masks = {}, {}
    for name, mask in spec.items():
        if name not in named:
            raise ValueError(f"unknown parameter {name!r}")
        p = named[name]
        params[name] = p
        if mask is not None:
            if mask.shape != p.shape or mask.dtype != torch.bool:
                raise ValueError(f"mask for {name!r} must be bool with shape {tuple(p.shape)}")
            masks[name] = mask.to(p.device)
    for name, p in named.items():
        p.requires_grad_(name in params)
    return params, masks


@torch.no_grad()
def _restore_masked(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor],
                    before: dict[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        params[name].copy_(torch.where(mask, params[name], before[name]))


def train_loop(model: torch.nn.Module, objective: Objective, data: UnlearnData, config: LoopConfig, *,
               trainable: TrainableSpec | None = None, step_projection: StepProjection | None = None,
               gradient_transform: GradientTransform | None = None,
               stop_rule: StopRule | None = None, generator: torch.Generator | None = None) -> LoopReport:
    """Optimise `model` in place for `config.steps` steps of `objective`; returns the report.

    Per step: draw a forget batch (and a retain batch if `data.retain`), compute the
    loss terms, backpropagate (or let `gradient_transform` combine per-term
    gradients), zero gradients outside the masks, clip, AdamW step, restore masked
    entries, call `step_projection(step, before, params)`, restore masked entries
    again. `stop_rule(step, logs)` returning True ends training after that step.

    Randomness comes only from explicit generators (the process-wide torch RNG is
    neither seeded nor used): by default the forget batches from one seeded with
    `config.seed`, the retain batches from one seeded with `config.seed + 1`; pass
    `generator` to draw both from it instead.
    """
    device = next(model.parameters()).device
    params, masks = _resolve_trainable(model, trainable)
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    forget = SequenceSampler(data.forget, config.batch_size, data.pad_id,
                             config.seed if generator is None else generator)
    retain = SequenceSampler(data.retain, config.batch_size, data.pad_id,
                             config.seed + 1 if generator is None else generator) if data.retain else None
    report = LoopReport(0, 0.0, trainable_parameters=sum(
        int(masks[n].sum()) if n in masks else p.numel() for n, p in params.items()))
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=config.steps, desc=config.desc, unit="step", leave=False, disable=None)  # None: TTY only
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        for step in range(config.steps):
            f_batch = forget.next().to(device)
            r_batch = retain.next().to(device) if retain else None
            terms = objective(model, f_batch, r_batch, step)
            total = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            if gradient_transform is None:
                total.backward()
            else:
                names = list(params)
                per_term = {}
                for k, (term, value) in enumerate(terms.items()):
                    grads = torch.autograd.grad(value, [params[n] for n in names], retain_graph=k < len(terms) - 1,
                                                allow_unused=True)
                    per_term[term] = {n: (g if g is not None else torch.zeros_like(params[n]))
                                      for n, g in zip(names, grads)}
                combined = gradient_transform(step, per_term)
                for n in names:
                    params[n].grad = combined[n].to(params[n].dtype)
            with torch.no_grad():
                for name, mask in masks.items():
                    if params[name].grad is not None:
                        params[name].grad.mul_(mask)
            grads = [p for p in params.values() if p.grad is not None]
            if config.max_grad_norm > 0 and grads:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(grads, config.max_grad_norm))
            else:
                grad_norm = float(torch.sqrt(sum((p.grad.float() ** 2).sum() for p in grads))) if grads else 0.0
            before = {n: p.detach().clone() for n, p in params.items()}
            optimizer.step()
            _restore_masked(params, masks, before)
            if step_projection is not None:
                with torch.no_grad():
                    step_projection(step, before, params)
                _restore_masked(params, masks, before)
            logs = {k: float(v.detach()) for k, v in terms.items()}
            logs.update(total=float(total.detach()), grad_norm=grad_norm)
            report.history.append(logs)
            report.steps = step + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()}, refresh=False)
            if stop_rule is not None and stop_rule(step, logs):
                report.stopped_early = step + 1 < config.steps
                break
    finally:
        report.seconds = time.perf_counter() - start
        model.train(was_training)
        for p in model.parameters():
            p.requires_grad_(False)
        if bar is not None:
            bar.close()
    return report


# --------------------------------------------------------------------------- glue for methods


def config_from_settings(settings, context, desc: str) -> LoopConfig:
    """LoopConfig from a `MethodSettings` (steps, lr, batch_size, weight_decay, max_grad_norm) and the context."""
    return LoopConfig(steps=settings.steps, lr=settings.lr, batch_size=settings.batch_size,
                      weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm,
                      seed=context.seed, progress=context.progress, desc=desc)


def data_from_settings(settings, context, with_retain: bool) -> UnlearnData:
    """The forget (per `settings.forget_source`) and optional retain sequences of the context's bundle."""
    return UnlearnData.from_bundle(context.bundle, context.tokenizer, forget_source=settings.forget_source,
                                   with_retain=with_retain, max_length=settings.max_length)


def result_from_report(method, model: torch.nn.Module, report: LoopReport, settings, context,
                       diagnostics: dict | None = None):
    """An `UnlearnResult` carrying the loop summary (first/last loss terms) plus method diagnostics."""
    import dataclasses

    diag = {"loop": report.summary()}
    diag.update(diagnostics or {})
    return UnlearnResult(model=model.eval(), steps=report.steps, seconds=report.seconds, diagnostics=diag,
                         method=method.name, settings=dataclasses.asdict(settings), seed=context.seed)
