"""Shared fixtures and helpers: the bundled benchmark, the reference tokenizer, tiny random models (in memory,
saved as folders, as a base/candidate pair), a cut-down bundle, a GGUF writer and a certificate forger.

Tests never download anything: models are built from configs (seeded), the
tokenizer and benchmark are the bundled ones.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mansu_audit.data import BUNDLED_DATA, load_bundle
from mansu_audit.loading.local import BUNDLED_MODELS

torch.set_num_threads(max(1, int(os.environ.get("MANSU_TEST_THREADS", "2"))))
REFERENCE_DIR = BUNDLED_MODELS["reference"]


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, intermediate: int = 128, tie: bool = False, positions: int = 128):
    """A small random LlamaForCausalLM (GQA) for fast tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=positions, tie_word_embeddings=tie, bos_token_id=0, eos_token_id=1,
                      pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def bundle():
    return load_bundle("synthhazard")


@pytest.fixture(scope="session")
def ref_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(REFERENCE_DIR))


@pytest.fixture()
def tiny_model(ref_tokenizer):
    return tiny_llama(len(ref_tokenizer))


@pytest.fixture(scope="session")
def reference():
    """The bundled trained reference model (skips if its weights are not built yet)."""
    from mansu_audit.loading import load_model

    if not (REFERENCE_DIR / "model.safetensors").is_file():
        pytest.skip("reference model weights not built (benchmarks_data/reference-model/train.py)")
    return load_model("reference")


@pytest.fixture()
def tiny_dir(tmp_path, ref_tokenizer):
    """A tiny random llama saved as a safetensors folder with the reference tokenizer."""
    d = tmp_path / "tiny"
    tiny_llama(len(ref_tokenizer)).save_pretrained(str(d), safe_serialization=True)
    ref_tokenizer.save_pretrained(str(d))
    return d


def small_bundle(root, n=24, edit_retain_question=False, keep_attack=False):
    """A copy of synthhazard with `n` items per MCQ split (fast tests); optionally one retain question edited.

    Without `keep_attack` the copy has no `forget_attack` split, so `certify(relearn="auto")` does not
    run the relearning attack (K is NOT COMPUTED): the tests that use this fixture stay fast, and K has
    its own tests (tests/test_recovery.py, tests/test_verdict_panel.py)."""
    src = BUNDLED_DATA / "synthhazard"
    root.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((src / "manifest.json").read_text())
    if not keep_attack:
        manifest["splits"].pop("forget_attack", None)
    for name, spec in manifest["splits"].items():
        lines = (src / spec["path"]).read_text().splitlines()[:n]
        if edit_retain_question and name == "retain_eval":
            first = json.loads(lines[0])
            first["question"] = first["question"] + " (edited)"
            lines[0] = json.dumps(first)
        (root / spec["path"]).write_text("\n".join(lines) + "\n")
        spec["n"] = len(lines)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return load_bundle(root)


def save_tiny_pair(root: Path, tokenizer) -> Path:
    """`root/base` (seed 0) and `root/cand` (seed 1), tiny random llamas saved as folders, and `root/bundle`
    (`small_bundle`): the inputs of a fast on-disk certification."""
    for name, seed in (("base", 0), ("cand", 1)):
        tiny_llama(len(tokenizer), seed=seed, hidden=32, intermediate=64).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    small_bundle(root / "bundle")
    return root


def forge(certificate: Path, edit, tmp_path: Path) -> tuple[Path, dict]:
    """A forged copy of a certificate folder in `tmp_path/forged` (the results.json sidecar copied, no
    attestation): `edit` applied to the body, body_sha256 recomputed the way the suite does.
    Returns (path of the forged certificate.json, its body)."""
    from mansu_audit.certificate import body_sha256

    folder = tmp_path / "forged"
    folder.mkdir()
    shutil.copy(certificate.parent / "results.json", folder / "results.json")
    doc = json.loads(certificate.read_text())
    edit(doc["body"])
    doc["body_sha256"] = body_sha256(doc["body"])
    (folder / "certificate.json").write_text(json.dumps(doc))
    return folder / "certificate.json", doc["body"]


def _permute(x, n_head):
    """llama.cpp's q/k row order (convert_hf_to_gguf.py), which transformers undoes on load."""
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _unpermute(x, n_head):
    return x.reshape(n_head, x.shape[0] // n_head // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


GGUF_LAYER_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                    "mlp.down_proj": "ffn_down"}


def write_gguf(path, model, type_of, file_type="MOSTLY_Q4_0", tokenizer_json=None) -> dict[str, torch.Tensor]:
    """A llama GGUF of `model` as llama.cpp lays it out (q/k rows permuted; no output tensor when tied).

    `type_of(gguf_name, array)` -> a GGMLQuantizationType (F32 or a type gguf-py can quantize) or raw
    (bytes, type) for types it only dequantizes. `tokenizer_json`: also write the byte-level BPE tokenizer
    (a complete file that transformers and llama.cpp tools read). Returns the weights a correct loader
    must produce, by Hugging Face name: each tensor dequantized by gguf-py, q/k rows un-permuted.
    """
    gguf = pytest.importorskip("gguf")
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(getattr(gguf.LlamaFileType, file_type))
    w.add_vocab_size(cfg.vocab_size)
    if tokenizer_json is not None:
        t = json.loads(Path(tokenizer_json).read_text())
        tokens = [k for k, _ in sorted(t["model"]["vocab"].items(), key=lambda kv: kv[1])]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_types([3 if i < 3 else 1 for i in range(len(tokens))])
        w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in t["model"]["merges"]])
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
        w.add_pad_token_id(2)
        w.add_add_bos_token(True)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tensors = [("token_embd.weight", "model.embed_tokens.weight", None),
               ("output_norm.weight", "model.norm.weight", None)]
    if "lm_head.weight" in sd and not cfg.tie_word_embeddings:
        tensors.append(("output.weight", "lm_head.weight", None))
    heads = {"self_attn.q_proj": cfg.num_attention_heads, "self_attn.k_proj": cfg.num_key_value_heads}
    for i in range(cfg.num_hidden_layers):
        tensors += [(f"blk.{i}.{gg}.weight", f"model.layers.{i}.{hf}.weight", heads.get(hf))
                    for hf, gg in GGUF_LAYER_NAMES.items()]
    expected = {}
    for name, hf_name, n_head in tensors:
        arr = sd[hf_name] if n_head is None else _permute(sd[hf_name], n_head)
        choice = type_of(name, arr)
        if isinstance(choice, tuple):
            raw, qt = choice
            w.add_tensor(name, raw, raw_dtype=qt)
            stored = gguf.quants.dequantize(raw, qt)
        elif choice == gguf.GGMLQuantizationType.F32:
            stored = np.ascontiguousarray(arr, dtype=np.float32)
            w.add_tensor(name, stored)
        else:
            q = gguf.quants.quantize(arr, choice)
            w.add_tensor(name, q, raw_dtype=choice)
            stored = gguf.quants.dequantize(q, choice)
        stored = stored if n_head is None else _unpermute(stored, n_head)
        expected[hf_name] = torch.from_numpy(np.ascontiguousarray(stored.reshape(arr.shape)))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected
