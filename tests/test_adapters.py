"""Architecture adapters: tiny random models of every supported family run attribution with the right shapes."""
from __future__ import annotations

import pytest
import torch

from mansu_audit.circuits import adapter_for, attribute, empty_circuit, faithfulness, full_circuit
from mansu_audit.circuits.attribution import embed, encode_items, make_batches, pad_id

COMMON = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=1, pad_token_id=2)


def build(arch: str, vocab: int):
    import transformers as tf

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                            bos_token_id=0, eos_token_id=1)
        return tf.GPT2LMHeadModel(cfg).eval(), dict(d_ff=128, heads=4, head_dim=8)
    config_cls, model_cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM), "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM)}[arch]
    extra = {"head_dim": 16} if arch in ("qwen3", "gemma") else {}  # head_dim != hidden/heads: o_proj in != hidden
    cfg = config_cls(vocab_size=vocab, **COMMON, **extra)
    heads, head_dim = 4, extra.get("head_dim", 8)
    return model_cls(cfg).eval(), dict(d_ff=48, heads=heads, head_dim=head_dim)


ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gemma", "gpt2"]


@pytest.fixture(scope="module")
def items(bundle):
    return bundle.split("forget_attr")[:6]


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_layout_and_attribution_shapes(arch, ref_tokenizer, items):
    model, expect = build(arch, len(ref_tokenizer))
    adapter = adapter_for(model)
    assert (adapter.n_layers, adapter.d_ff, adapter.n_heads, adapter.head_dim) == (
        2, expect["d_ff"], expect["heads"], expect["head_dim"])
    # the body + logits_at path reproduces the model's own logits at the last real positions
    encoded, _ = encode_items(ref_tokenizer, items)
    batch = make_batches(encoded, len(encoded), pad_id(ref_tokenizer), torch.device("cpu"))[0]
    with torch.no_grad():
        full = model(input_ids=batch.clean, attention_mask=batch.mask).logits
        hidden = adapter.body(inputs_embeds=embed(adapter, batch.clean), attention_mask=batch.mask).last_hidden_state
        rows = torch.arange(len(batch.last))
        torch.testing.assert_close(adapter.logits_at(hidden, rows, batch.last), full[rows, batch.last])

    a = attribute(model, ref_tokenizer, items, steps=8, batch_size=4)
    n = a.n_items
    assert n == len(items) and a.skipped == ()
    assert a.mlp_items.shape == (n, 2, expect["d_ff"]) and a.heads_items.shape == (n, 2, expect["heads"])
    assert a.mlp.shape == (2, expect["d_ff"]) and a.heads.shape == (2, expect["heads"])
    assert a.mlp_items.abs().sum() > 0 and a.heads_items.abs().sum() > 0
    delta = a.metric_clean - a.metric_corrupt
    assert float((a.input_items.double() - delta).abs().max()) < 0.02 * float(delta.abs().max()) + 1e-5
    assert faithfulness(model, ref_tokenizer, items, full_circuit(model)) == pytest.approx(1.0, abs=1e-4)
    assert faithfulness(model, ref_tokenizer, items, empty_circuit(model)) == pytest.approx(0.0, abs=1e-4)


def test_neuron_parameter_count_includes_biases_for_gpt2(ref_tokenizer):
    model, _ = build("gpt2", len(ref_tokenizer))
    adapter = adapter_for(model)
    assert adapter.neuron_params() == 32 + 1 + 32  # c_fc column + its bias + c_proj row
    assert adapter.mlp_params() == 2 * (32 * 128 + 128 + 128 * 32 + 32)


def test_unsupported_model_is_refused():
    with pytest.raises(ValueError, match="no circuit adapter"):
        adapter_for(torch.nn.Linear(2, 2))


def test_one_padding_rule_for_every_batcher(ref_tokenizer):
    """Evaluation, attribution and training pad with the same id (pad, else eos, else 0)."""
    import copy

    from mansu_audit.methods.loop import pad_id_of
    from mansu_audit.prompts import pad_token_id

    assert pad_id is pad_token_id and pad_id_of is pad_token_id
    assert pad_token_id(ref_tokenizer) == ref_tokenizer.pad_token_id
    tok = copy.deepcopy(ref_tokenizer)
    tok.pad_token = None
    assert pad_token_id(tok) == tok.eos_token_id
    tok.eos_token = None
    assert pad_token_id(tok) == 0
