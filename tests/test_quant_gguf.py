"""GGUF quantizers (gguf-q8_0/q4_0/q4_1/q5_0/q5_1) and user-supplied GGUF artifacts (certify --quantized-artifact).

Bit-exactness is checked against gguf-py's reference codec on the bundled reference
model's weights, and Q4_0/Q8_0 additionally against a transcription of ggml's
`quantize_row_q4_0_ref`/`quantize_row_q8_0_ref` written here in torch.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import write_gguf
from mansu_audit.errors import InputError
from mansu_audit.quantizers import get_quantizer, quantizable_linears, quantize_model, weight_quantizer
from mansu_audit.quantizers.walk import linear_weight

gguf = pytest.importorskip("gguf")

TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def _reference_codec(w: torch.Tensor, qtype: str) -> torch.Tensor:
    ggml_type = gguf.GGMLQuantizationType[qtype.upper()]
    arr = w.detach().float().numpy()
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(arr, ggml_type), ggml_type))


def _levels(record, qtype: str) -> torch.Tensor:
    """The dequantized value rebuilt from the record's codes and block scales (module doc formulas)."""
    d = record.scales.repeat_interleave(32, dim=1)
    codes = record.codes.to(torch.float32)
    if record.zeros is not None:
        return d * codes + record.zeros.repeat_interleave(32, dim=1)
    zero = {"q8_0": 0, "q4_0": 8, "q5_0": 16}[qtype]
    return d * (codes - zero)


@pytest.mark.parametrize("qtype", TYPES)
def test_per_weight_is_gguf_py_bit_exact_on_reference_weights(reference, qtype):
    fn = weight_quantizer(f"gguf-{qtype}")
    bits = {"q8_0": 8, "q4_0": 4, "q4_1": 4, "q5_0": 5, "q5_1": 5}[qtype]
    for name, module in quantizable_linears(reference.model)[:7]:  # the first decoder block: every kind of Linear
        w = linear_weight(module)
        deq, record = fn(name, w)
        assert deq.dtype == w.dtype and deq.shape == w.shape
        assert torch.equal(deq, _reference_codec(w, qtype)), name
        assert torch.equal(_levels(record, qtype), deq), name  # codes and scales describe the weight exactly
        assert record.scales.shape == (w.shape[0], w.shape[1] // 32)
        lo = -127 if qtype == "q8_0" else 0
        assert int(record.codes.min()) >= lo and int(record.codes.max()) <= (127 if bits == 8 else 2 ** bits - 1)
        assert torch.equal(record.bin_width[:, :32], record.scales[:, :1].abs().expand(-1, 32))
        assert not torch.equal(deq, w)


def _ggml_q4_0(w: torch.Tensor) -> torch.Tensor:
    """ggml's quantize_row_q4_0_ref + dequantize_row_q4_0, transcribed (float32, d stored as float16)."""
    x = w.float().reshape(-1, 32)
    idx = x.abs().argmax(dim=1, keepdim=True)
    mx = torch.gather(x, 1, idx)
    d = mx / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    q = torch.clamp(torch.trunc(x * inv + 8.5), max=15)
    return ((q - 8) * d.half().float()).reshape(w.shape)


def _ggml_q8_0(w: torch.Tensor) -> torch.Tensor:
    x = w.float().reshape(-1, 32)
    d = x.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    v = x * inv
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)  # roundf: half away from zero
    return (q * d.half().float()).reshape(w.shape)


def test_q4_0_and_q8_0_match_ggml_reference_formula(reference):
    for name, module in quantizable_linears(reference.model)[:7]:
        w = linear_weight(module)
        assert torch.equal(weight_quantizer("gguf-q4_0")(name, w)[0], _ggml_q4_0(w)), name
        assert torch.equal(weight_quantizer("gguf-q8_0")(name, w)[0], _ggml_q8_0(w)), name


def test_edge_blocks():
    w = torch.zeros(2, 64)
    w[1, 32:] = torch.linspace(-1, 0.5, 32)
    for qtype in TYPES:
        deq, record = weight_quantizer(f"gguf-{qtype}")("w", w)
        assert torch.equal(deq[0], torch.zeros(64)) and torch.isfinite(deq).all()
        assert torch.equal(deq, _reference_codec(w, qtype))
    deq, _ = weight_quantizer("gguf-q4_0")("w", w)
    assert deq[1, 32] == -1.0  # the signed extreme is exact: d = max/-8, code 0 -> -8d
    half = w.to(torch.bfloat16)
    deq, _ = weight_quantizer("gguf-q4_1")("w", half)
    assert deq.dtype == torch.bfloat16


def test_row_length_not_a_multiple_of_32_is_refused():
    with pytest.raises(InputError, match=r"'odd' has rows of 48 values, not a multiple of the 32-value block"):
        weight_quantizer("gguf-q4_0")("odd", torch.randn(4, 48))


def test_model_quantizer_follows_llama_cpp_tensor_choice(reference):
    model = reference.model
    q4 = quantize_model(model, "gguf-q4_0")
    assert q4.settings["token_embedding"] == "Q4_0" and q4.settings["output"].startswith("kept")
    qm, src = dict(q4.model.named_modules()), dict(model.named_modules())
    for name, module in quantizable_linears(model):
        assert torch.equal(linear_weight(qm[name]), weight_quantizer("gguf-q4_0")(name, linear_weight(module))[0])
    emb = model.model.embed_tokens.weight
    assert torch.equal(q4.model.model.embed_tokens.weight, _reference_codec(emb, "q4_0"))
    assert torch.equal(q4.model.lm_head.weight, model.lm_head.weight)  # llama.cpp: Q6_K; kept here
    for n, p in q4.model.named_parameters():
        if p.ndim == 1:  # norms untouched
            assert torch.equal(p, dict(model.named_parameters())[n]), n
    assert "model.embed_tokens" in q4.records and "lm_head" not in q4.records
    q8 = quantize_model(model, "gguf-q8_0")
    assert q8.settings["output"] == "Q8_0"
    assert torch.equal(q8.model.lm_head.weight, _reference_codec(model.lm_head.weight, "q8_0"))
    assert torch.equal(model.lm_head.weight, src["lm_head"].weight)  # the input model is not modified


def test_tied_embeddings_follow_the_output_rule(ref_tokenizer):
    from conftest import tiny_llama

    tied = tiny_llama(len(ref_tokenizer), tie=True)  # hidden 64: not a multiple of 256 -> llama.cpp uses Q8_0
    q = quantize_model(tied, "gguf-q4_0")
    assert q.settings["output"] == "Q8_0" and q.settings["token_embedding"] == "tied to the output"
    assert torch.equal(q.model.lm_head.weight, _reference_codec(tied.lm_head.weight, "q8_0"))
    assert q.model.lm_head.weight is q.model.model.embed_tokens.weight


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(InputError, match=r"needs the optional dependency 'gguf': pip install 'mansu-audit\[gguf\]'"):
        weight_quantizer("gguf-q5_0")("w", torch.randn(2, 32))
    assert callable(get_quantizer("gguf-q5_0"))  # registration itself never imports gguf


# ---------------------------------------------------------------------- artifacts


def _like_llama_cpp(qtype):
    """llama.cpp's choice for a q4_0-style file, with the output kept in F32 (what gguf-q4_0 models)."""
    def choose(name, arr):
        if arr.ndim == 1 or name == "output.weight":
            return gguf.GGMLQuantizationType.F32
        return gguf.GGMLQuantizationType[qtype.upper()]
    return choose


def test_artifact_equals_the_fake_quantizer(reference, tmp_path):
    from mansu_audit.quantizers.gguf import load_artifact

    path = tmp_path / "cand.Q4_0.gguf"
    write_gguf(path, reference.model, _like_llama_cpp("q4_0"))
    art = load_artifact(path, reference.model)
    fake = quantize_model(reference.model, "gguf-q4_0").model
    got, want = art.model.state_dict(), fake.state_dict()
    assert got.keys() == want.keys()
    for key in want:  # the file (q/k rows permuted as llama.cpp stores them) reads back as gguf-q4_0, bit for bit
        assert torch.equal(got[key], want[key]), key
    assert art.record["file_type"] == "Q4_0" and art.record["tensor_types"] == {"F32": 10, "Q4_0": 29}
    assert len(art.record["sha256"]) == 64 and art.record["kind"] == "artifact"


def test_artifact_with_k_quant_tensor(reference, tmp_path):
    """A Q4_K tensor (gguf-py dequantizes K-quants only): the loaded weight is gguf-py's dequantization."""
    from mansu_audit.quantizers.gguf import load_artifact

    rng = np.random.default_rng(0)
    qt = gguf.GGMLQuantizationType.Q4_K
    _, type_size = gguf.GGML_QUANT_SIZES[qt]
    rows, cols = reference.model.model.layers[0].mlp.down_proj.weight.shape
    raw = rng.integers(0, 256, size=(rows, cols // 256, type_size), dtype=np.uint8)
    raw[..., 0:2] = np.full((rows, cols // 256), 1e-3, np.float16)[..., None].view(np.uint8)  # d
    raw[..., 2:4] = np.full((rows, cols // 256), 1e-3, np.float16)[..., None].view(np.uint8)  # dmin
    raw = raw.reshape(rows, -1)

    def choose(name, arr):
        return (raw, qt) if name == "blk.0.ffn_down.weight" else _like_llama_cpp("q8_0")(name, arr)

    path = tmp_path / "cand.Q4_K_M.gguf"
    write_gguf(path, reference.model, choose, file_type="MOSTLY_Q4_K_M")
    art = load_artifact(path, reference.model)
    got = art.model.model.layers[0].mlp.down_proj.weight
    assert torch.equal(got, torch.from_numpy(gguf.quants.dequantize(raw, qt)))
    assert art.record["file_type"] == "Q4_K_M" and art.record["tensor_types"]["Q4_K"] == 1


def test_artifact_errors(reference, tiny_model, tmp_path):
    from mansu_audit.certify import check_artifacts
    from mansu_audit.commands.certify import parse_artifacts
    from mansu_audit.quantizers.gguf import load_artifact

    path = tmp_path / "ref.gguf"
    write_gguf(path, reference.model, _like_llama_cpp("q8_0"))
    with pytest.raises(InputError, match="has shape"):
        load_artifact(path, tiny_model)  # another architecture's file
    with pytest.raises(InputError, match="GGUF artifact not found"):
        check_artifacts({"q4_k_m": tmp_path / "missing.gguf"}, ())
    with pytest.raises(InputError, match="already a quantizer"):
        check_artifacts({"nf4": path}, ())
    with pytest.raises(InputError, match="already a quantizer"):
        check_artifacts({"mine": path}, ("mine",))
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not gguf")
    with pytest.raises(InputError, match="not a readable GGUF file"):
        check_artifacts({"x": bad}, ())
    assert parse_artifacts(["q4_k_m=a.gguf", "q8=b.gguf"]) == {"q4_k_m": "a.gguf", "q8": "b.gguf"}
    for wrong in (["q4_k_m"], ["=a.gguf"], ["a=x.gguf", "a=y.gguf"]):
        with pytest.raises(InputError):
            parse_artifacts(wrong)


@pytest.mark.slow
def test_certify_with_quantized_artifact(reference, tmp_path):
    """End to end through the CLI: the artifact is variant Q[q4_0_file], its digest in the certificate, and it
    gives the same per-item results as the gguf-q4_0 fake quantizer (identical weights)."""
    from mansu_audit.io import sha256_file

    path = tmp_path / "cand.Q4_0.gguf"
    write_gguf(path, reference.model, _like_llama_cpp("q4_0"))
    out = tmp_path / "cert"
    cmd = [sys.executable, "-m", "mansu_audit", "certify", "--base", "reference", "--candidate", "reference",
           "--quantizers", "gguf-q4_0", "--quantized-artifact", f"q4_0_file={path}", "--out", str(out),
           "--cad", "skip", "--relearn", "skip", "--consistency", "skip", "--no-cache", "--quiet",
           "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
    assert proc.returncode in (0, 1, 3), proc.stderr[-2000:]
    body = json.loads((out / "certificate.json").read_text())["body"]
    settings = body["quantizers"]["q4_0_file"]["settings"]
    assert settings["sha256"] == sha256_file(path) and settings["file_type"] == "Q4_0"
    assert "Q[q4_0_file]" in body["desiderata"]
    preds = body["per_item"]["forget_eval"]["predictions"]
    assert preds["candidate/q4_0_file"] == preds["candidate/gguf-q4_0"]
    assert preds["base/q4_0_file"] == preds["base/unquantized"]
