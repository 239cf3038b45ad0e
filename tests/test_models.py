"""Loader refusals for untrusted checkpoints (SPEC §11) and a clean round trip."""
from __future__ import annotations

import json

import pytest
import torch

from mansu_audit.errors import InputError
from mansu_audit.loading import load_model


def test_round_trip_hashes_files(tiny_dir):
    loaded = load_model(tiny_dir)
    assert loaded.model.config.model_type == "llama"
    hashes = loaded.file_hashes()
    assert "model.safetensors" in hashes and "tokenizer.json" in hashes and "config.json" in hashes
    assert all(len(h) == 64 for h in hashes.values())


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="model folder not found"):
        load_model(tmp_path / "nope")


def test_missing_tokenizer(tiny_dir):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (tiny_dir / f).unlink()
    with pytest.raises(InputError, match="no tokenizer files"):
        load_model(tiny_dir)


def test_pickle_refused_unless_allowed(tiny_dir):
    model = load_model(tiny_dir).model
    (tiny_dir / "model.safetensors").unlink()
    torch.save(model.state_dict(), tiny_dir / "pytorch_model.bin")
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_model(tiny_dir)
    assert load_model(tiny_dir, allow_pickle=True).model is not None


def test_allow_pickle_still_loads_safetensors_folders():
    """--allow-pickle widens what loads; a safetensors checkpoint must load with it too."""
    assert load_model("reference", allow_pickle=True).model.config.num_hidden_layers == 4


def test_nan_weights_rejected(tiny_dir):
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_dir / "model.safetensors"))
    key = next(k for k in state if "down_proj" in k)
    state[key][0, 0] = float("nan")
    save_file(state, str(tiny_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match=f"weight '{key}' contains NaN or Inf"):
        load_model(tiny_dir)


def test_non_causal_config_and_remote_code(tiny_dir):
    cfg_path = tiny_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}))
    with pytest.raises(InputError, match="remote code"):
        load_model(tiny_dir)
    cfg_path.write_text(json.dumps({"model_type": "t5", "vocab_size": 1024}))
    with pytest.raises(InputError, match="not a causal language model"):
        load_model(tiny_dir)


def test_bundled_tokenizer_adds_bos(ref_tokenizer):
    """Training prepends BOS, so the tokenizer must (lm-eval encodes with the tokenizer's default)."""
    ids = ref_tokenizer("What is 2 + 3?").input_ids
    assert ids[0] == ref_tokenizer.bos_token_id
    assert all(len(ref_tokenizer(f"Answer: {l}").input_ids) == len(ref_tokenizer("Answer:").input_ids) + 1
               for l in "ABCD")
