"""LoRA-GA: gradient ascent on the forget corpus inside a LoRA adapter, base frozen (arXiv 2602.13151).

Loss −NLL(forget), no retain term (as `ga`), trained in the adapter only
(`methods.lora_common`: settings rank/alpha/target_modules/save, init, output).
Defaults: lr 5e-4, 60 steps of 16 forget sentences, r 8, alpha 16 on every
Linear but the head. Measured on `reference-v1` (seed 0, CPU, synthhazard v2):
forget_eval 0.998 -> 0.924, retain_eval 0.987 -> 0.959 (nf4: 0.929 / 0.961;
`ga` at its defaults: 0.960 / 0.957); lr 3e-4 barely forgets (0.995), lr 1e-3
collapses both (0.281 / 0.263).
"""
from __future__ import annotations

from dataclasses import dataclass

from mansu_audit.methods import register_method
from mansu_audit.methods.base import Method
from mansu_audit.methods.lora_common import LoraSettings, run_lora
from mansu_audit.methods.loop import sequence_nll


@register_method("lora-ga")
class LoraGA(Method):
    """Gradient ascent on the forget corpus in a LoRA adapter (base frozen; saves a PEFT adapter)."""

    @dataclass
    class Settings(LoraSettings):
        steps: int = 60
        lr: float = 5e-4

    # what `mansu-audit tune` searches (format: mansu_audit.tune)
    search_space = {"lr": (1e-4, 3e-3, "log"), "steps": [30, 60, 100], "rank": [4, 8, 16]}

    def run(self, context, settings):
        def objective(m, forget, retain, step):
            return {"forget": -sequence_nll(m, forget).mean()}

        return run_lora(self, context, settings, objective, with_retain=False)
