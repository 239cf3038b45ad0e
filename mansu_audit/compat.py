"""Base/candidate compatibility (SPEC §11): same architecture, shapes and tokenizer.

A candidate that differs from the base in any of these cannot be compared item
by item (and a swapped tokenizer changes what the prompts mean), so the check
fails with one line naming the first difference.
"""
from __future__ import annotations

from mansu_audit.errors import InputError
from mansu_audit.loading import LoadedModel

_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size", "tie_word_embeddings")


def _where(m: LoadedModel):
    return m.path if m.path is not None else m.name


def check_compatible(base: LoadedModel, candidate: LoadedModel) -> None:
    """Raise `InputError` (one line, naming the candidate) at the first mismatch."""
    where = _where(candidate)
    bcfg, ccfg = base.model.config, candidate.model.config
    b_arch = tuple(getattr(bcfg, "architectures", None) or [type(base.model).__name__])
    c_arch = tuple(getattr(ccfg, "architectures", None) or [type(candidate.model).__name__])
    if type(base.model) is not type(candidate.model) and b_arch != c_arch:
        raise InputError(f"architecture differs from the base: {', '.join(c_arch)} vs {', '.join(b_arch)}", where)
    for key in _ARCH_KEYS:
        bv, cv = getattr(bcfg, key, None), getattr(ccfg, key, None)
        if bv != cv:
            raise InputError(f"config '{key}' differs from the base: {cv} vs {bv}", where)
    b_shapes = {k: tuple(v.shape) for k, v in base.model.state_dict().items()}
    c_shapes = {k: tuple(v.shape) for k, v in candidate.model.state_dict().items()}
    for name in sorted(b_shapes.keys() | c_shapes.keys()):
        if name not in c_shapes:
            raise InputError(f"weight '{name}' of the base is missing from the candidate", where)
        if name not in b_shapes:
            raise InputError(f"weight '{name}' is not in the base model", where)
        if b_shapes[name] != c_shapes[name]:
            raise InputError(f"weight '{name}' has shape {list(c_shapes[name])}, base has {list(b_shapes[name])}",
                             where)
    b_vocab, c_vocab = base.tokenizer.get_vocab(), candidate.tokenizer.get_vocab()
    if b_vocab != c_vocab:
        if len(b_vocab) != len(c_vocab):
            raise InputError(f"tokenizer vocabulary has {len(c_vocab)} tokens, base has {len(b_vocab)}", where)
        token = next(t for t in sorted(c_vocab) if b_vocab.get(t) != c_vocab[t])
        raise InputError(f"tokenizer vocabulary differs from the base (token {token!r}: id {c_vocab[token]} vs "
                         f"{b_vocab.get(token)})", where)
    if getattr(base.tokenizer, "add_bos_token", None) != getattr(candidate.tokenizer, "add_bos_token", None):
        raise InputError("tokenizer differs from the base in whether it adds a BOS token", where)
