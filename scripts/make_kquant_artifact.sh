#!/usr/bin/env bash
# Make a llama.cpp K-quant GGUF (default Q4_K_M, what most local users run) of a Llama-architecture
# model folder, for `certify --quantized-artifact NAME=OUT.gguf` (optional; needs cmake and g++).
#
#   scripts/make_kquant_artifact.sh MODEL_DIR OUT.gguf [TYPE]     # TYPE: any llama-quantize type, Q4_K_M
#
# 1. llama-quantize: $LLAMA_QUANTIZE, else `llama-quantize` on PATH, else built from llama.cpp's
#    sources ($LLAMA_CPP_SRC, else the llama.cpp vendored in the llama-cpp-python sdist, fetched
#    with `pip download`) into $LLAMA_BUILD (default /tmp/llama-build): only that one tool, CPU,
#    `nice -n 10`, $JOBS parallel jobs (default 1). Nothing is written inside the repository.
# 2. MODEL_DIR (safetensors + config.json + tokenizer.json, e.g. benchmarks_data/reference-nf4grid
#    or an `unlearn` output) is written as a float32 GGUF with gguf-py's GGUFWriter in llama.cpp's
#    layout (q/k rows permuted as convert_hf_to_gguf.py does, which transformers' GGUF reader
#    undoes; byte-level BPE tokenizer; no output tensor when the embeddings are tied). llama.cpp's
#    convert_hf_to_gguf.py is not used: it needs sentencepiece and refuses tokenizers whose
#    pre-tokenizer it does not know, such as the bundled models'.
# 3. `llama-quantize F32.gguf OUT.gguf TYPE` (no imatrix): llama.cpp chooses each tensor's type.
#
# Exits 0 with one "skipped: ..." line when cmake/g++ (or the gguf package) are absent,
# 2 on bad arguments, 1 when a step fails. Never commit the .gguf files it writes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: scripts/make_kquant_artifact.sh MODEL_DIR OUT.gguf [TYPE (default Q4_K_M)]" >&2
  exit 2
fi
MODEL_DIR=$1 OUT=$2 TYPE=${3:-Q4_K_M}
for f in config.json tokenizer.json; do
  [ -f "$MODEL_DIR/$f" ] || { echo "$MODEL_DIR: no $f (a Hugging Face Llama folder is needed)" >&2; exit 2; }
done
case "$OUT" in *.gguf) ;; *) echo "$OUT: the output must end in .gguf" >&2; exit 2 ;; esac
"$PY" -c "import gguf" 2>/dev/null || { echo "make_kquant_artifact: skipped: the gguf package is absent (pip install 'mansu-audit[gguf]')"; exit 0; }

QUANTIZE=${LLAMA_QUANTIZE:-$(command -v llama-quantize || true)}
BUILD=${LLAMA_BUILD:-/tmp/llama-build}
if [ -z "$QUANTIZE" ] && [ -x "$BUILD/bin/llama-quantize" ]; then QUANTIZE=$BUILD/bin/llama-quantize; fi
if [ -z "$QUANTIZE" ]; then
  for tool in cmake g++; do
    command -v "$tool" >/dev/null 2>&1 || { echo "make_kquant_artifact: skipped: $tool not found (needed to build llama-quantize)"; exit 0; }
  done
  SRC=${LLAMA_CPP_SRC:-}
  if [ -z "$SRC" ]; then
    mkdir -p "$BUILD/sdist"
    "$PY" -m pip download -q --no-deps --no-binary :all: llama-cpp-python -d "$BUILD/sdist" 2>&1 | grep -v '^WARNING: Location' || true
    SDIST=$(ls "$BUILD"/sdist/llama_cpp_python-*.tar.gz 2>/dev/null | tail -1)
    [ -n "$SDIST" ] || { echo "make_kquant_artifact: could not download the llama-cpp-python sdist" >&2; exit 1; }
    tar xzf "$SDIST" -C "$BUILD/sdist"
    SRC=$(ls -d "$BUILD"/sdist/llama_cpp_python-*/vendor/llama.cpp | tail -1)
  fi
  echo "building llama-quantize from $SRC into $BUILD (nice -n 10, -j${JOBS:-1}; about 15 min on one core)" >&2
  nice -n 10 cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_OPENMP=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_WEBUI=OFF >"$BUILD/cmake.log" 2>&1 \
    || { echo "make_kquant_artifact: cmake failed, see $BUILD/cmake.log" >&2; exit 1; }
  nice -n 10 cmake --build "$BUILD" --target llama-quantize -j"${JOBS:-1}" >"$BUILD/build.log" 2>&1 \
    || { echo "make_kquant_artifact: build failed, see $BUILD/build.log" >&2; exit 1; }
  QUANTIZE=$BUILD/bin/llama-quantize
fi

F32=$(mktemp --suffix=.f32.gguf)
trap 'rm -f "$F32"' EXIT
"$PY" - "$MODEL_DIR" "$F32" <<'PYEOF'
"""MODEL_DIR -> float32 llama GGUF (llama.cpp's tensor names and q/k row order)."""
import json
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.torch import load_file

src, out = Path(sys.argv[1]), sys.argv[2]
cfg = json.loads((src / "config.json").read_text())
if cfg.get("model_type") != "llama":
    sys.exit(f"{src}: model_type {cfg.get('model_type')!r}; this script writes Llama GGUFs only")
state = {}
for shard in sorted(src.glob("*.safetensors")):
    state.update(load_file(str(shard)))
heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
rope = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))


def permute(w, n_head):  # convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


writer = gguf.GGUFWriter(out, "llama")
writer.add_block_count(cfg["num_hidden_layers"])
writer.add_context_length(cfg["max_position_embeddings"])
writer.add_embedding_length(cfg["hidden_size"])
writer.add_feed_forward_length(cfg["intermediate_size"])
writer.add_head_count(heads)
writer.add_head_count_kv(kv_heads)
writer.add_rope_freq_base(float(rope))
writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
writer.add_file_type(gguf.LlamaFileType.ALL_F32)
writer.add_vocab_size(cfg["vocab_size"])
tok = json.loads((src / "tokenizer.json").read_text())
vocab = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
special = {a["id"] for a in tok.get("added_tokens", []) if a.get("special")}
writer.add_tokenizer_model("gpt2")
writer.add_tokenizer_pre("default")
writer.add_token_list(vocab)
writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(vocab))])
writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                 ("pad_token_id", writer.add_pad_token_id)):
    if cfg.get(key) is not None:
        add(cfg[key])
names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
         "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
         "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
tensors = [("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight")]
if not cfg.get("tie_word_embeddings", False):
    tensors.append(("output.weight", "lm_head.weight"))
for i in range(cfg["num_hidden_layers"]):
    tensors += [(f"blk.{i}.{gg}.weight", f"model.layers.{i}.{hf}.weight") for hf, gg in names.items()]
for gg_name, hf_name in tensors:
    w = state[hf_name].float().numpy()  # bf16/f16 values are exact in float32
    if hf_name.endswith("q_proj.weight"):
        w = permute(w, heads)
    elif hf_name.endswith("k_proj.weight"):
        w = permute(w, kv_heads)
    writer.add_tensor(gg_name, np.ascontiguousarray(w))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
PYEOF
"$QUANTIZE" "$F32" "$OUT" "$TYPE" >"$OUT.quantize.log" 2>&1 \
  || { echo "make_kquant_artifact: llama-quantize failed, see $OUT.quantize.log" >&2; exit 1; }
echo "wrote $OUT ($TYPE, sha256 $(sha256sum "$OUT" | cut -d' ' -f1)); llama-quantize log: $OUT.quantize.log"
