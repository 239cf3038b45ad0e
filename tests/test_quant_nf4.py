"""nf4 / nf4-dq / fp4 fake-quant equals bitsandbytes bit for bit; NF4 bin geometry is exact."""
from __future__ import annotations

import pytest
import torch

from mansu_audit.quantizers import (available_quantizers, linear_weight, nf4_bin_geometry, quantizable_linears,
                                    quantize_model)
from mansu_audit.quantizers.nf4 import NF4_TABLE, fake_quant_4bit

bnbF = pytest.importorskip("bitsandbytes.functional")

SHAPES = [(64, 128), (3, 5), (7, 64), (33, 17), (128, 320), (1, 1), (2, 63)]


def quantize_4bit_codes(w: torch.Tensor, quant_type: str = "nf4") -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes shaped like w, float32 block absmax), from the quantizer's one fused pass."""
    _, codes, absmax = fake_quant_4bit(w, quant_type)
    return codes, absmax


def bnb_roundtrip(w: torch.Tensor, quant_type: str, double_quant: bool) -> torch.Tensor:
    """bitsandbytes' quantization (its packed codes and block absmax), dequantized by the
    flat-block formula `table[code] * absmax[i // 64]` with bitsandbytes' own 4-bit table.

    Not `bnbF.dequantize_4bit`: where bitsandbytes' native CPU library loads, its CPU
    dequantize kernel treats rows whose length is not a multiple of the block size
    differently from its own quantize kernel (2,709 of 3,072 values of a 96x32 weight
    differ from table[code] * absmax) and returns +0.0 for FP4's negative-zero code; its
    CUDA kernels and its pure-torch path use flat blocks and keep -0.0, which is what a
    deployed model computes. `test_dequantize_matches_bitsandbytes_on_whole_rows` checks
    the kernel itself where it is consistent.
    """
    q, state = bnbF.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=double_quant)
    flat = q.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)[:w.numel()].long()
    absmax = state.absmax
    if double_quant:
        absmax = bnbF.dequantize_blockwise(state.absmax, state.state2) + state.offset
    blocks = torch.arange(w.numel()) // 64
    return (state.code.float()[codes] * absmax.float()[blocks]).to(w.dtype).view(w.shape)


def test_dequantize_matches_bitsandbytes_on_whole_rows():
    """bitsandbytes' own dequantize kernel, where rows are whole blocks (sign of zero aside)."""
    for quant_type in ("nf4", "fp4"):
        w = weight((64, 128), 3)
        q, state = bnbF.quantize_4bit(w, blocksize=64, quant_type=quant_type)
        ours, _, _ = fake_quant_4bit(w, quant_type, 64, False)
        assert torch.equal(ours, bnbF.dequantize_4bit(q, state))  # torch.equal: -0.0 == +0.0


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (distinguishes -0.0 from 0.0, unlike torch.equal)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def same_values(a: torch.Tensor, b: torch.Tensor, quant_type: str) -> bool:
    """Bitwise for nf4. For fp4 the sign of the zero decoded from code 8 (sign bit, zero
    magnitude) depends on which bitsandbytes kernel runs (CUDA and the pure-torch path:
    -0.0; the native CPU library on AVX-512 machines: +0.0), so fp4 compares values."""
    if quant_type == "fp4":
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return same_bits(a, b)


def weight(shape, seed, zero_block=False, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * scale
    if zero_block and w.numel() >= 128:
        w.view(-1)[64:128] = 0.0  # an all-zero block
    if w.numel() > 70:
        w.view(-1)[-3:] = 0.0  # zeros inside the (possibly partial) last block
    return w


@pytest.mark.parametrize("quant_type,double_quant", [("nf4", False), ("nf4", True), ("fp4", False), ("fp4", True)])
@pytest.mark.parametrize("shape", SHAPES)
def test_bit_exact_against_bitsandbytes(quant_type, double_quant, shape):
    for seed in range(3):
        w = weight(shape, seed, zero_block=seed == 1, scale=0.02 * (seed + 1))
        ours, _, _ = fake_quant_4bit(w, quant_type, 64, double_quant)
        assert same_values(ours, bnb_roundtrip(w, quant_type, double_quant), quant_type)


def test_codes_equal_bitsandbytes_packed_codes():
    w = weight((16, 96), 5)
    packed, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4")
    flat = packed.reshape(-1)
    unpacked = torch.stack([flat >> 4, flat & 15], dim=1).reshape(-1)[:w.numel()]
    codes, absmax = quantize_4bit_codes(w, "nf4")
    assert torch.equal(codes.reshape(-1), unpacked)
    assert torch.equal(absmax, state.absmax)


def test_ties_go_to_the_lower_code():
    # absmax 1.0 makes the scaled value equal the weight, so weights placed exactly on a float32
    # midpoint are genuine ties; bitsandbytes (and we) pick the lower level.
    levels = torch.tensor(NF4_TABLE)
    mids = (levels[:-1] + levels[1:]) / 2
    w = torch.cat([torch.tensor([1.0]), mids, torch.zeros(64 - 1 - len(mids))]).view(1, 64)
    codes, _ = quantize_4bit_codes(w, "nf4")
    assert codes[0, 1:16].tolist() == list(range(15))
    ours, _, _ = fake_quant_4bit(w, "nf4")
    assert same_bits(ours, bnb_roundtrip(w, "nf4", False))
    assert torch.equal(ours[0, 1:16], levels[:15])


def test_bfloat16_weights_match():
    w = weight((8, 192), 3).to(torch.bfloat16)
    ours, _, _ = fake_quant_4bit(w, "nf4")
    theirs = bnb_roundtrip(w, "nf4", False)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours.view(torch.int16), theirs.view(torch.int16))


def test_geometry_boundaries_are_exact():
    torch.manual_seed(0)
    w = (torch.randn(24, 150) * 0.03).contiguous()  # 3600 elements: 56 full blocks and a partial one of 16
    geo = nf4_bin_geometry(w)
    codes, _ = quantize_4bit_codes(w, "nf4")
    assert torch.equal(geo.codes, codes)
    assert (geo.lower < w).all() and (w <= geo.upper).all()
    up = torch.tensor(torch.inf)
    movable = torch.nonzero(~geo.is_block_absmax.reshape(-1)).flatten()
    picks = movable[torch.randperm(len(movable), generator=torch.Generator().manual_seed(1))[:80]]
    checked = 0
    for i in picks.tolist():
        r, c = divmod(i, w.shape[1])
        lower, upper = geo.lower[r, c], geo.upper[r, c]
        cases = []
        if torch.isfinite(upper):  # at upper: same bin; one float above: next bin
            cases += [(upper, False), (torch.nextafter(upper, up), True)]
        if torch.isfinite(lower):  # one float above lower: same bin; at lower: previous bin
            cases += [(torch.nextafter(lower, up), False), (lower, True)]
        for value, changes in cases:
            moved = w.clone()
            moved[r, c] = value
            block = moved.view(-1)[(i // 64) * 64:(i // 64 + 1) * 64]
            if block.abs().max() != geo.absmax[r, c]:
                continue  # the move would change the block absmax, where the geometry does not apply
            new_code = quantize_4bit_codes(moved, "nf4")[0][r, c]
            assert bool(new_code != codes[r, c]) == changes, (r, c, value, changes)
            checked += 1
    assert checked > 200
    # every movable weight moved to just above its lower boundary at once keeps its code
    inside = torch.where(torch.isfinite(geo.lower), torch.nextafter(geo.lower, torch.full_like(w, torch.inf)), w)
    assert torch.equal(quantize_4bit_codes(torch.where(geo.is_block_absmax, w, inside), "nf4")[0], codes)


def test_geometry_bin_width_and_absmax():
    torch.manual_seed(2)
    w = torch.randn(4, 64) * 0.05
    geo = nf4_bin_geometry(w)
    absmax = w.abs().amax(dim=1, keepdim=True)
    assert torch.equal(geo.absmax, absmax.expand_as(w))
    assert geo.is_block_absmax.sum() == 4
    levels = torch.tensor(NF4_TABLE)
    ratio = w / absmax
    for r in range(4):
        for c in range(0, 64, 7):
            j = int((levels <= ratio[r, c]).sum()) - 1
            j = min(max(j, 0), 14)
            assert torch.isclose(geo.bin_width[r, c], (levels[j + 1] - levels[j]) * absmax[r, 0])
    # the widest NF4 gap is ~3.8x the narrowest: widths are per parameter, not one number
    assert geo.bin_width.max() / geo.bin_width.min() > 2.5


def test_quantize_model_touches_only_decoder_linears(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    qm = quantize_model(tiny_model, "nf4")
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k]), f"input model modified at {k}"
    names = [n for n, _ in quantizable_linears(tiny_model)]
    assert len(names) == 2 * 7 and set(qm.records) == set(names)
    after = qm.model.state_dict()
    for k, v in before.items():
        module = k.rsplit(".", 1)[0]
        if module in names and k.endswith("weight"):
            assert same_bits(after[k], bnb_roundtrip(v, "nf4", False))
        else:
            assert torch.equal(after[k], v), f"{k} should stay full precision"
    assert "embed_tokens" not in " ".join(names) and "lm_head" not in names


def test_gpt2_conv1d_is_transposed():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)).eval()
    linears = quantizable_linears(model)
    assert [n.split(".")[-2] + "." + n.split(".")[-1] for n, _ in linears[:4]] == \
        ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    qm = quantize_model(model, "nf4")
    for name, module in linears:
        w = module.weight.data  # (in, out)
        deployed = dict(quantizable_linears(qm.model))[name].weight.data
        assert same_bits(deployed, bnb_roundtrip(w.t().contiguous(), "nf4", False).t())
        assert linear_weight(module).shape == (w.shape[1], w.shape[0])


def test_registry_lists_builtins_and_rejects_unknown(tiny_model):
    from mansu_audit.errors import InputError

    assert {"nf4", "nf4-dq", "fp4", "int8", "rtn-int4-g128", "rtn-int3-g128", "gptq"} <= set(available_quantizers())
    with pytest.raises(InputError, match=r"unknown quantizer 'nf5' \(did you mean 'nf4'\? available: .*nf4"):
        quantize_model(tiny_model, "nf5")


def test_third_party_registration(tiny_model, monkeypatch):
    from mansu_audit.quantizers import quantize_weights, register_quantizer
    from mansu_audit.quantizers.rtn import quantize_weight_rtn
    from mansu_audit.registry import QUANTIZERS

    monkeypatch.setattr(QUANTIZERS, "_entries", dict(QUANTIZERS._entries))

    @register_quantizer("test-rtn8")
    def rtn8(model, inputs):
        return quantize_weights(model, lambda n, w: quantize_weight_rtn(n, w, bits=8)), {"bits": 8}

    qm = quantize_model(tiny_model, "test-rtn8")
    assert qm.settings == {"bits": 8} and len(qm.records) == 14
    with pytest.raises(ValueError, match="already registered"):  # a second function for a taken name
        register_quantizer("nf4")(rtn8)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_signed_zero_blocks(quant_type):
    w = weight((4, 64), 7)
    w[1] = -0.0  # a block of negative zeros
    w[2, :5] = -0.0
    ours, _, _ = fake_quant_4bit(w, quant_type)
    assert same_values(ours, bnb_roundtrip(w, quant_type, False), quant_type)
