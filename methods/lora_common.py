"""Unlearning inside a LoRA adapter, base frozen (arXiv 2602.13151): what `lora-ga` and `lora-npo` share.

Contract: the base model θ0 is copied and wrapped by peft (`get_peft_model`,
`LoraConfig(r=rank, lora_alpha=alpha, target_modules, lora_dropout=0)`); only
the adapter's `lora_A`/`lora_B` matrices are trained by the shared loop
(`methods.loop.train_loop`, `trainable` = the adapter's parameters), so every
base weight stays bit-identical. The unlearned model is θ0 + (alpha/rank)·B·A on
each targeted Linear. The paper's point: a low-rank update trained separately
from a 4-bit base survives quantizing that base, where a dense update smaller
than a 4-bit bin is rounded away.

Output (`save` setting): `adapter` (default) returns the `PeftModel`, which
`unlearn` saves as a PEFT adapter folder (`adapter_config.json` +
`adapter_model.safetensors`, base named in `base_model_name_or_path`) that
`certify --candidate` merges over its base (`loading.lora`); `merged` returns
`merge_and_unload()`'s dense model, saved as an ordinary checkpoint.

Initialisation (our choice, for determinism without global seeding): peft's
own init runs under `torch.random.fork_rng` (the process RNG is left as it
was), then every `lora_A` is redrawn from an explicit `torch.Generator` seeded
with the run's seed with peft's distribution (kaiming-uniform, a = √5, i.e.
U(−1/√in, 1/√in)); `lora_B` stays 0, so training starts exactly at θ0.

Settings (on top of `MethodSettings`): rank (r, default 8), alpha (default 16:
scale alpha/r = 2), target_modules (peft's `all-linear`: every Linear except
the output head, or a comma list of module-name suffixes such as
`q_proj,v_proj`), save. The LoRA update starts at zero and is low-rank, so it
needs a larger step than full fine-tuning (`ga` 1e-4): lr 5e-4 (lora-ga) and
1e-3 (lora-npo), measured in their modules.
Needs peft (`pip install 'mansu-audit[peft]'`).
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Callable

import torch

from mansu_audit.errors import InputError
from mansu_audit.methods.base import Method, MethodSettings, choice
from mansu_audit.methods.loop import Batch, config_from_settings, data_from_settings, result_from_report, train_loop

SAVE_MODES = ("adapter", "merged")
PEFT_HINT = "pip install 'mansu-audit[peft]'"


@dataclass
class LoraSettings(MethodSettings):
    """`MethodSettings` plus the adapter's shape and the output form (module docstring)."""

    lr: float = 1e-3
    rank: int = 8
    alpha: float = 16.0
    target_modules: str = "all-linear"
    save: str = choice("adapter", SAVE_MODES, "adapter: a PEFT adapter folder; merged: a dense checkpoint")


def _target_modules(text: str) -> str | list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise InputError("setting target_modules: name at least one module (or 'all-linear')")
    return names[0] if names == ["all-linear"] else names


def attach_lora(model: torch.nn.Module, settings: LoraSettings, seed: int):
    """Wrap `model` (modified in place) in a fresh LoRA adapter; lora_A drawn from a generator seeded `seed`."""
    if importlib.util.find_spec("peft") is None:
        raise InputError(f"LoRA unlearning needs peft ({PEFT_HINT})")
    from peft import LoraConfig, get_peft_model

    if settings.rank < 1:
        raise InputError(f"setting rank={settings.rank}: must be at least 1")
    if settings.alpha <= 0:
        raise InputError(f"setting alpha={settings.alpha}: must be positive")
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, bias="none",
                        target_modules=_target_modules(settings.target_modules), task_type="CAUSAL_LM")
    try:
        with torch.random.fork_rng(devices=[]):
            wrapped = get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules ... not found in the base model"
        raise InputError(f"setting target_modules={settings.target_modules!r}: {str(exc).splitlines()[0]}") from None
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if ".lora_A." in name:
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.rand(p.shape, generator=generator, dtype=torch.float32).mul_(2 * bound).sub_(bound))
    return wrapped


def adapter_parameters(wrapped: torch.nn.Module) -> dict[str, None]:
    """The trainable spec of the adapter: every lora_A / lora_B parameter, unmasked."""
    chosen = {n: None for n, _ in wrapped.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    if not chosen:
        raise InputError("the LoRA adapter has no parameters (no module matched target_modules)")
    return chosen


LoraObjective = Callable[[torch.nn.Module, Batch, "Batch | None", int], dict[str, torch.Tensor]]


def run_lora(method: Method, context, settings: LoraSettings, objective: LoraObjective, *, with_retain: bool):
    """Attach the adapter to a copy of θ0, train it with `objective` in the shared loop, return the result.

    `objective(wrapped, forget, retain, step)` gets the `PeftModel`; inside
    `wrapped.disable_adapter()` it computes θ0's outputs (NPO's reference)
    without a second copy of the model.
    """
    wrapped = attach_lora(context.trainable_copy(), settings, context.seed)
    data = data_from_settings(settings, context, with_retain=with_retain)
    report = train_loop(wrapped, objective, data, config_from_settings(settings, context, method.name),
                        trainable=adapter_parameters(wrapped))
    adapter_numel = sum(p.numel() for n, p in wrapped.named_parameters() if ".lora_" in n)
    diagnostics = {"lora": {"rank": settings.rank, "alpha": settings.alpha, "scale": settings.alpha / settings.rank,
                            "target_modules": settings.target_modules, "adapter_parameters": adapter_numel,
                            "save": settings.save}}
    model = wrapped if settings.save == "adapter" else wrapped.merge_and_unload()
    return result_from_report(method, model, report, settings, context, diagnostics)

