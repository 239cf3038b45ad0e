"""Certification policy: thresholds and bootstrap settings (SPEC §3, §4).

Defaults are the SPEC's; a YAML file (`--policy FILE`) overrides any subset.
Unknown keys and bad values are `InputError`s naming the file, line and key, so a
typo never silently certifies against the default.

Keys added with certificate schema 2 (their rationale is in `verdicts`):
`max_recovery_fraction` (Q decided on the recovered fraction G_Q / D_F),
`max_recovery` (K: relearning recovered fraction), the relearning attack budget
(`relearn_steps`, `relearn_lr`, `relearn_fraction`, `relearn_choice_order`, read by
`recovery`), and
`require` (which desiderata gate the overall verdict; None = F, R, Q, S, plus K
when its statistics were computed).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Mapping

from mansu_audit.errors import InputError
from mansu_audit.io import read_utf8
from mansu_audit.stats import CI_METHODS, DEFAULT_B, DEFAULT_LEVEL, DEFAULT_POWER, DEFAULT_SEED


@dataclass(frozen=True)
class Policy:
    """What counts as PASS. Thresholds are on accuracy differences (fractions, not points)."""

    min_forget_drop: float = 0.10  # F: lower CI bound of D_F must reach this
    max_retain_drop: float = 0.05  # R: upper CI bound of D_R must stay below this
    max_ptq_gap: float = 0.02  # Q: upper CI bound of G_Q (and its point must be <= 0)
    min_cad: float = 0.5  # S: lower CI bound of CAD
    bootstrap_replicates: int = DEFAULT_B
    seed: int = DEFAULT_SEED
    level: float = DEFAULT_LEVEL
    ci_method: str = "percentile"
    mde_power: float = DEFAULT_POWER
    # Over-unlearning guard (our choice): a model whose retain accuracy is at chance
    # (upper CI <= chance + chance_margin) or that answers one letter for at least
    # `max_single_letter_fraction` of a split can never PASS. The same margin keeps the
    # below-chance rule (F) for clear avoidance: upper CI < chance - chance_margin (verdicts).
    chance_margin: float = 0.05
    max_single_letter_fraction: float = 0.9
    # Q decided on recovered knowledge: PASS when the upper CI bound of G_Q / D_F is at most this.
    max_recovery_fraction: float = 0.10
    # K: PASS when the upper CI bound of the relearning recovered fraction is at most this.
    max_recovery: float = 0.25
    # K's relearning attack budget (read by mansu_audit.recovery): optimizer steps, learning
    # rate, and the fraction of forget items used as attack items (the rest are held out).
    # 10 steps at 3e-4 (batch 16) bring a suppressed model's answers back (0.005 -> 0.72) while
    # the oracle stays at chance (0.23 -> 0.24) and `reference-v1` keeps its accuracy (0.998 -> 0.98);
    # measured on the version-1 models; the measurements (and version 3's) are in mansu_audit.recovery's docstring.
    relearn_steps: int = 10
    relearn_lr: float = 3e-4
    relearn_fraction: float = 0.10
    # Choice order of the attack examples: "as-given" (fine-tune on the forget data as the bundle
    # states it, the relearning literature's attack) or "redrawn" (a new order per example per
    # step). "redrawn" destroys letter-memorised answers instead of relearning them (on `reference-v1`
    # at lr 1e-3: 0.998 -> 0.27 held out), so it is not the default; see mansu_audit.recovery.
    relearn_choice_order: str = "as-given"
    # Permutation-consistency flag (mansu_audit.consistency; reported, not gating): a model is
    # order-dependent when original-order accuracy minus rotation-averaged accuracy has its lower
    # CI bound above this.
    max_order_dependence: float = 0.05
    # Desiderata that gate the overall verdict; None: F, R, Q, S and K when K was computed.
    require: tuple[str, ...] | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["require"] = None if self.require is None else list(self.require)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Policy":
        """The policy recorded in a certificate (keys it lacks, e.g. in schema 1, take their defaults)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        if values.get("require") is not None:
            values["require"] = tuple(values["require"])
        return replace(cls(), **values)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


_RANGES: dict[str, tuple[float, float]] = {
    "min_forget_drop": (0.0, 1.0), "max_retain_drop": (0.0, 1.0), "max_ptq_gap": (0.0, 1.0),
    "min_cad": (-10.0, 10.0), "level": (0.5, 0.999999), "mde_power": (0.5, 0.999999),
    "chance_margin": (0.0, 1.0), "max_single_letter_fraction": (0.0, 1.0),
    "max_recovery_fraction": (0.0, 10.0), "max_recovery": (0.0, 10.0), "relearn_lr": (1e-12, 1.0),
    "relearn_fraction": (0.001, 0.999), "max_order_dependence": (0.0, 1.0),
}
DESIDERATA = ("F", "R", "Q", "S", "K")


def _key_lines(text: str) -> dict[str, int]:
    """Line of each top-level key (1-based), for error messages."""
    import yaml

    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _check_value(name: str, value, path: Path, line: int | None):
    def bad(why: str):
        return InputError(f"policy key '{name}': {why}", path, line)

    if name == "require":
        if value is None:
            return None
        if not isinstance(value, list) or not value or any(v not in DESIDERATA for v in value):
            raise bad(f"must be a non-empty list of {', '.join(DESIDERATA)}, got {value!r}")
        if len(set(value)) != len(value):
            raise bad(f"lists a desideratum twice: {value!r}")
        return tuple(value)
    if name in ("bootstrap_replicates", "seed", "relearn_steps"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad(f"must be an integer, got {value!r}")
        if name == "bootstrap_replicates" and not 100 <= value <= 1_000_000:
            raise bad(f"must be between 100 and 1000000, got {value}")
        if name == "relearn_steps" and not 1 <= value <= 1_000_000:
            raise bad(f"must be between 1 and 1000000, got {value}")
        if name == "seed" and value < 0:
            raise bad(f"must be non-negative, got {value}")
        return value
    if name == "relearn_choice_order":
        if value not in ("as-given", "redrawn"):
            raise bad(f"must be 'as-given' or 'redrawn', got {value!r}")
        return value
    if name == "ci_method":
        if value not in CI_METHODS:
            raise bad(f"must be one of {', '.join(CI_METHODS)}, got {value!r}")
        return value
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise bad(f"must be a number, got {value!r}")
    lo, hi = _RANGES[name]
    if not lo <= float(value) <= hi:
        raise bad(f"must be between {lo} and {hi}, got {value}")
    return float(value)


def _unique_key_loader():
    """yaml.SafeLoader that refuses a mapping with the same key twice (PyYAML silently keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = {}
                for key_node, _ in node.value:
                    if isinstance(key_node, yaml.ScalarNode):
                        key = key_node.value
                        if key in seen:
                            raise yaml.constructor.ConstructorError(
                                None, None, f"duplicate key '{key}' (first on line {seen[key]})",
                                key_node.start_mark)
                        seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def load_policy(path: str | Path | None) -> Policy:
    """The default policy, overridden by the keys of a YAML file if one is given."""
    import yaml

    if path is None:
        return Policy()
    path = Path(path)
    if not path.is_file():
        raise InputError("policy file not found", path)
    text = read_utf8(path)
    try:
        data = yaml.load(text, Loader=_unique_key_loader())
    except RecursionError:
        raise InputError("bad YAML: nested too deeply", path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(f"bad YAML: {getattr(exc, 'problem', None) or exc}", path,
                         None if mark is None else mark.line + 1) from None
    if data is None:
        return Policy()
    if not isinstance(data, dict):
        raise InputError("policy must be a mapping of key: value", path)
    lines = _key_lines(text)
    known = {f.name for f in fields(Policy)}
    values = {}
    for key, value in data.items():
        if key not in known:
            raise InputError(f"unknown policy key '{key}' (known: {', '.join(sorted(known))})", path,
                             lines.get(str(key)))
        values[key] = _check_value(key, value, path, lines.get(key))
    return replace(Policy(), **values)
