"""Real-model inputs: LoRA adapters, hub cache, GGUF helpers, device plans, chat templates, batch back-off."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_llama, write_gguf
from mansu_audit.cli import main
from mansu_audit.errors import InputError
from mansu_audit.evaluate import evaluate_mcq
from mansu_audit.batching import AutoBatch
from mansu_audit.loading import fresh_copy, load_model, load_tokenizer, model_file_map, plan_device
from mansu_audit.loading.gguf import gguf_info
from mansu_audit.loading.hub import is_hub_id
from mansu_audit.loading.lora import peft_available
from mansu_audit.prompts import chat_prompt_fn, chat_template_record, continuations, item_prompt

TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")


@pytest.fixture()
def base_dir(tmp_path, ref_tokenizer):
    folder = tmp_path / "base"
    tiny_llama(len(ref_tokenizer), seed=3).save_pretrained(folder)
    ref_tokenizer.save_pretrained(folder)
    return folder


def write_adapter(folder, base, r=4, alpha=8.0, seed=0, rslora=False, base_name=None, extra_cfg=None):
    """A PEFT-format LoRA adapter (key names and config as peft's save_pretrained writes them)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(base.config.num_hidden_layers):
        for target in TARGETS:
            module = base.get_submodule(f"model.layers.{layer}.{target}")
            key = f"base_model.model.model.layers.{layer}.{target}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(r, module.in_features, generator=g) * 0.1
            tensors[f"{key}.lora_B.weight"] = torch.randn(module.out_features, r, generator=g) * 0.1
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora, "fan_in_fan_out": False,
           "target_modules": ["q_proj", "v_proj", "down_proj"], "base_model_name_or_path": base_name,
           "task_type": "CAUSAL_LM", **(extra_cfg or {})}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return tensors


def lora_forward_logits(base, tensors, scale, ids):
    """Logits of the *unmerged* LoRA model: each target's output gets + scale · x Aᵀ Bᵀ via hooks."""
    handles = []
    for layer in range(base.config.num_hidden_layers):
        for target in TARGETS:
            key = f"base_model.model.model.layers.{layer}.{target}"
            a, b = tensors[f"{key}.lora_A.weight"], tensors[f"{key}.lora_B.weight"]

            def hook(module, inputs, output, a=a, b=b):
                return output + scale * (inputs[0] @ a.T) @ b.T

            handles.append(base.get_submodule(f"model.layers.{layer}.{target}").register_forward_hook(hook))
    try:
        with torch.no_grad():
            return base(ids).logits
    finally:
        for h in handles:
            h.remove()


def test_lora_merge_equals_the_unmerged_adapter(tmp_path, base_dir, ref_tokenizer):
    base = load_model(base_dir).model
    tensors = write_adapter(tmp_path / "adapter", base, base_name=str(base_dir))
    merged = load_model(tmp_path / "adapter")
    ids = torch.tensor([ref_tokenizer("Which toxin is produced by the agent Bifo?").input_ids])
    expected = lora_forward_logits(base, tensors, 8.0 / 4, ids)
    with torch.no_grad():
        got = merged.model(ids).logits
        plain = base(ids).logits
    assert torch.allclose(got, expected, atol=1e-4) and not torch.allclose(plain, expected, atol=1e-2)
    assert any("LoRA adapter" in n and "r=4, alpha=8" in n and "6 modules" in n for n in merged.notes)
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors", "base/model.safetensors",
            "base/config.json", "base/tokenizer.json"} <= set(merged.files)
    assert len(merged.file_hashes()) == len(merged.files)


def test_rslora_scale_and_explicit_base(tmp_path, base_dir):
    base = load_model(base_dir).model
    tensors = write_adapter(tmp_path / "adapter", base, r=4, alpha=6.0, rslora=True, base_name="not/there")
    merged = load_model(tmp_path / "adapter", adapter_base=base_dir).model  # explicit base wins
    key = "base_model.model.model.layers.1.mlp.down_proj"
    delta = merged.model.layers[1].mlp.down_proj.weight - base.model.layers[1].mlp.down_proj.weight
    expected = 6.0 / math.sqrt(4) * tensors[f"{key}.lora_B.weight"] @ tensors[f"{key}.lora_A.weight"]
    assert torch.allclose(delta, expected, atol=1e-5)
    assert torch.equal(merged.model.layers[1].mlp.up_proj.weight, base.model.layers[1].mlp.up_proj.weight)


def test_adapter_refusals_are_one_line(tmp_path, base_dir, ref_tokenizer, capsys, monkeypatch):
    other = tmp_path / "other"
    tiny_llama(len(ref_tokenizer), hidden=32, intermediate=64).save_pretrained(other)
    ref_tokenizer.save_pretrained(other)
    write_adapter(tmp_path / "a", load_model(base_dir).model, base_name=str(other))
    with pytest.raises(InputError, match="does not match the base weight"):
        load_model(tmp_path / "a")
    write_adapter(tmp_path / "dora", load_model(base_dir).model, base_name=str(base_dir),
                  extra_cfg={"use_dora": True})
    with monkeypatch.context() as m:  # the built-in merge (peft absent) refuses DoRA by name
        m.setattr("mansu_audit.loading.lora.peft_available", lambda: False)
        with pytest.raises(InputError, match=r"DoRA \(use_dora\).*pip install 'mansu-audit\[peft\]'"):
            load_model(tmp_path / "dora")
    if peft_available():  # peft merges DoRA, but this adapter lacks the magnitude vectors DoRA needs
        with pytest.raises(InputError, match="adapter lacks tensor .*lora_magnitude_vector"):
            load_model(tmp_path / "dora")
    pickled = tmp_path / "pickled"
    write_adapter(pickled, load_model(base_dir).model, base_name=str(base_dir))
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    with pytest.raises(InputError, match="refusing to unpickle"):
        load_model(pickled)
    with pytest.raises(InputError, match="not a LoRA adapter folder"):
        load_model(base_dir, adapter_base=base_dir)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "a"), "--bootstrap", "10"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # (transformers' own progress bars may precede it)
    assert last.startswith("mansu-audit: error:") and "does not match the base weight" in last
    assert "Traceback" not in err


def test_adapter_nan_is_rejected(tmp_path, base_dir):
    tensors = write_adapter(tmp_path / "nan", load_model(base_dir).model, base_name=str(base_dir))
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(tmp_path / "nan" / "adapter_model.safetensors"))
    with pytest.raises(InputError, match="NaN or Inf"):
        load_model(tmp_path / "nan")


def _fake_hub_cache(root, repo_id, folder):
    """The huggingface_hub cache layout: models--ORG--NAME/{refs/main, snapshots/REV/...}."""
    rev = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    return snap


def test_hub_id_loads_from_cache_offline(tmp_path, base_dir, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="not in the local cache and HF_HUB_OFFLINE is set"):
        load_model("tinyorg/tiny-llama")
    _fake_hub_cache(tmp_path / "cache", "tinyorg/tiny-llama", base_dir)
    assert is_hub_id("tinyorg/tiny-llama") and not is_hub_id(base_dir)
    loaded = load_model("tinyorg/tiny-llama")
    direct = load_model(base_dir)
    assert loaded.name == "tinyorg/tiny-llama" and loaded.notes[0].startswith("hub model tinyorg/tiny-llama")
    assert loaded.file_hashes()["model.safetensors"] == direct.file_hashes()["model.safetensors"]
    assert load_tokenizer("tinyorg/tiny-llama").get_vocab() == direct.tokenizer.get_vocab()


def test_gguf_helpers(tmp_path, tiny_model):
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    pytest.importorskip("gguf")
    with pytest.raises(InputError, match="not a readable GGUF file"):
        gguf_info(bogus)
    with pytest.raises(InputError, match="GGUF file not found"):
        load_model(tmp_path / "missing.gguf")
    copy = fresh_copy(tiny_model)  # what the GGUF path does before handing the model out
    assert copy is not tiny_model
    for (n1, p1), (n2, p2) in zip(tiny_model.state_dict().items(), copy.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    copy.save_pretrained(tmp_path / "saved")  # saveable, unlike a GGUF-loaded model
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_fresh_copy_keeps_tied_embeddings(ref_tokenizer):
    tied = tiny_llama(len(ref_tokenizer), tie=True)
    copy = fresh_copy(tied)
    assert copy.lm_head.weight.data_ptr() == copy.model.embed_tokens.weight.data_ptr()
    assert torch.equal(copy.lm_head.weight, tied.lm_head.weight)


def test_device_plan():
    cpu = plan_device("cpu", "auto")
    assert (cpu.device, cpu.dtype, cpu.device_map) == ("cpu", torch.float32, None)
    assert plan_device("cpu", "bfloat16").dtype == torch.bfloat16
    assert plan_device("cpu", torch.float16).dtype == torch.float16
    auto = plan_device("auto", "auto")
    if torch.cuda.is_available():
        assert auto.device == "cuda" and auto.dtype in (torch.bfloat16, torch.float16)
        assert (auto.device_map == "auto") == (torch.cuda.device_count() > 1)
    else:
        assert (auto.device, auto.dtype) == ("cpu", torch.float32)
        with pytest.raises(InputError, match="no CUDA GPU"):
            plan_device("cuda")
    with pytest.raises(InputError, match="unknown dtype"):
        plan_device("cpu", "int3")


def test_device_plan_prefers_cuda_then_mps(monkeypatch):
    """The one resolver (also behind `unlearn`): auto = CUDA, else Apple MPS (float32), else CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("mansu_audit.loading.device.mps_available", lambda: True)
    mps = plan_device("auto", "auto")
    assert (mps.device, mps.dtype, mps.device_map, mps.torch_device) == ("mps", torch.float32, None,
                                                                          torch.device("mps"))
    assert plan_device("mps", "bfloat16").dtype == torch.bfloat16
    monkeypatch.setattr("mansu_audit.loading.device.mps_available", lambda: False)
    assert plan_device(None).device == "cpu"
    with pytest.raises(InputError, match="Apple MPS is not available"):
        plan_device("mps")
    for bad in ("tpu9", "cuda:x", "gpu", ""):
        with pytest.raises(InputError, match="unknown device"):
            plan_device(bad)


def test_load_model_auto_device(base_dir):
    loaded = load_model(base_dir, device="auto", dtype="auto")
    expected = plan_device("auto", "auto")
    assert next(loaded.model.parameters()).dtype == expected.dtype
    assert any(n.startswith("device ") for n in loaded.notes)


class OOMAbove(torch.nn.Module):
    """Wraps a model and raises CUDA-style out-of-memory for batches above `limit`."""

    def __init__(self, model, limit):
        super().__init__()
        self.inner, self.limit, self.seen = model, limit, []

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None):
        self.seen.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_auto_batch_backs_off_on_oom(tiny_model, ref_tokenizer, bundle):
    items = bundle.split("retain_eval")[:40]
    wrapped = OOMAbove(tiny_model, limit=8)
    auto = AutoBatch(start=64)
    got = auto.evaluate(wrapped, ref_tokenizer, items)
    want = evaluate_mcq(tiny_model, ref_tokenizer, items, batch_size=8)
    assert auto.batch_size == 8 and auto.backoffs == 3
    assert (got.predictions == want.predictions).all() and abs(got.logprobs - want.logprobs).max() < 1e-5
    wrapped.seen.clear()
    auto.evaluate(wrapped, ref_tokenizer, items)  # remembers the size that worked
    assert max(wrapped.seen) == 8


def test_non_oom_errors_propagate(tiny_model, ref_tokenizer, bundle):
    class Broken(OOMAbove):
        def forward(self, input_ids, attention_mask=None):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    auto = AutoBatch(start=16)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        auto.evaluate(Broken(tiny_model, 0), ref_tokenizer, bundle.split("retain_eval")[:4])
    assert auto.backoffs == 0


TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def test_chat_template_prompting(tiny_model, ref_tokenizer, bundle):
    import copy

    tok = copy.deepcopy(ref_tokenizer)
    assert chat_prompt_fn(tok, "auto") is None and chat_prompt_fn(tok, "off") is None
    with pytest.raises(InputError, match="no chat template"):
        chat_prompt_fn(tok, "on")
    tok.chat_template = TEMPLATE
    fn = chat_prompt_fn(tok, "auto")
    item = bundle.split("retain_eval")[0]
    text = fn(item_prompt(item))
    assert text == f"<|user|>\n{item_prompt(item)}\n<|assistant|>\n"  # BOS text dropped: the tokenizer adds it
    ids = tok(text).input_ids
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert chat_prompt_fn(tok, "off") is None
    record = chat_template_record(tok, "auto")
    assert record["applied"] and len(record["template_sha256"]) == 64
    assert chat_template_record(tok, "off") == {"mode": "off", "applied": False, "template_sha256": None}
    # evaluate_mcq scores " A".." D" right after the assistant prompt
    res = evaluate_mcq(tiny_model, tok, [item], prompt_fn=fn)
    with torch.no_grad():
        logp = tiny_model(torch.tensor([ids])).logits[0, -1].double().log_softmax(-1)
    for c, cont in enumerate(continuations(len(item.choices))):
        token = tok(text + cont).input_ids[-1]
        assert res.logprobs[0, c] == pytest.approx(float(logp[token]), abs=1e-5)
    with pytest.raises(InputError, match="--chat-template must be one of"):
        chat_prompt_fn(tok, "yes")


def test_gguf_file_is_dequantized_exactly(tmp_path, ref_tokenizer):
    pytest.importorskip("accelerate")
    from conftest import REFERENCE_DIR

    source = tiny_llama(len(ref_tokenizer), seed=5)
    gguf = pytest.importorskip("gguf")
    f32, q8 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.Q8_0
    expected = write_gguf(tmp_path / "tiny.gguf", source, lambda name, arr: f32 if arr.ndim == 1 or name in (
        "token_embd.weight", "output.weight") else q8, "MOSTLY_Q8_0", REFERENCE_DIR / "tokenizer.json")
    loaded = load_model(tmp_path / "tiny.gguf")
    assert loaded.notes[0] == "dequantized from GGUF Q8_0 (Q8_0×14, F32×7)"
    assert set(loaded.files) == {"tiny.gguf"} and len(loaded.file_hashes()["tiny.gguf"]) == 64
    state = loaded.model.state_dict()
    for name, value in expected.items():  # Q8_0 dequantization, q/k rows un-permuted, bit for bit
        assert torch.equal(state[name], value), name
    text = "Which toxin is produced by the agent Bifo?"
    assert loaded.tokenizer(text).input_ids == ref_tokenizer(text).input_ids  # BPE rebuilt from GGUF metadata
    rebuilt = tiny_llama(len(ref_tokenizer), seed=5)
    rebuilt.load_state_dict(expected, strict=False)
    ids = torch.tensor([ref_tokenizer(text).input_ids])
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids).logits, rebuilt(ids).logits, atol=1e-5)
    loaded.model.save_pretrained(tmp_path / "resaved")  # a fresh model: saving works
    assert model_file_map(tmp_path / "tiny.gguf") == loaded.files  # what `verify` re-hashes


def test_embedding_lora_and_modules_to_save(tmp_path, base_dir):
    """PEFT's embedding LoRA (delta = s·(B A)ᵀ) and `modules_to_save` tensors (replace the base's)."""
    base = load_model(base_dir).model
    vocab, hidden = base.model.embed_tokens.weight.shape
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, vocab, generator=g), torch.randn(hidden, 2, generator=g)
    head = torch.randn_like(base.lm_head.weight)
    folder = tmp_path / "emb"
    folder.mkdir()
    save_file({"base_model.model.model.embed_tokens.lora_embedding_A": a,
               "base_model.model.model.embed_tokens.lora_embedding_B": b,
               "base_model.model.lm_head.weight": head}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": str(base_dir),
         "target_modules": ["embed_tokens"], "modules_to_save": ["lm_head"], "task_type": "CAUSAL_LM"}))
    merged = load_model(folder)
    delta = merged.model.model.embed_tokens.weight - base.model.embed_tokens.weight
    assert torch.allclose(delta, 2.0 * (b @ a).T, atol=1e-5)
    assert torch.equal(merged.model.lm_head.weight, head)
    assert any("1 tensors replaced (modules_to_save)" in n for n in merged.notes)


def test_verify_an_adapter_certificate(tmp_path, base_dir):
    """`verify` rebuilds an adapter's file map (base/ + adapter/) and names the file that changed."""
    from conftest import small_bundle

    from mansu_audit.cache import NoCache
    from mansu_audit.certificate import verify_certificate
    from mansu_audit.certify import certify
    from mansu_audit.policy import Policy

    adapter = tmp_path / "adapter"
    write_adapter(adapter, load_model(base_dir).model, base_name=str(base_dir))
    assert model_file_map(adapter) == load_model(adapter).files
    bundle = small_bundle(tmp_path / "bundle", n=8)
    certify(str(base_dir), str(adapter), bundle, quantizers=(), policy=Policy(bootstrap_replicates=200), cad=None,
            cache=NoCache(), out=tmp_path / "cert")
    cert = tmp_path / "cert" / "certificate.json"
    record = json.loads(cert.read_text())["body"]["models"]["candidate"]
    assert "adapter/adapter_model.safetensors" in record["files"] and any("merged over base" in n
                                                                          for n in record["notes"])
    assert verify_certificate(cert) == []
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] * 2
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    changes = verify_certificate(cert)
    assert len(changes) == 1 and "adapter/adapter_model.safetensors" in changes[0] and "weights" in changes[0]


def test_an_adapter_naming_a_moving_bundled_name_is_settled_by_its_recorded_base(tmp_path):
    """Suites <= 0.3.0 wrote `reference` (then version 1) into adapter folders; from 0.4.0 `reference` is version 3.
    The base digests in the folder's unlearn.json settle which bundled model the adapter was trained on; new
    adapters record the pinned name (`reference-v3`), which never moves."""
    from mansu_audit.loading import LoadedModel, pinned_name
    from mansu_audit.loading.local import BUNDLED_MODELS, UNLEARN_RECORD
    from mansu_audit.unlearn import adapter_base_spec

    assert pinned_name("reference") == "reference-v3" and pinned_name("reference-v1") == "reference-v1"
    assert adapter_base_spec(LoadedModel(None, None, "reference", BUNDLED_MODELS["reference"])) == "reference-v3"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                             "base_model_name_or_path": "reference"}))
    v1 = load_model("reference-v1")
    assert model_file_map(adapter)["base/model.safetensors"] == BUNDLED_MODELS["reference"] / "model.safetensors"
    (adapter / UNLEARN_RECORD).write_text(json.dumps({"base_model": {"name": "reference", "files": v1.file_hashes()}}))
    assert model_file_map(adapter)["base/model.safetensors"] == BUNDLED_MODELS["reference-v1"] / "model.safetensors"
    forged = {**v1.file_hashes(), "model.safetensors": "0" * 64}
    (adapter / UNLEARN_RECORD).write_text(json.dumps({"base_model": {"name": "reference", "files": forged}}))
    with pytest.raises(InputError, match="match no bundled model"):
        model_file_map(adapter)
