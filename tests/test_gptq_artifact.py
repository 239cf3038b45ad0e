"""GPTQ checkpoint folders read as quantized artifacts (`mansu_audit.loading.gptq_artifact`).

The folders are written here from a tiny Llama: codes from a plain per-group RTN (symmetric or
not, sequential or permuted g_idx), packed into int32 words as GPTQModel/AutoGPTQ store them
(v1 zeros minus one, or v2), so the reader must return exactly the weights that were packed.
The comparison with GPTQModel's own dequantizer on a real GPTQModel checkpoint is
perf/gptq_artifact_check.py (needs gptqmodel; README)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import save_tiny_pair, tiny_llama
from mansu_audit.certify import certify, check_artifacts, load_quantized_artifact
from mansu_audit.errors import InputError
from mansu_audit.loading.gptq_artifact import gptq_artifact_record
from mansu_audit.quantizers import quantizable_linears


def pack(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int codes -> int32 words, 32/bits per word along `dim`, lowest bits first (the GPTQ layout)."""
    per = 32 // bits
    c = codes.to(torch.int64) if dim == 0 else codes.to(torch.int64).t()
    words = torch.zeros(c.shape[0] // per, c.shape[1], dtype=torch.int64)
    for j in range(per):
        words |= c[j::per] << (bits * j)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # uint32 bit pattern as int32
    return words if dim == 0 else words.t().contiguous()


def rtn(weight: torch.Tensor, g_idx: torch.Tensor, groups: int, bits: int, sym: bool):
    """Per-group, per-output RTN: (codes [in, out], zeros [G, out], float16 scales [G, out])."""
    maxq = 2**bits - 1
    out_f, in_f = weight.shape
    codes = torch.zeros(in_f, out_f, dtype=torch.int64)
    zeros = torch.zeros(groups, out_f, dtype=torch.int64)
    scales = torch.zeros(groups, out_f, dtype=torch.float16)
    for g in range(groups):
        cols = (g_idx == g).nonzero().flatten()
        w = weight[:, cols].double()
        if sym:
            scale = (2 * w.abs().amax(1) / maxq).clamp_min(1e-8)
            zero = torch.full((out_f,), (maxq + 1) // 2, dtype=torch.int64)
        else:
            lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
            scale = ((hi - lo) / maxq).clamp_min(1e-8)
            zero = torch.round(-lo / scale).to(torch.int64)
        s16 = scale.to(torch.float16)
        codes[cols] = torch.clamp(torch.round(w / s16.double()[:, None]) + zero[:, None], 0, maxq).to(torch.int64).t()
        zeros[g], scales[g] = zero, s16
    return codes, zeros, scales


def write_gptq(folder, model, *, bits=4, group=32, sym=True, desc_act=False, fmt="gptq", seed=0):
    """Save `model` as a GPTQ folder; returns {Linear name: the (out, in) float32 weight it encodes}."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    expected = {}
    for name, module in quantizable_linears(model):
        weight = module.weight.detach().float().clone()
        out_f, in_f = weight.shape
        groups = -(-in_f // group)
        order = torch.randperm(in_f, generator=gen) if desc_act else torch.arange(in_f)
        g_idx = torch.empty(in_f, dtype=torch.int64)
        g_idx[order] = torch.arange(in_f) // group
        if not sym:  # one all-positive group row: zero 0, which v1 stores as 2^bits - 1
            weight[0, g_idx == 0] = weight[0, g_idx == 0].abs()
        codes, zeros, scales = rtn(weight, g_idx, groups, bits, sym)
        stored_zeros = (zeros - 1) & (2**bits - 1) if fmt == "gptq" else zeros
        del state[f"{name}.weight"]
        state.update({f"{name}.qweight": pack(codes, bits, 0), f"{name}.qzeros": pack(stored_zeros, bits, 1),
                      f"{name}.scales": scales, f"{name}.g_idx": g_idx.to(torch.int32)})
        expected[name] = torch.stack([scales[g_idx[i]].float() * (codes[i] - zeros[g_idx[i]]).float()
                                      for i in range(in_f)], dim=1)
    config = model.config.to_dict()
    config["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": group, "sym": sym,
                                     "desc_act": desc_act, "checkpoint_format": fmt, "pack_dtype": "int32",
                                     "meta": {"quantizer": ["test-rtn"]}}
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    return expected


@pytest.mark.parametrize("bits,sym,desc_act,fmt", [(4, True, False, "gptq"), (4, False, False, "gptq"),
                                                    (4, False, True, "gptq"), (4, True, True, "gptq_v2"),
                                                    (8, False, True, "gptq"), (2, False, False, "gptq_v2")])
def test_reader_returns_exactly_the_packed_weights(tmp_path, bits, sym, desc_act, fmt):
    model = tiny_llama(256)
    expected = write_gptq(tmp_path / "art", model, bits=bits, sym=sym, desc_act=desc_act, fmt=fmt)
    art = load_quantized_artifact(tmp_path / "art", model)
    got = dict(art.model.named_parameters())
    for name, weight in expected.items():
        assert torch.equal(got[f"{name}.weight"], weight), name
        assert not torch.equal(weight, dict(model.named_parameters())[f"{name}.weight"])  # really quantized
    plain = [k for k, _ in model.named_parameters() if k.removesuffix(".weight") not in expected]
    assert plain and all(torch.equal(got[k], dict(model.named_parameters())[k]) for k in plain)
    rec = art.record
    assert (rec["format"], rec["method"], rec["bits"], rec["group_size"], rec["sym"], rec["desc_act"],
            rec["checkpoint_format"], rec["quantizer"]) == ("gptq", "gptq", bits, 32, sym, desc_act, fmt, ["test-rtn"])
    assert len(rec["sha256"]) == 64 and set(rec["files"]) == {"config.json", "model.safetensors"}
    assert check_artifacts({"g": tmp_path / "art"}, ()) == {"g": tmp_path / "art"}


def _edit(folder, change):
    """Rewrite the folder's safetensors through `change(dict of tensors)`."""
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def _edit_config(folder, **quant):
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"].update(quant)
    (folder / "config.json").write_text(json.dumps(config))


LAYER = "model.layers.0.self_attn.q_proj"
BAD_TENSORS = {
    "missing qzeros": (lambda t: t.pop(f"{LAYER}.qzeros"), f"lacks its tensor '{LAYER}.qzeros'"),
    "wrong scales shape": (lambda t: t.__setitem__(f"{LAYER}.scales", t[f"{LAYER}.scales"][:1].clone()),
                           f"'{LAYER}.scales' has shape \\[1, 64\\]"),
    "int64 qweight": (lambda t: t.__setitem__(f"{LAYER}.qweight", t[f"{LAYER}.qweight"].long()),
                      f"'{LAYER}.qweight' is I64, expected I32"),
    "float weight beside codes": (lambda t: t.__setitem__(f"{LAYER}.weight", torch.zeros(64, 64)),
                                  f"'{LAYER}.weight' is stored beside the GPTQ codes"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensors_are_one_line_errors_when_named(tmp_path, case):
    change, message = BAD_TENSORS[case]
    write_gptq(tmp_path / "art", tiny_llama(256))
    _edit(tmp_path / "art", change)
    with pytest.raises(InputError, match=message) as err:
        check_artifacts({"g": tmp_path / "art"}, ())
    assert "\n" not in str(err.value) and "model.safetensors" in str(err.value)


def test_layer_shape_and_g_idx_are_checked_against_the_candidate(tmp_path):
    write_gptq(tmp_path / "art", tiny_llama(256))
    with pytest.raises(InputError, match=r"down_proj.qweight' holds a 64x128 weight, the candidate's Linear is 32x64"):
        load_quantized_artifact(tmp_path / "art", tiny_llama(256, hidden=32, intermediate=64))
    shuffled = lambda t: t.__setitem__(f"{LAYER}.g_idx", t[f"{LAYER}.g_idx"].flip(0).contiguous())  # noqa: E731
    _edit(tmp_path / "art", shuffled)
    with pytest.raises(InputError, match=f"'{LAYER}.g_idx' is not the sequential i // 32 that desc_act=false"):
        load_quantized_artifact(tmp_path / "art", tiny_llama(256))
    _edit_config(tmp_path / "art", desc_act=True)  # a permuted g_idx is what desc_act declares
    load_quantized_artifact(tmp_path / "art", tiny_llama(256))
    _edit(tmp_path / "art", lambda t: t.__setitem__(f"{LAYER}.g_idx", torch.full((64,), 2, dtype=torch.int32)))
    with pytest.raises(InputError, match=r"group indices outside \[0, 2\)"):
        load_quantized_artifact(tmp_path / "art", tiny_llama(256))


def test_refused_folders_and_settings(tmp_path, ref_tokenizer):
    write_gptq(tmp_path / "art", tiny_llama(256))
    pickled = tmp_path / "pickled"  # config + a pickle, no safetensors
    pickled.mkdir()
    shutil.copy(tmp_path / "art" / "config.json", pickled / "config.json")
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(InputError, match="has no model.safetensors \\(safetensors only\\)"):
        check_artifacts({"g": pickled}, ())
    for quant, message in [({"checkpoint_format": "marlin"}, "checkpoint_format 'marlin' is not supported"),
                           ({"bits": 3}, "bits 3 is not supported"),
                           ({"pack_dtype": "int16"}, "pack_dtype 'int16' is not supported"),
                           ({"quant_method": "awq"}, "method 'awq' is not supported")]:
        folder = tmp_path / f"bad-{next(iter(quant.values()))}"
        shutil.copytree(tmp_path / "art", folder)
        _edit_config(folder, **quant)
        with pytest.raises(InputError, match=message) as err:
            check_artifacts({"g": folder}, ())
        assert "config.json" in str(err.value) and "\n" not in str(err.value)


def test_certify_evaluates_and_records_a_gptq_artifact(tmp_path, ref_tokenizer):
    root = save_tiny_pair(tmp_path, ref_tokenizer)
    write_gptq(tmp_path / "cand-gptq", tiny_llama(len(ref_tokenizer), seed=1, hidden=32, intermediate=64),
               sym=False, desc_act=True)
    cert = certify(root / "base", root / "cand", root / "bundle", artifacts={"g4": tmp_path / "cand-gptq"},
                   quantizers=("nf4",), cad="skip", relearn="skip", consistency="skip", batch_size=32)
    settings = cert.body["quantizers"]["g4"]["settings"]
    assert settings["sha256"] == gptq_artifact_record(tmp_path / "cand-gptq")["sha256"]
    assert (settings["format"], settings["sym"], settings["desc_act"]) == ("gptq", False, True)
    preds = cert.body["per_item"]["forget_eval"]["predictions"]
    assert any(k.startswith("candidate") and k.endswith("g4") for k in preds)
    assert "G_Q[g4]" in cert.body["statistics"]["forget_eval"]
