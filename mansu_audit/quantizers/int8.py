"""LLM.int8()-style weights: per output row, scale = absmax / 127, codes in [−127, 127].

Written as bitsandbytes' `int8_vectorwise_quant` (threshold 0) and
`int8_vectorwise_dequant` compute it — `round(W * (127 / absmax))` then
`q * absmax * (1/127)` — so the result is bit for bit theirs. By default the
weight is first cast to float16, because that is what bitsandbytes'
`Int8Params` does when transformers loads a model with `load_in_8bit=True`:
the codes and row absmax then equal the deployed `Linear8bitLt`'s `CB`/`SCB`.
(`cast_fp16=False` quantizes the weight as given.) Rows that are all zero
(where bitsandbytes divides by zero) get code 0 and value 0.

Deployed inference also quantizes activations per token (with outlier columns
above `llm_int8_threshold`, default 6.0, kept in float16); this fake-quant
models the weights only.
"""
from __future__ import annotations

import torch

from mansu_audit.quantizers.record import QuantRecord

INV_127 = 7.874015718698502e-3  # bitsandbytes' constant for 1/127


def int8_fake_quant(weight: torch.Tensor, cast_fp16: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dequantized weight in weight.dtype, int8 codes, float32 row absmax) of an (out, in) weight."""
    w = weight.detach().to(torch.float16) if cast_fp16 else weight.detach().float()
    absmax = w.abs().amax(dim=1).float()
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    codes = torch.round(w * (127.0 / safe.unsqueeze(-1))).to(torch.int8)
    deq = codes * absmax.view(-1, 1) * INV_127
    return deq.to(weight.dtype), codes, absmax


def quantize_weight_int8(name: str, weight: torch.Tensor) -> tuple[torch.Tensor, QuantRecord]:
    deq, codes, absmax = int8_fake_quant(weight)
    width = (absmax / 127.0)[:, None].expand(weight.shape).contiguous()
    record = QuantRecord(name=name, shape=tuple(weight.shape), codes=codes, scales=absmax,
                         scale_layout="absmax per output row (scale = absmax / 127)", bin_width=width,
                         settings={"bits": 8, "granularity": "row", "cast_fp16": True})
    return deq, record
