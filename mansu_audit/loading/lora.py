"""PEFT LoRA adapter folders (`adapter_config.json` + `adapter_model.safetensors`), merged into their base.

The merge gives ordinary dense weights (`W += scale · B A`, scale = alpha/r, or
alpha/√r with rsLoRA), so quantizers see what a quantized deployment of the
merged model would hold.

- With `peft` installed (`pip install 'mansu-audit[peft]'`) the merge is peft's
  own `merge_and_unload`, so every variant peft knows (DoRA, `lora_bias`,
  rank/alpha patterns...) merges as peft means it. The adapter's tensors are
  still read here, under the suite's pickle rule, and any adapter tensor peft
  does not place is refused.
- Without peft a built-in merge handles plain LoRA (linear and embedding
  pairs, rank/alpha patterns, rsLoRA, `fan_in_fan_out`, `modules_to_save` and
  trained biases as replacement tensors) in float64, and refuses every flag or
  tensor it does not understand (DoRA, `lora_bias`, ...) in one line, rather
  than dropping it silently.

`read_adapter_delta` keeps the adapter unmerged (`AdapterDelta`: the factors
per targeted weight) for certify's `deployment="adapter-on-quantized-base"`,
where a quantized variant is the quantized base plus the full-precision delta.
"""
from __future__ import annotations

import importlib.util
import json
import math
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mansu_audit.errors import InputError, first_line
from mansu_audit.io import read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# adapter_config.json flags that change the merge; the built-in merge refuses them when set.
PEFT_ONLY_FLAGS = ("use_dora", "lora_bias", "layer_replication", "megatron_config", "trainable_token_indices",
                   "target_parameters", "use_qalora", "alora_invocation_tokens", "arrow_config")
PEFT_HINT = "install peft to merge it (pip install 'mansu-audit[peft]')"


def is_adapter(spec: str | Path) -> bool:
    return Path(spec).is_dir() and (Path(spec) / ADAPTER_CONFIG).is_file()


def peft_available() -> bool:
    return importlib.util.find_spec("peft") is not None


@dataclass
class LoraMerge:
    """What a LoRA merge changed: module names, rank, scale (for the certificate note)."""

    modules: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    rank: int = 0
    alpha: float = 0.0
    engine: str = "built-in"

    def note(self, folder: Path, cfg: dict, base_spec) -> str:
        scale = "alpha/sqrt(r)" if cfg.get("use_rslora") else "alpha/r"
        text = (f"LoRA adapter {folder} (r={self.rank}, alpha={self.alpha:g}, scale {scale}, "
                f"{len(self.modules)} modules) merged over base {base_spec}")
        if self.engine != "built-in":
            text += f" by {self.engine}"
        if self.replaced:
            text += f"; {len(self.replaced)} tensors replaced (modules_to_save)"
        return text


def read_adapter_config(folder: Path) -> dict:
    cfg_path = folder / ADAPTER_CONFIG
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise InputError("expected a JSON object", cfg_path)
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise InputError(f"adapter type '{peft_type}' is not supported (only LoRA adapters are merged)", cfg_path)
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg.get(key) <= 0:
            raise InputError(f"adapter config needs a positive '{key}'", cfg_path)
    return cfg


def read_adapter_weights(folder: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], Path]:
    safe = folder / ADAPTER_WEIGHTS[0]
    if safe.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(safe)), safe
        except Exception as exc:
            raise InputError(f"unreadable safetensors: {first_line(exc)}", safe) from None
    pickled = folder / ADAPTER_WEIGHTS[1]
    if pickled.is_file():
        if not allow_pickle:
            raise InputError("only pickle adapter weights (adapter_model.bin); refusing to unpickle untrusted code "
                             "(pass --allow-pickle if you trust it)", pickled)
        try:
            weights = torch.load(str(pickled), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as exc:
            raise InputError(f"pickle refused by the weights-only unpickler (not plain tensors): {first_line(exc)}",
                             pickled) from None
        if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
            raise InputError("pickle holds no dict of tensors", pickled)
        return weights, pickled
    raise InputError("no adapter weights (adapter_model.safetensors)", folder)


def _module_key(key: str) -> tuple[str, str] | None:
    """`base_model.model.X.lora_A[.default].weight` -> ("X", "lora_A"); None for other keys."""
    m = re.match(r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                 r"(?:\.(?!bias$)[A-Za-z0-9_]+)?(?:\.weight)?$", key)
    return (m.group(1), m.group(2)) if m else None


def _scale_for(module: str, cfg: dict) -> tuple[int, float, float]:
    """(rank, alpha, scale) of one module, honouring PEFT's rank_pattern / alpha_pattern."""
    rank, alpha = cfg["r"], cfg["lora_alpha"]
    for key, value in (cfg.get("rank_pattern") or {}).items():
        if re.search(rf"(^|\.){key}$", module):
            rank = value
    for key, value in (cfg.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){key}$", module):
            alpha = value
    scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    return int(rank), float(alpha), float(scale)


def _split(weights: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    others: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        parsed = _module_key(key)
        if parsed is None:
            others[key] = tensor
        else:
            pairs.setdefault(parsed[0], {})[parsed[1]] = tensor
    return pairs, others


def check_builtin_supported(cfg: dict, weights: dict[str, torch.Tensor], cfg_path: Path, weight_file: Path,
                            what: str | None = None, hint: str = PEFT_HINT) -> None:
    """Refuse what the built-in merge (or `what`) would get wrong: PEFT-only flags and LoRA-variant tensors."""
    for flag in PEFT_ONLY_FLAGS:
        if cfg.get(flag):
            label = "DoRA (use_dora)" if flag == "use_dora" else f"'{flag}: {json.dumps(cfg[flag])}'"
            raise InputError(f"adapter uses {label}, which {what or 'the built-in LoRA merge'} does not support; "
                             f"{hint}", cfg_path)
    for key in sorted(weights):
        if "lora_" in key and _module_key(key) is None:
            raise InputError(f"adapter tensor '{key}' is a LoRA variant {what or 'the built-in merge'} does not "
                             f"understand; {hint}", weight_file)


def check_adapter_shapes(model: torch.nn.Module, pairs: dict[str, dict[str, torch.Tensor]], cfg: dict,
                         where: Path) -> None:
    """Every A/B pair targets a module of the base and its product has that module's weight shape."""
    modules = dict(model.named_modules())
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    for name, ab in sorted(pairs.items()):
        if name not in modules or not hasattr(modules[name], "weight"):
            raise InputError(f"adapter targets '{name}', which the base model lacks (wrong base model?)", where)
        if "lora_A" in ab and "lora_B" in ab:
            shape = (ab["lora_B"].shape[0], ab["lora_A"].shape[-1])  # [out, in]
            shape = shape[::-1] if fan_in_fan_out else shape
        elif "lora_embedding_A" in ab and "lora_embedding_B" in ab:
            shape = (ab["lora_embedding_A"].shape[-1], ab["lora_embedding_B"].shape[0])  # [vocab, hidden]
        else:
            raise InputError(f"adapter has an incomplete A/B pair for '{name}'", where)
        weight = modules[name].weight
        if tuple(shape) != tuple(weight.shape):
            raise InputError(f"adapter shape {tuple(shape)} for '{name}' does not match the base weight "
                             f"{tuple(weight.shape)} (wrong base model?)", where)


@dataclass
class LoraPair:
    """One targeted weight's LoRA factors: delta = scale · B A ([out, in]; transposed for `fan_in_fan_out`,
    and `(B A)ᵀ` = [vocab, hidden] for an embedding pair), formed in float64 only when asked (`dense`)."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float
    transpose: bool

    def dense(self) -> torch.Tensor:
        delta = self.scale * (self.b.double() @ self.a.double())
        return delta.T if self.transpose else delta


@dataclass
class AdapterDelta:
    """What a LoRA adapter adds to its base: factors per targeted weight (parameter name -> `LoraPair`) and
    whole tensors that replace base parameters (`modules_to_save`, trained biases)."""

    pairs: dict[str, LoraPair]
    replaced: dict[str, torch.Tensor]

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> torch.nn.Module:
        """`W += scale · B A` (float64 accumulation, cast back to W's dtype) and the replacements, in place."""
        params = dict(model.named_parameters(remove_duplicate=False))
        for name, pair in sorted(self.pairs.items()):
            weight = params[name]
            weight.copy_((weight.double() + pair.dense().to(weight.device)).to(weight.dtype))
        for name, tensor in sorted(self.replaced.items()):
            params[name].copy_(tensor.to(device=params[name].device, dtype=params[name].dtype))
        return model


def adapter_delta(model: torch.nn.Module, weights: dict[str, torch.Tensor], cfg: dict, where: Path) -> AdapterDelta:
    """The adapter's factors and replacement tensors, each checked against `model` (names and shapes)."""
    pairs, others = _split(weights)
    check_adapter_shapes(model, pairs, cfg, where)
    params = dict(model.named_parameters(remove_duplicate=False))
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
    out = AdapterDelta({}, {})
    for name, ab in sorted(pairs.items()):
        _, _, scale = _scale_for(name, cfg)
        if "lora_A" in ab and "lora_B" in ab:
            pair = LoraPair(ab["lora_A"], ab["lora_B"], scale, fan_in_fan_out)
        else:
            pair = LoraPair(ab["lora_embedding_A"], ab["lora_embedding_B"], scale, True)
        out.pairs[f"{name}.weight"] = pair
    for key, tensor in sorted(others.items()):  # modules_to_save / trained biases: whole tensors replacing the base's
        name = re.sub(r"^base_model\.model\.", "", key).replace(".modules_to_save.default", "")
        name = name if name in params else f"{name}.weight" if f"{name}.weight" in params else name
        if name not in params:
            raise InputError(f"adapter tensor '{key}' matches no base parameter (wrong base model?)", where)
        if tuple(params[name].shape) != tuple(tensor.shape):
            raise InputError(f"adapter tensor '{key}' has shape {tuple(tensor.shape)}, base has "
                             f"{tuple(params[name].shape)}", where)
        out.replaced[name] = tensor
    if not out.pairs and not out.replaced:
        raise InputError("adapter holds no LoRA weights", where)
    return out


@torch.no_grad()
def merge_lora(model: torch.nn.Module, weights: dict[str, torch.Tensor], cfg: dict, where: Path) -> LoraMerge:
    """Built-in merge: add every LoRA product into the base weights in place (float64 accumulation)."""
    delta = adapter_delta(model, weights, cfg, where)
    delta.apply(model)
    return LoraMerge(modules=[n.removesuffix(".weight") for n in sorted(delta.pairs)], replaced=sorted(delta.replaced),
                     rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]))


@torch.no_grad()
def merge_with_peft(model: torch.nn.Module, weights: dict[str, torch.Tensor], folder: Path,
                    where: Path) -> tuple[torch.nn.Module, LoraMerge]:
    """peft's merge: wrap `model` with the adapter's config, load `weights`, `merge_and_unload`."""
    from peft import PeftConfig, get_peft_model, set_peft_model_state_dict

    cfg_path = folder / ADAPTER_CONFIG
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise InputError(f"peft cannot read the adapter config: {first_line(exc)}", cfg_path) from None
    config.inference_mode = True
    pairs, others = _split(weights)
    check_adapter_shapes(model, pairs, vars(config), where)
    try:
        with warnings.catch_warnings():  # peft warns that base_model_name_or_path differs: we chose the base
            warnings.simplefilter("ignore")
            wrapped = get_peft_model(model, config)
            result = set_peft_model_state_dict(wrapped, weights)
    except Exception as exc:
        raise InputError(f"adapter does not fit the base model: {first_line(exc)} (wrong base model?)",
                         where) from None
    unexpected = sorted(getattr(result, "unexpected_keys", None) or [])
    if unexpected:
        raise InputError(f"adapter tensor '{unexpected[0]}' matches nothing in the base model (wrong base model?)",
                         where)
    missing = sorted(k for k in getattr(result, "missing_keys", None) or [] if "lora_" in k)
    if missing:
        raise InputError(f"adapter lacks tensor '{missing[0]}' that its config declares", where)
    try:
        merged = wrapped.merge_and_unload()
    except Exception as exc:  # e.g. lora_bias on a layer without a bias: peft cannot merge it
        raise InputError(f"peft cannot merge this adapter: {first_line(exc)}", folder / ADAPTER_CONFIG) from None
    merge = LoraMerge(modules=sorted(pairs), replaced=sorted(others), rank=int(config.r),
                      alpha=float(config.lora_alpha), engine="peft")
    if not merge.modules and not merge.replaced:
        raise InputError("adapter holds no LoRA weights", where)
    return merged, merge


def merge_adapter(model: torch.nn.Module, folder: Path, allow_pickle: bool = False
                  ) -> tuple[torch.nn.Module, LoraMerge, Path, dict]:
    """Merge the adapter in `folder` into `model` (float32, CPU) -> (model, merge, weight file, adapter config)."""
    cfg = read_adapter_config(folder)
    weights, weight_file = read_adapter_weights(folder, allow_pickle)
    if peft_available():
        model, merge = merge_with_peft(model, weights, folder, weight_file)
    else:
        check_builtin_supported(cfg, weights, folder / ADAPTER_CONFIG, weight_file)
        merge = merge_lora(model, weights, cfg, weight_file)
    return model, merge, weight_file, cfg


def read_adapter_delta(folder: Path, base: torch.nn.Module, merged: torch.nn.Module,
                       allow_pickle: bool = False) -> AdapterDelta:
    """The adapter in `folder` as factors over `base`, for serving it unmerged over a quantized base.

    Plain LoRA only (DoRA and the other PEFT-only variants are refused in one line:
    their output is not `W x + scale · B A x`). `merged` (the candidate as loaded,
    the adapter merged into its own base) must equal `base + delta` on every
    parameter, within a few units in the last place of its dtype: this checks that
    the adapter's base is `base` (the certify base), which the quantized variants
    are built from.
    """
    cfg = read_adapter_config(folder)
    weights, weight_file = read_adapter_weights(folder, allow_pickle)
    check_builtin_supported(cfg, weights, folder / ADAPTER_CONFIG, weight_file,
                            what="deployment adapter-on-quantized-base",
                            hint="use deployment 'merged' (plain LoRA only is served unmerged here)")
    delta = adapter_delta(base, weights, cfg, weight_file)
    got = dict(merged.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, param in base.named_parameters(remove_duplicate=False):
            other = got.get(name)
            if other is None or other.shape != param.shape:
                raise InputError(f"the candidate has no parameter '{name}' of the base's shape", folder)
            if name in delta.replaced:
                expected = delta.replaced[name].double()
            else:
                expected = param.double().cpu() + (delta.pairs[name].dense() if name in delta.pairs else 0.0)
            tol = 8 * torch.finfo(other.dtype).eps
            if not torch.allclose(other.double().cpu(), expected, rtol=tol, atol=tol):
                raise InputError(f"the candidate differs from --base plus this adapter at '{name}': the adapter's "
                                 f"base is not the certify base (adapter-on-quantized-base quantizes --base)", folder)
    return delta
