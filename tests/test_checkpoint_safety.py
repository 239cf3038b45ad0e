"""Checkpoints that are silently wrong, and other bad model inputs: each is one InputError line naming the
tensor, file or item (issue: "Checkpoints that are silently wrong", "Every bad input is one line")."""
from __future__ import annotations

import json
import pickle
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REFERENCE_DIR, tiny_llama
from mansu_audit.cli import main
from mansu_audit.data import MCQItem
from mansu_audit.errors import InputError
from mansu_audit.evaluate import evaluate_mcq
from mansu_audit.loading import fresh_copy, load_model, plan_device
from mansu_audit.loading.lora import peft_available
from mansu_audit.prompts import chat_prompt_fn, item_prompt

DOWN = "model.layers.1.mlp.down_proj.weight"


def _edit_weights(folder, edit):
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- tensors vs config

def test_missing_tensor_is_refused_not_random_initialised(tiny_dir):
    _edit_weights(tiny_dir, lambda s: s.pop(DOWN))
    with pytest.raises(InputError) as exc:
        load_model(tiny_dir)
    assert f"tensor '{DOWN}' is missing" in _one_line(exc) and str(tiny_dir) in str(exc.value)


def test_unexpected_tensor_is_refused(tiny_dir):
    _edit_weights(tiny_dir, lambda s: s.__setitem__("model.layers.1.mlp.extra_proj.weight", torch.zeros(4, 4)))
    with pytest.raises(InputError) as exc:
        load_model(tiny_dir)
    assert "tensor 'model.layers.1.mlp.extra_proj.weight' is not part of" in _one_line(exc)
    assert "model.safetensors" in str(exc.value)


def test_wrong_shape_is_refused(tiny_dir):
    _edit_weights(tiny_dir, lambda s: s.__setitem__(DOWN, s[DOWN][:, :-1].contiguous()))
    with pytest.raises(InputError) as exc:
        load_model(tiny_dir)
    assert f"tensor '{DOWN}' has shape [64, 127] but the config implies [64, 128]" in _one_line(exc)


def test_integer_weight_is_refused(tiny_dir):
    _edit_weights(tiny_dir, lambda s: s.__setitem__(DOWN, s[DOWN].to(torch.int32)))
    with pytest.raises(InputError) as exc:
        load_model(tiny_dir)
    assert f"tensor '{DOWN}' is stored as I32 where a float weight belongs" in _one_line(exc)


def test_tied_checkpoint_without_lm_head_still_loads(tmp_path, ref_tokenizer):
    d = tmp_path / "tied"
    tiny_llama(len(ref_tokenizer), tie=True).save_pretrained(str(d))
    ref_tokenizer.save_pretrained(str(d))
    assert "lm_head.weight" not in load_file(str(d / "model.safetensors"))
    loaded = load_model(d)
    assert torch.equal(loaded.model.lm_head.weight, loaded.model.model.embed_tokens.weight)


def test_huge_declared_config_fails_fast(tiny_dir):
    """100,000 layers x 65,536 hidden: refused from the headers and meta skeletons, nothing allocated."""
    _edit_config(tiny_dir, num_hidden_layers=100_000, hidden_size=65_536, intermediate_size=4 * 65_536)
    start = time.perf_counter()
    with pytest.raises(InputError) as exc:
        load_model(tiny_dir)
    assert time.perf_counter() - start < 10
    msg = _one_line(exc)
    assert "config.json" in msg and "100000 layers" in msg and "config and weights do not match" in msg


def test_parameter_count_is_checked_against_memory(tiny_dir, monkeypatch):
    monkeypatch.setattr("mansu_audit.loading.checkpoint.available_memory", lambda plan: 1000)
    with pytest.raises(InputError) as exc:
        load_model(tiny_dir)
    assert "model needs" in _one_line(exc) and "but only 0.0 GiB is free on cpu" in str(exc.value)


def test_missing_shard_is_named(tiny_dir):
    state = load_file(str(tiny_dir / "model.safetensors"))
    (tiny_dir / "model.safetensors").unlink()
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, str(tiny_dir / "model-00001-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors"
                  for i, k in enumerate(keys)}
    (tiny_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(InputError) as exc:
        load_model(tiny_dir)
    assert "shard 'model-00002-of-00002.safetensors' named in the index is missing" in _one_line(exc)
    save_file({k: state[k] for k in keys[half:]}, str(tiny_dir / "model-00002-of-00002.safetensors"))
    assert load_model(tiny_dir).model.config.num_hidden_layers == 2  # complete shards load


def test_shard_index_cannot_name_a_file_outside_the_folder(tiny_dir):
    """A shard index naming '../x' is refused even when that file exists, for models and quantized artifacts
    alike (one shard list: `checkpoint.shard_files`)."""
    from mansu_audit.loading.bnb import weight_files

    state = load_file(str(tiny_dir / "model.safetensors"))
    (tiny_dir / "model.safetensors").unlink()
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, str(tiny_dir / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[half:]}, str(tiny_dir.parent / "outside.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" if i < half else "../outside.safetensors"
                  for i, k in enumerate(keys)}
    (tiny_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for call in (load_model, weight_files):
        with pytest.raises(InputError) as exc:
            call(tiny_dir)
        assert "shard '../outside.safetensors' named in the index is not a file name in the folder" in _one_line(exc)


def test_a_tensor_stored_in_two_shards_is_refused(tiny_dir):
    """Two shards both holding one tensor: which copy wins would depend on read order, so the model loader
    (headers) and the shard reader of bnb/GPTQ artifacts (`read_shard_tensors`) both refuse the folder."""
    from mansu_audit.loading.checkpoint import read_shard_tensors

    state = load_file(str(tiny_dir / "model.safetensors"))
    (tiny_dir / "model.safetensors").unlink()
    keys = sorted(state)
    half = len(keys) // 2
    twice = keys[half]  # in both shards
    save_file({k: state[k] for k in keys[:half + 1]}, str(tiny_dir / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[half:]}, str(tiny_dir / "model-00002-of-00002.safetensors"))
    weight_map = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(keys)}
    (tiny_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for call in (load_model, read_shard_tensors):
        with pytest.raises(InputError) as exc:
            call(tiny_dir)
        msg = _one_line(exc)
        assert f"tensor '{twice}' is stored twice (model-00001-of-00002.safetensors and here)" in msg
        assert "model-00002-of-00002.safetensors" in msg


# --------------------------------------------------------------------------- config.json

def test_pre_quantized_checkpoint_is_refused(tiny_dir):
    _edit_config(tiny_dir, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    with pytest.raises(InputError) as exc:
        load_model(tiny_dir)
    msg = _one_line(exc)
    assert "config.json" in msg and "pre-quantized (quantization_config: bitsandbytes)" in msg
    assert "--quantized-artifact NAME=FOLDER" in msg


def test_config_that_is_a_json_list(tiny_dir):
    (tiny_dir / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(InputError) as exc:
        load_model(tiny_dir)
    assert "config.json: expected a JSON object, got a JSON list" in _one_line(exc)


def test_config_that_is_not_utf8(tiny_dir):
    (tiny_dir / "config.json").write_bytes(b'{"model_type": "llama\xff\xfe"}')
    with pytest.raises(InputError) as exc:
        load_model(tiny_dir)
    assert "config.json: not UTF-8 text" in _one_line(exc)


# --------------------------------------------------------------------------- tokenizer, device

def test_tokenizer_beyond_the_vocabulary(tmp_path, ref_tokenizer):
    d = tmp_path / "small_vocab"
    tiny_llama(512).save_pretrained(str(d))  # 512 embedding rows, the tokenizer has 1024 ids
    ref_tokenizer.save_pretrained(str(d))
    with pytest.raises(InputError) as exc:
        load_model(d)
    msg = _one_line(exc)
    assert f"tokenizer has token ids up to {len(ref_tokenizer) - 1}" in msg and "only 512 rows" in msg


def test_unknown_device_is_one_line(tiny_dir, capsys):
    with pytest.raises(InputError, match=r"unknown device 'tpu9' \(use auto, cpu, cuda, cuda:N or mps\)"):
        plan_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU is visible"):
            plan_device("cuda:7")
    assert main(["evaluate", "--model", str(tiny_dir), "--device", "tpu9", "--bootstrap", "10"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("mansu-audit: error: unknown device 'tpu9' "
                                            "(use auto, cpu, cuda, cuda:N or mps)") and "Traceback" not in err


def test_cli_names_the_missing_tensor(tiny_dir, capsys):
    _edit_weights(tiny_dir, lambda s: s.pop(DOWN))
    assert main(["evaluate", "--model", str(tiny_dir), "--bootstrap", "10", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mansu-audit: error:") and DOWN in last and "Traceback" not in err


# --------------------------------------------------------------------------- adapters

class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_adapter_with_allow_pickle_is_one_line(tmp_path, tiny_dir):
    folder = tmp_path / "evil_adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": str(tiny_dir)}))
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"x": _Payload()}))
    with pytest.raises(InputError) as exc:
        load_model(folder, allow_pickle=True)
    assert "adapter_model.bin: pickle refused by the weights-only unpickler" in _one_line(exc)


def _peft_lora_bias_adapter(tmp_path, base_dir):
    """A real peft artifact with `lora_bias: true` (lora_B carries a bias), and the unmerged peft model."""
    peft = pytest.importorskip("peft")
    base = load_model(base_dir).model
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], lora_bias=True,
                             init_lora_weights=False)
    model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name and name.endswith("bias"):
                p.normal_(0, 0.5)
    tmp_path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp_path / "adapter"))
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(base_dir)
    cfg_path.write_text(json.dumps(cfg))
    return tmp_path / "adapter", model.eval()


@pytest.fixture()
def biased_dir(tmp_path, ref_tokenizer):
    """A tiny llama whose linear layers carry biases (peft merges `lora_bias` only into a bias)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(ref_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      attention_bias=True, mlp_bias=True, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    d = tmp_path / "biased"
    LlamaForCausalLM(cfg).save_pretrained(str(d))
    ref_tokenizer.save_pretrained(str(d))
    return d


def test_lora_bias_adapter_is_refused_without_peft(tmp_path, biased_dir, monkeypatch):
    adapter, _ = _peft_lora_bias_adapter(tmp_path, biased_dir)
    assert any(k.endswith("lora_B.bias") for k in load_file(str(adapter / "adapter_model.safetensors")))
    monkeypatch.setattr("mansu_audit.loading.lora.peft_available", lambda: False)
    with pytest.raises(InputError) as exc:
        load_model(adapter)
    msg = _one_line(exc)
    assert "adapter_config.json" in msg and "'lora_bias: true'" in msg and "mansu-audit[peft]" in msg


@pytest.mark.skipif(not peft_available(), reason="peft not installed")
def test_lora_bias_adapter_merges_through_peft(tmp_path, biased_dir, tiny_dir, ref_tokenizer):
    adapter, unmerged = _peft_lora_bias_adapter(tmp_path, biased_dir)
    merged = load_model(adapter)
    ids = torch.tensor([ref_tokenizer("Which toxin is produced by the agent Bifo?").input_ids])
    with torch.no_grad():
        want = unmerged(input_ids=ids).logits
        got = merged.model(input_ids=ids).logits
        plain = load_model(biased_dir).model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(plain, want, atol=1e-3)
    assert any("merged over base" in n and "by peft" in n for n in merged.notes)
    no_bias, _ = _peft_lora_bias_adapter(tmp_path / "nb", tiny_dir)  # lora_bias on bias-free layers
    with pytest.raises(InputError) as exc:
        load_model(no_bias)
    assert "peft cannot merge this adapter" in _one_line(exc) and "adapter_config.json" in str(exc.value)


def test_unknown_lora_tensor_is_refused_without_peft(tmp_path, tiny_dir, monkeypatch):
    folder = tmp_path / "variant"
    folder.mkdir()
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 64),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(64, 2),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": torch.ones(64)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": str(tiny_dir)}))
    monkeypatch.setattr("mansu_audit.loading.lora.peft_available", lambda: False)
    with pytest.raises(InputError) as exc:
        load_model(folder)
    assert "adapter tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector' is a LoRA " \
           "variant the built-in merge does not understand" in _one_line(exc)


# --------------------------------------------------------------------------- prompts and templates

def test_chat_template_blocked_by_the_sandbox(ref_tokenizer):
    import copy

    tok = copy.deepcopy(ref_tokenizer)
    tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(InputError) as exc:
        chat_prompt_fn(tok, "auto")
    msg = _one_line(exc)
    assert "chat template cannot be rendered (SecurityError" in msg and "--chat-template off" in msg


def _long_item(n_words: int) -> MCQItem:
    return MCQItem(id="long-1", question="word " * n_words + "Which toxin?", choices=("a", "b", "c", "d"),
                   answer=0)


def test_prompt_longer_than_the_context(tiny_model, ref_tokenizer, bundle):
    short = bundle.split("retain_eval")[:3]
    items = [*short, _long_item(400)]  # tiny_llama has max_position_embeddings=128
    with pytest.raises(InputError) as exc:
        evaluate_mcq(tiny_model, ref_tokenizer, items)
    assert "item 'long-1' is" in _one_line(exc) and "more than the model's context of 128" in str(exc.value)
    assert "--truncate left" in str(exc.value)
    res = evaluate_mcq(tiny_model, ref_tokenizer, items, truncate="left")
    assert res.truncated == 1 and res.to_dict()["truncated"] == 1
    plain = evaluate_mcq(tiny_model, ref_tokenizer, short)
    assert res.logprobs[:3] == pytest.approx(plain.logprobs, abs=1e-5) and "truncated" not in plain.to_dict()
    ids = ref_tokenizer(item_prompt(items[3])).input_ids[-128:]  # lm-eval's left truncation, by hand
    with torch.no_grad():
        logp = tiny_model(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
    letters = [ref_tokenizer(item_prompt(items[3]) + f" {c}").input_ids[-1] for c in "ABCD"]
    assert res.logprobs[3] == pytest.approx([float(logp[t]) for t in letters], abs=1e-5)
    with pytest.raises(InputError, match="--truncate must be one of left"):
        evaluate_mcq(tiny_model, ref_tokenizer, short, truncate="right")


# --------------------------------------------------------------------------- determinism, purity

def test_bundled_reference_loads_identically_twice():
    if not (REFERENCE_DIR / "model.safetensors").is_file():
        pytest.skip("reference model weights not built")
    a, b = load_model("reference"), load_model("reference")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.file_hashes() == b.file_hashes()


def test_fresh_copy_leaves_the_input_config_alone(tiny_model):
    tiny_model.config.gguf_file = "x.gguf"
    copy = fresh_copy(tiny_model)
    assert tiny_model.config.gguf_file == "x.gguf" and not hasattr(copy.config, "gguf_file")
    assert copy.config is not tiny_model.config


def test_certify_refuses_or_truncates_and_records(tmp_path, ref_tokenizer):
    from conftest import small_bundle

    from mansu_audit.cache import NoCache
    from mansu_audit.certify import certify
    from mansu_audit.data import load_bundle
    from mansu_audit.loading import model_from_objects
    from mansu_audit.policy import Policy

    bundle = small_bundle(tmp_path / "bundle", n=8)
    path = bundle.root / "forget_eval.jsonl"
    lines = path.read_text().splitlines()
    first = json.loads(lines[1])
    first["question"] = "word " * 400 + first["question"]
    lines[1] = json.dumps(first)
    path.write_text("\n".join(lines) + "\n")
    bundle = load_bundle(bundle.root)
    base = model_from_objects(tiny_llama(len(ref_tokenizer), seed=1), ref_tokenizer, "b")
    cand = model_from_objects(tiny_llama(len(ref_tokenizer), seed=2), ref_tokenizer, "c")
    kwargs = dict(quantizers=(), policy=Policy(bootstrap_replicates=200), cad=None, cache=NoCache())
    with pytest.raises(InputError, match=f"item '{first['id']}' is .* tokens long, more than the model's context"):
        certify(base, cand, bundle, **kwargs)
    cert = certify(base, cand, bundle, truncate="left", **kwargs)
    assert cert.body["prompting"]["truncate"] == "left"
    assert cert.body["prompting"]["truncated"] == {"forget_eval": 1, "retain_eval": 0}
