"""Weight-space permanence diagnostics (SPEC §6): does an update survive quantization?

For Δ = θu − θ0 on every quantized weight and each quantizer Q, with w_i the
local bin width of weight i on the base model's grid (NF4/FP4: gap between
the two levels bracketing θ0_i times its block absmax; uniform grids: the
group/row scale):
- `rms_delta_over_bin` = sqrt(mean((Δ_i / w_i)²)), the paper's "RMS(update) /
  bin width" (its baselines sit 47–828× below 1);
- `frac_over_half_gap` = fraction with |Δ_i| ≥ w_i / 2 (an update that large
  can cross a decision boundary even from the middle of a bin);
- `frac_code_changed` = fraction whose integer code differs between the two
  quantized models (the update crossed a decision boundary), the quantity
  that decides whether forgetting survives;
- `frac_value_changed` = fraction with Q(θu)_i ≠ Q(θ0)_i as deployed values;
  it also counts weights that kept their code while their block/row/group
  scale moved (e.g. because the block absmax was updated);
- a histogram of |Δ_i| / w_i over fixed edges.
Per layer and overall (pooled over all elements). No data is needed: the
quantizer `gptq-datafree` (diagnostics only, not a certifiable quantizer) is
GPTQ with an identity Hessian, which is exactly symmetric 4-bit RTN with group
128 (the grid GPTQ rounds on; its error compensation needs activations). Asked
for `gptq` or `gptq-act-order` without calibration, `diagnose` reports that
proxy under its own name, `gptq-datafree`, never as "gptq": the calibrated GPTQ
that `certify` runs is a different quantizer. Pass `calibration` (and a
tokenizer) to run real GPTQ on both models; the mode is recorded per quantizer.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from torch import nn

from mansu_audit.errors import InputError
from mansu_audit.quantizers import WeightwiseQuantizer, linear_weight, quantizable_linears, quantize_model
from mansu_audit.quantizers.record import QuantizedModel
from mansu_audit.quantizers.rtn import quantize_weight_rtn
from mansu_audit.registry import QUANTIZERS

HISTOGRAM_EDGES = (0.0, 1e-3, 1e-2, 0.1, 0.25, 0.5, 1.0, 2.0, math.inf)
GPTQ_DATAFREE = "gptq-datafree"
DATA_FREE_GPTQ = ("gptq-datafree: data-free proxy of GPTQ (identity Hessian = symmetric RTN, 4-bit, group 128), "
                  "not the calibrated GPTQ that certify runs")
CALIBRATED = ("gptq", "gptq-act-order")
_DATAFREE_QUANTIZER = WeightwiseQuantizer(partial(quantize_weight_rtn, bits=4, group_size=128, symmetric=True),
                                          {"bits": 4, "group_size": 128, "symmetric": True, "mode": DATA_FREE_GPTQ})


def diagnosed_names(quantizers, calibrated: bool) -> list[str]:
    """The quantizer names a diagnosis reports, in order and without repeats: `gptq`/`gptq-act-order`
    become `gptq-datafree` when there is no calibration. InputError for an unknown name."""
    out = []
    for name in quantizers:
        if name != GPTQ_DATAFREE:
            QUANTIZERS.get(name)  # unknown names fail here, with the closest suggested
        label = GPTQ_DATAFREE if name in CALIBRATED and not calibrated else name
        if label not in out:
            out.append(label)
    return out


@dataclass
class WeightStats:
    """Permanence statistics of one weight (or pooled over several)."""

    name: str
    n: int
    frac_updated: float
    rms_delta: float
    median_bin_width: float
    rms_delta_over_bin: float
    frac_over_half_gap: float
    frac_code_changed: float
    frac_value_changed: float
    histogram: list[int]


@dataclass
class QuantizerDiagnosis:
    quantizer: str
    mode: str
    overall: WeightStats
    layers: list[WeightStats] = field(default_factory=list)


@dataclass
class Diagnosis:
    base: str
    candidate: str
    histogram_edges: tuple[float, ...]
    quantizers: dict[str, QuantizerDiagnosis]

    def to_dict(self) -> dict:
        edges = [e if math.isfinite(e) else "inf" for e in self.histogram_edges]
        return {"base": self.base, "candidate": self.candidate, "histogram_edges": edges,
                "histogram_of": "|delta| / local bin width",
                "quantizers": {q: {"mode": d.mode, "overall": asdict(d.overall),
                                   "layers": [asdict(s) for s in d.layers]} for q, d in self.quantizers.items()}}


@dataclass
class _Sums:
    n: int = 0
    updated: int = 0
    sq_delta: float = 0.0
    sq_ratio: float = 0.0
    over_half: int = 0
    changed: int = 0
    value_changed: int = 0
    hist: torch.Tensor = field(default_factory=lambda: torch.zeros(len(HISTOGRAM_EDGES) - 1, dtype=torch.long))
    widths: list = field(default_factory=list)

    def add(self, other: "_Sums") -> None:
        self.n += other.n
        self.updated += other.updated
        self.sq_delta += other.sq_delta
        self.sq_ratio += other.sq_ratio
        self.over_half += other.over_half
        self.changed += other.changed
        self.value_changed += other.value_changed
        self.hist += other.hist
        self.widths.extend(other.widths)

    def stats(self, name: str) -> WeightStats:
        n = max(self.n, 1)
        widths = torch.cat(self.widths) if self.widths else torch.zeros(1)
        return WeightStats(name=name, n=self.n, frac_updated=self.updated / n, rms_delta=math.sqrt(self.sq_delta / n),
                           median_bin_width=float(widths.median()), rms_delta_over_bin=math.sqrt(self.sq_ratio / n),
                           frac_over_half_gap=self.over_half / n, frac_code_changed=self.changed / n,
                           frac_value_changed=self.value_changed / n,
                           histogram=self.hist.tolist())


def _weight_sums(base_w: torch.Tensor, cand_w: torch.Tensor, base_q: torch.Tensor, cand_q: torch.Tensor,
                 base_codes: torch.Tensor, cand_codes: torch.Tensor, width: torch.Tensor) -> _Sums:
    delta = (cand_w.double() - base_w.double()).reshape(-1)
    width = width.double().reshape(-1).to(delta.device)
    absd = delta.abs()
    # zero-width bins exist only in all-zero blocks: any move there is "infinitely" large
    ratio = torch.where(width > 0, absd / width.clamp(min=1e-300),
                        torch.where(absd > 0, torch.full_like(absd, math.inf), torch.zeros_like(absd)))
    finite_sq = torch.where(torch.isfinite(ratio), ratio ** 2, torch.zeros_like(ratio))
    edges = torch.tensor(HISTOGRAM_EDGES[1:-1], dtype=torch.float64, device=ratio.device)
    hist = torch.bincount(torch.bucketize(ratio, edges, right=True), minlength=len(HISTOGRAM_EDGES) - 1)
    # a strided subsample keeps the pooled median cheap on large models
    step = max(1, width.numel() // 4096)
    return _Sums(n=delta.numel(), updated=int((delta != 0).sum()), sq_delta=float((delta ** 2).sum()),
                 sq_ratio=float(finite_sq.sum()), over_half=int((absd >= width / 2).sum()),
                 changed=int((base_codes.reshape(-1) != cand_codes.reshape(-1)).sum()),
                 value_changed=int((base_q.reshape(-1) != cand_q.reshape(-1)).sum()), hist=hist.cpu(),
                 widths=[width[::step].float().cpu()])


def _quantize_for_diagnosis(model: nn.Module, name: str, calibration, tokenizer) -> tuple[QuantizedModel, str]:
    if name == GPTQ_DATAFREE:
        copied = copy.deepcopy(model)
        records, settings = _DATAFREE_QUANTIZER(copied, None)
        return QuantizedModel(copied, records, name, settings), DATA_FREE_GPTQ
    mode = "exact" if name not in CALIBRATED else "calibrated GPTQ on each model"
    return quantize_model(model, name, tokenizer=tokenizer, calibration=calibration), mode


def diagnose(base_model: nn.Module, candidate_model: nn.Module, quantizers, *, calibration=None, tokenizer=None,
             base_name: str = "base", candidate_name: str = "candidate") -> Diagnosis:
    """Permanence diagnostics of candidate vs base under each quantizer (see module doc)."""
    base_layers = quantizable_linears(base_model)
    cand_layers = dict(quantizable_linears(candidate_model))
    if not base_layers:
        raise InputError("base model has no decoder Linear layers to quantize")
    for name, module in base_layers:
        if name not in cand_layers or linear_weight(cand_layers[name]).shape != linear_weight(module).shape:
            raise InputError(f"candidate does not match the base architecture at '{name}'")
    out = {}
    for qname in diagnosed_names(quantizers, calibration is not None and tokenizer is not None):
        qbase, mode = _quantize_for_diagnosis(base_model, qname, calibration, tokenizer)
        qcand, _ = _quantize_for_diagnosis(candidate_model, qname, calibration, tokenizer)
        qb_layers, qc_layers = dict(quantizable_linears(qbase.model)), dict(quantizable_linears(qcand.model))
        total, layers = _Sums(), []
        for name, module in base_layers:
            sums = _weight_sums(linear_weight(module), linear_weight(cand_layers[name]),
                                linear_weight(qb_layers[name]), linear_weight(qc_layers[name]),
                                qbase.records[name].codes, qcand.records[name].codes,
                                qbase.records[name].bin_width)
            layers.append(sums.stats(name))
            total.add(sums)
        out[qname] = QuantizerDiagnosis(qname, mode, total.stats("overall"), layers)
        del qbase, qcand
    return Diagnosis(base_name, candidate_name, HISTOGRAM_EDGES, out)
