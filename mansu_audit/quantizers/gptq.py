"""In-house GPTQ (Frantar et al., 2023) for CPU or GPU, no auto-gptq/gptqmodel.

Per Linear weight W (out, in) with Hessian H = 2/N Σ x xᵀ of its inputs:
dead input columns (zero diagonal) get H_ii = 1 and W[:, i] = 0; optional
act-order permutes columns by decreasing H_ii; H += damp·mean(diag H)·I and
the upper Cholesky factor U of H⁻¹ drives the column sweep in lazy blocks of
128 columns: each column is rounded on its group's grid, its error divided by
U_ii is pushed onto the remaining columns. Group grids (symmetric 4-bit,
group 128 by default; the same `uniform_grid` as RTN) are fit when the sweep
reaches a group's first column, i.e. on the error-compensated weights.

Precision policy: H is accumulated, dampened and factorised in float64
(Cholesky of a near-singular 2XXᵀ is where float32 fails); the column sweep
runs in float32 on the weights like the reference, with U cast to float32,
so an identity Hessian gives exactly float32 RTN. If Cholesky fails, damp is
multiplied by 10 and retried (up to damp = 10); the damp used is recorded.

Model level: layers are quantized sequentially. Calibration texts (seeded
subset of `retain_corpus`) are tokenized, concatenated and cut into chunks of
`seq_len` tokens; block k's inputs are block k−1's outputs *with block k−1
already quantized*. Inside a block, Linears that read the same tensor (q/k/v,
gate/up) form one step, and later steps see the quantized earlier ones
("true sequential").
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mansu_audit.errors import InputError
from mansu_audit.quantizers.record import QuantRecord
from mansu_audit.quantizers.apply import QuantizeInputs, register_quantizer
from mansu_audit.quantizers.rtn import uniform_grid
from mansu_audit.architecture import decoder_layers
from mansu_audit.quantizers.walk import is_linear, linear_weight, set_linear_weight


@dataclass(frozen=True)
class GPTQSettings:
    bits: int = 4
    group_size: int = 128
    symmetric: bool = True
    act_order: bool = False
    damp: float = 0.01
    block_size: int = 128
    n_texts: int = 256
    seq_len: int = 256
    seed: int = 0


@dataclass
class GPTQResult:
    """One weight's GPTQ output: dequantized (out, in) weight and its grid."""

    weight: torch.Tensor
    codes: torch.Tensor
    scales: torch.Tensor  # (out, groups) in sweep order
    zeros: torch.Tensor
    group_index: torch.Tensor  # (in,) group of each original column
    damp: float
    dead_columns: int


def _factor(H: torch.Tensor, damp: float, max_damp: float = 10.0) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp·mean(diag)·I)⁻¹, raising damp ×10 until it succeeds."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    mean_diag = torch.diag(H).mean()
    while True:
        Hd = H + damp * mean_diag * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if info.item() == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info.item() == 0 and torch.isfinite(U).all():
                return U, damp
        if damp >= max_damp:
            raise RuntimeError(f"GPTQ: Hessian not positive definite even with damp {damp}")
        damp *= 10.0


def gptq_quantize_weight(weight: torch.Tensor, H: torch.Tensor, *, bits: int = 4, group_size: int = 128,
                         symmetric: bool = True, act_order: bool = False, damp: float = 0.01,
                         block_size: int = 128) -> GPTQResult:
    """GPTQ of one (out, in) weight given its (in, in) Hessian (any float dtype; used in float64)."""
    W = weight.detach().float().clone()
    rows, cols = W.shape
    H = H.detach().to(device=W.device, dtype=torch.float64).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    U, damp_used = _factor(H, damp)
    Hinv = U.float()
    group = cols if group_size <= 0 else group_size
    Q = torch.zeros_like(W)
    codes = torch.zeros((rows, cols), dtype=torch.uint8, device=W.device)
    scales, zeros = [], []
    scale = zero = None
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:  # fit this group's grid on the current, error-compensated columns
                current = torch.cat([W1[:, i:], W[:, i2:]], dim=1)[:, :group]
                scale, zero = uniform_grid(current, bits, symmetric)
                scales.append(scale)
                zeros.append(zero)
            w = W1[:, i:i + 1]
            code = torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)
            q = scale * (code - zero)
            Q[:, col] = q[:, 0]
            codes[:, col] = code[:, 0].to(torch.uint8)
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err @ Hinv1[i:i + 1, i:]
            Err1[:, i] = err[:, 0]
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    inv = torch.argsort(perm)
    sweep_group = torch.arange(cols, device=W.device) // group
    return GPTQResult(weight=Q[:, inv].to(weight.dtype), codes=codes[:, inv], scales=torch.cat(scales, dim=1),
                      zeros=torch.cat(zeros, dim=1), group_index=sweep_group[inv], damp=damp_used,
                      dead_columns=int(dead.sum()))


def _record(name: str, result: GPTQResult, settings: GPTQSettings) -> QuantRecord:
    width = result.scales[:, result.group_index].contiguous()
    return QuantRecord(name=name, shape=tuple(result.weight.shape), codes=result.codes, scales=result.scales,
                       scale_layout="per row and group (group_index maps input columns to groups)",
                       zeros=result.zeros, bin_width=width,
                       settings={**asdict(settings), "damp_used": result.damp, "dead_columns": result.dead_columns,
                                 "group_index": result.group_index.tolist()})


# ---------------------------------------------------------------- model level


def calibration_chunks(texts, tokenizer, n_texts: int, seq_len: int, seed: int) -> list[torch.Tensor]:
    """Seeded subset of texts, tokenized, concatenated and cut into (1, ≤seq_len) id tensors."""
    texts = list(texts)
    chosen = random.Random(seed).sample(texts, min(n_texts, len(texts)))
    ids: list[int] = []
    for t in chosen:
        ids.extend(tokenizer(t).input_ids)
    return [torch.tensor(ids[i:i + seq_len]).unsqueeze(0) for i in range(0, len(ids), seq_len)]


class _Captured(Exception):
    pass


def _block_inputs(model: nn.Module, first_block: nn.Module, chunks: list[torch.Tensor]):
    """(hidden_states, kwargs) reaching the first decoder block for each chunk."""
    captured = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Captured

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for ids in chunks:
            try:
                model(input_ids=ids.to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


def _run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _steps(block: nn.Module, pending: list[tuple[str, nn.Module]], sample) -> list[tuple[str, nn.Module]]:
    """The pending Linears that read the very same input tensor as the first pending one.

    Inputs are compared by identity while all of them are held alive, so a freed
    tensor's memory being reused cannot make unrelated Linears look like siblings.
    """
    seen: dict[str, torch.Tensor] = {}

    def note(mod, args, n):
        seen.setdefault(n, args[0])

    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: note(mod, args, n)) for n, m in pending]
    try:
        _run_block(block, *sample)
    finally:
        for h in handles:
            h.remove()
    first = seen.get(pending[0][0])
    return [(n, m) for n, m in pending if n in seen and seen[n] is first] or [pending[0]]


def gptq_quantize_model(model: nn.Module, texts, tokenizer, settings: GPTQSettings = GPTQSettings()
                        ) -> tuple[dict[str, QuantRecord], dict]:
    """Sequential GPTQ of every decoder Linear of `model`, in place."""
    chunks = calibration_chunks(texts, tokenizer, settings.n_texts, settings.seq_len, settings.seed)
    blocks = decoder_layers(model)
    records: dict[str, QuantRecord] = {}
    with torch.no_grad():
        samples = _block_inputs(model, blocks[0][1], chunks)
        for block_name, block in blocks:
            pending = [(f"{block_name}.{n}", m) for n, m in block.named_modules() if n and is_linear(m)]
            while pending:
                step = _steps(block, pending, samples[0])
                hessians = {n: None for n, _ in step}
                tokens = {n: 0 for n, _ in step}

                def accumulate(mod, args, n):
                    x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
                    hessians[n] = x.T @ x if hessians[n] is None else hessians[n] + x.T @ x
                    tokens[n] += x.shape[0]

                handles = [m.register_forward_pre_hook(lambda mod, args, n=n: accumulate(mod, args, n))
                           for n, m in step]
                try:
                    for sample in samples:
                        _run_block(block, *sample)
                finally:
                    for h in handles:
                        h.remove()
                for n, m in step:
                    H = hessians[n] * (2.0 / max(tokens[n], 1))
                    result = gptq_quantize_weight(linear_weight(m), H, bits=settings.bits,
                                                  group_size=settings.group_size, symmetric=settings.symmetric,
                                                  act_order=settings.act_order, damp=settings.damp,
                                                  block_size=settings.block_size)
                    set_linear_weight(m, result.weight)
                    records[n] = _record(n, result, settings)
                done = {n for n, _ in step}
                pending = [(n, m) for n, m in pending if n not in done]
            samples = [(_run_block(block, h, kw), kw) for h, kw in samples]
    info = {**asdict(settings), "calibration_chunks": len(chunks),
            "calibration_tokens": int(sum(c.numel() for c in chunks)),
            "calibration_texts": min(settings.n_texts, len(list(texts)))}
    return records, info


def _registered(settings: GPTQSettings):
    def quantize(model: nn.Module, inputs: QuantizeInputs):
        if inputs.calibration_texts is None or inputs.tokenizer is None:
            raise InputError("gptq needs calibration texts (a benchmark's retain_corpus) and a tokenizer")
        if not inputs.calibration_texts:
            raise InputError("gptq calibration corpus is empty")
        return gptq_quantize_model(model, inputs.calibration_texts, inputs.tokenizer, settings)

    quantize.needs_calibration = True  # `certify` refuses a bundle without retain_corpus before any work
    return quantize


register_quantizer("gptq")(_registered(GPTQSettings()))
register_quantizer("gptq-act-order")(_registered(GPTQSettings(act_order=True)))
