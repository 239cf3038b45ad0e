"""Certification policy: thresholds and bootstrap settings (SPEC §3, §4).

Defaults are the SPEC's; a YAML file (`--policy FILE`) overrides any subset.
Unknown keys and bad values are `InputError`s naming the file, line and key, so a
typo never silently certifies against the default.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from mansu_audit.errors import InputError
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
    # `max_single_letter_fraction` of a split can never PASS.
    chance_margin: float = 0.05
    max_single_letter_fraction: float = 0.9

    def to_dict(self) -> dict:
        return asdict(self)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


_RANGES: dict[str, tuple[float, float]] = {
    "min_forget_drop": (0.0, 1.0), "max_retain_drop": (0.0, 1.0), "max_ptq_gap": (0.0, 1.0),
    "min_cad": (-10.0, 10.0), "level": (0.5, 0.999999), "mde_power": (0.5, 0.999999),
    "chance_margin": (0.0, 1.0), "max_single_letter_fraction": (0.0, 1.0),
}


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

    if name in ("bootstrap_replicates", "seed"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad(f"must be an integer, got {value!r}")
        if name == "bootstrap_replicates" and not 100 <= value <= 1_000_000:
            raise bad(f"must be between 100 and 1000000, got {value}")
        if name == "seed" and value < 0:
            raise bad(f"must be non-negative, got {value}")
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


def load_policy(path: str | Path | None) -> Policy:
    """The default policy, overridden by the keys of a YAML file if one is given."""
    import yaml

    if path is None:
        return Policy()
    path = Path(path)
    if not path.is_file():
        raise InputError("policy file not found", path)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
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
