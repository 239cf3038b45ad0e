"""`tune(method, budget, seed=...)`: seeded random search over a method's declared search space.

Search space. A method declares it beside its `Settings`, as a class attribute
`search_space` mapping a setting name to either a list of values (one is drawn,
uniformly) or a range `(low, high)` (uniform) / `(low, high, "log")` (log-uniform).
A range over an `int` setting is rounded to an integer; a float drawn from a range is
rounded to 3 significant digits (so the chosen value reads and round-trips as typed).
A method without a `search_space` cannot be tuned (one-line `InputError`).

Sampling. `budget` settings are drawn, one after another, from
`numpy.random.default_rng(seed)` (no global seeding); every trial trains the method
with the same unlearning `seed` on the same base model, so trials differ by their
settings only, and the same (method, budget, seed, base, benchmark) gives the same
trials. Every method gets the same budget: the number of trials, not wall time.

Held-out discipline. Trials are scored on the bundle's training splits only:
`forget_train` (MCQ items about forget-domain facts that the forget corpus states but
no evaluation split asks about) and `retain_train` (the same for the retain domain).
A bundle without both is refused. The evaluation splits (`forget_eval`,
`retain_eval`) are never scored here, and they are removed from the bundle the method
sees during tuning, so neither the method nor the selection can touch them; the
method still gets the corpora and `forget_attr`, as in `unlearn`.

Objective (one, stated in the output). Per trial, the paired bootstrap
(`stats.paired_bootstrap`, the policy's replicates, seed and level) over items gives
D_F = acc(base, forget_train) - acc(trial, forget_train) and D_R the same on
`retain_train`. A trial is *feasible* when D_R's upper CI bound is at most the
policy's `max_retain_drop` (the R threshold of `certify`). The chosen trial is the
feasible one with the largest D_F lower CI bound; ties go to the smaller D_R point,
then to the earlier trial. With no feasible trial nothing is chosen (`chosen` is
null) and the settings file cannot be used by `matrix --settings`.

Base check. D on a split only measures forgetting if the base knows its facts. When the
base's accuracy on a training split has its lower CI bound no higher than chance plus
the policy's `chance_margin`, the result carries a note saying the choice is not
informative (and `tune` warns on stderr); it still runs, since the trials are valid.
The version-1 reference (`reference-v1`) is such a base: 0.267 on forget_train and 0.258
on retain_train (it memorised the evaluation prompts' answer letters, issue 18 §0). The
default `reference` (version 3) knows them: 0.996 and 1.000 over choice rotations.

Output (`TuneResult.to_dict`, `format: mansu-audit-tune`): the chosen trial's full
settings (the drawn values plus the fixed ones, `fixed`: settings held at a value in
every trial and so taken out of the search), every trial (settings, D_F and D_R with
CIs, candidate accuracies, seconds), the base accuracies, the space searched and the
objective. `read_settings_file` turns it into the method's `key=value` overrides, and
`tuned_overrides` into `matrix --settings FILE`'s (the one parser of that file).

Shipped settings. The bundled `reference` carries the outputs of `tune --budget 12 --seed 0`
for every bundled baseline and MANSU in `benchmarks_data/reference-v3/tuned/`
(`bundled_settings_files`); the demo runs the methods at them (reports/experiments/two-bases).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mansu_audit.api import as_bundle
from mansu_audit.data import Bundle
from mansu_audit.errors import InputError
from mansu_audit.evaluate import evaluate_mcq
from mansu_audit.io import json_safe, progress_logger, read_json_object, write_json
from mansu_audit.loading import LoadedModel, load_model, resolve_model_path
from mansu_audit.policy import Policy, load_policy
from mansu_audit.registry import loose
from mansu_audit.stats import Estimate, accuracy_ci, paired_bootstrap
from mansu_audit.threads import with_thread_policy
from mansu_audit.unlearn import resolve_method, unlearn

FORMAT = "mansu-audit-tune"
FORMAT_VERSION = 1
FORGET_SPLIT, RETAIN_SPLIT = "forget_train", "retain_train"
HIDDEN_SPLITS = ("forget_eval", "retain_eval")  # removed from the bundle the method sees while tuning
OBJECTIVE = ("maximise the lower CI bound of D_F on forget_train among trials whose D_R upper CI bound on "
             "retain_train is <= max_retain_drop; ties: smaller D_R point, then earlier trial")
DEFAULT_BASE = "reference"
DEFAULT_BENCHMARK = "synthhazard"
_log = progress_logger("tune")


# --------------------------------------------------------------------------- search space


def method_space(instance: Any) -> dict:
    """The method's declared `search_space`, checked against its `Settings` (InputError if none or malformed)."""
    name = getattr(instance, "name", "") or type(instance).__name__
    space = getattr(instance, "search_space", None)
    if not space:
        raise InputError(f"method '{name}' declares no search_space, so it cannot be tuned")
    return check_space(space, instance.Settings, name)


def check_space(space: Mapping, settings_cls: type, name: str = "method") -> dict:
    """`space` as a dict after checking every entry: a known setting, a non-empty list or a valid range."""
    from mansu_audit.methods.base import setting_fields

    fields_ = setting_fields(settings_cls)
    out = {}
    for key, spec in space.items():
        if key not in fields_:
            raise InputError(f"method '{name}': search_space names unknown setting '{key}'")
        if isinstance(spec, list):
            if not spec:
                raise InputError(f"method '{name}': search_space '{key}' is an empty list")
        elif isinstance(spec, tuple) and len(spec) in (2, 3) and all(isinstance(v, (int, float)) for v in spec[:2]):
            low, high = spec[0], spec[1]
            log = len(spec) == 3
            if (log and spec[2] != "log") or not low < high or (log and low <= 0):
                raise InputError(f"method '{name}': search_space '{key}' range {spec!r}: expected "
                                 f"(low, high) or (low, high, 'log') with low < high (low > 0 for log)")
        else:
            raise InputError(f"method '{name}': search_space '{key}' must be a list of values or a "
                             f"(low, high[, 'log']) tuple, not {spec!r}")
        out[key] = spec
    return out


def _round3(x: float) -> float:
    return float(f"{x:.3g}")


def sample_settings(space: Mapping, settings_cls: type, rng: np.random.Generator) -> dict:
    """One draw from `space` (in the space's key order, so the stream depends on the seed only)."""
    from mansu_audit.methods.base import setting_fields

    fields_ = setting_fields(settings_cls)
    out = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            value = spec[int(rng.integers(len(spec)))]
            out[key] = value.item() if isinstance(value, np.generic) else value
            continue
        low, high = float(spec[0]), float(spec[1])
        if len(spec) == 3:
            x = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            x = rng.uniform(low, high)
        out[key] = int(round(x)) if fields_[key][0] is int else _round3(x)
    return out


# --------------------------------------------------------------------------- results


@dataclass
class Trial:
    """One tried setting: what was drawn, D_F / D_R with CIs on the training splits, wall time."""

    index: int
    settings: dict
    D_F: Estimate
    D_R: Estimate
    forget_accuracy: float
    retain_accuracy: float
    feasible: bool
    seconds: float

    def to_dict(self) -> dict:
        return {"index": self.index, "settings": dict(self.settings), "D_F": self.D_F.to_dict(),
                "D_R": self.D_R.to_dict(), "forget_accuracy": round(self.forget_accuracy, 10),
                "retain_accuracy": round(self.retain_accuracy, 10), "feasible": self.feasible,
                "seconds": round(self.seconds, 3)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Trial":
        return cls(int(d["index"]), dict(d["settings"]), Estimate.from_dict(d["D_F"]), Estimate.from_dict(d["D_R"]),
                   float(d["forget_accuracy"]), float(d["retain_accuracy"]), bool(d["feasible"]),
                   float(d["seconds"]))


@dataclass
class TuneResult:
    """Everything `tune` found; `chosen` indexes `trials` (None: no feasible trial)."""

    method: str
    base: str
    benchmark: str
    seed: int
    budget: int
    max_retain_drop: float
    search_space: dict
    fixed: dict
    base_accuracy: dict
    trials: list[Trial] = field(default_factory=list)
    chosen: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def settings(self) -> dict | None:
        """The chosen trial's full settings (drawn + fixed), or None."""
        if self.chosen is None:
            return None
        return {**self.trials[self.chosen].settings, **self.fixed}

    def to_dict(self) -> dict:
        space = {k: list(v) if isinstance(v, tuple) else v for k, v in self.search_space.items()}
        chosen = None if self.chosen is None else {"trial": self.chosen, "settings": self.settings}
        return {"format": FORMAT, "version": FORMAT_VERSION, "method": self.method, "base": self.base,
                "benchmark": self.benchmark, "seed": self.seed, "budget": self.budget,
                "splits": {"forget": FORGET_SPLIT, "retain": RETAIN_SPLIT}, "objective": OBJECTIVE,
                "max_retain_drop": self.max_retain_drop, "search_space": space, "fixed": dict(self.fixed),
                "base_accuracy": dict(self.base_accuracy), "notes": list(self.notes), "chosen": chosen,
                "trials": [t.to_dict() for t in self.trials]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TuneResult":
        space = {k: tuple(v) if isinstance(v, list) and len(v) in (2, 3) and
                 (len(v) == 3 and v[2] == "log") else v for k, v in d["search_space"].items()}
        chosen = d.get("chosen")
        return cls(d["method"], d["base"], d["benchmark"], int(d["seed"]), int(d["budget"]),
                   float(d["max_retain_drop"]), space, dict(d.get("fixed") or {}), dict(d["base_accuracy"]),
                   [Trial.from_dict(t) for t in d["trials"]], None if chosen is None else int(chosen["trial"]),
                   list(d.get("notes") or []))


def choose(trials: Sequence[Trial]) -> int | None:
    """Index of the best feasible trial under the module's objective (None when none is feasible)."""
    feasible = [t for t in trials if t.feasible]
    if not feasible:
        return None
    best = min(feasible, key=lambda t: (-t.D_F.low, t.D_R.point, t.index))
    return best.index


# --------------------------------------------------------------------------- the search


def training_bundle(bundle: Bundle) -> Bundle:
    """`bundle` without its evaluation splits (refused in one line when it lacks forget_train/retain_train)."""
    missing = [s for s in (FORGET_SPLIT, RETAIN_SPLIT) if s not in bundle.mcq]
    if missing:
        raise InputError(f"benchmark '{bundle.name}' has no {' or '.join(missing)} split: tune scores trials on "
                         f"{FORGET_SPLIT}/{RETAIN_SPLIT} only, never on evaluation splits",
                         Path(bundle.root) / "manifest.json")
    return dataclasses.replace(bundle, mcq={k: v for k, v in bundle.mcq.items() if k not in HIDDEN_SPLITS},
                               files={k: v for k, v in bundle.files.items() if k not in HIDDEN_SPLITS})


def _evaluate(model, tokenizer, bundle: Bundle, split: str, scoring: str):
    return evaluate_mcq(model, tokenizer, bundle.split(split), split=split, subject_line=bundle.subject_line,
                        scoring=scoring)


def _correct(model, tokenizer, bundle: Bundle, split: str, scoring: str) -> np.ndarray:
    return _evaluate(model, tokenizer, bundle, split, scoring).correct.astype(np.float64)


def base_notes(results: Mapping[str, Any], policy: Policy) -> list[str]:
    """A note per training split the base does not clearly know (accuracy's lower CI bound not above chance +
    `chance_margin`): D on such a split cannot show forgetting, so the choice is uninformative."""
    notes = []
    for split, result in results.items():
        ci = accuracy_ci(result.correct.astype(np.float64), B=policy.bootstrap_replicates, seed=policy.seed,
                         level=policy.level, method=policy.ci_method)
        if ci.low <= result.chance + policy.chance_margin:
            notes.append(f"base accuracy on {split} is {ci.point:.3f} [{ci.low:.3f}, {ci.high:.3f}], not clearly above "
                         f"chance ({result.chance:.3f}): the base does not know these facts, so D on {split} cannot "
                         f"measure unlearning and the chosen settings are not informative")
    return notes


def _drops(base: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray], policy: Policy) -> dict[str, Estimate]:
    out = {}
    for name, split in (("D_F", FORGET_SPLIT), ("D_R", RETAIN_SPLIT)):
        out[name] = paired_bootstrap({"base": base[split], "cand": cand[split]},
                                     {name: lambda m: m["base"] - m["cand"]}, B=policy.bootstrap_replicates,
                                     seed=policy.seed, level=policy.level, method=policy.ci_method)[name]
    return out


def _check_budget(budget: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InputError(f"budget {budget!r}: expected a positive number of trials")
    return budget


@with_thread_policy
def tune(method: str | type | Any, budget: int, *, seed: int = 0, base: str | Path | LoadedModel = DEFAULT_BASE,
         benchmark: str | Path | Bundle = DEFAULT_BENCHMARK, policy: str | Path | Policy | None = None,
         fixed: Mapping[str, Any] | None = None, space: Mapping | None = None, device: str | None = "auto",
         scoring: str | None = None, progress: bool = False, threads: int | str | None = None) -> TuneResult:
    """Draw `budget` settings from the method's search space, unlearn with each, pick one (module doc).

    `fixed`: settings held at a value in every trial (taken out of the search space);
    `space`: replaces the method's declared search space (same format);
    `policy`: a `Policy`, a YAML file or None (defaults), for `max_retain_drop` and the bootstrap.
    """
    _check_budget(budget)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed {seed!r}: expected a non-negative integer")
    instance = resolve_method(method)
    name = getattr(instance, "name", "") or type(instance).__name__
    space = method_space(instance) if space is None else check_space(space, instance.Settings, name)
    from mansu_audit.methods.base import parse_overrides

    typed = parse_overrides(instance.Settings, dict(fixed or {}))  # bad fixed settings fail before any training
    fixed = {k: getattr(typed, k) for k in (fixed or {})}
    space = {k: v for k, v in space.items() if k not in fixed}  # a fixed setting is not searched
    if not space:
        raise InputError(f"method '{name}': every setting of its search space is fixed; nothing to search")
    policy = policy if isinstance(policy, Policy) else load_policy(policy)
    bundle = training_bundle(as_bundle(benchmark))
    scoring = bundle.check_scoring(scoring)
    loaded = load_model(base, device="cpu", dtype="float32")
    rng = np.random.default_rng(seed)
    draws = [sample_settings(space, instance.Settings, rng) for _ in range(budget)]
    for drawn in draws:
        parse_overrides(instance.Settings, {**drawn, **fixed})  # every draw valid before the first trial runs

    base_results = {s: _evaluate(loaded.model, loaded.tokenizer, bundle, s, scoring)
                    for s in (FORGET_SPLIT, RETAIN_SPLIT)}
    base_correct = {s: r.correct.astype(np.float64) for s, r in base_results.items()}
    notes = base_notes(base_results, policy)
    for note in notes:
        _log(progress, "warning: " + note)
    trials = []
    for i, drawn in enumerate(draws):
        start = time.perf_counter()
        result = unlearn(instance, loaded, bundle, seed=seed, overrides={**drawn, **fixed}, device=device,
                         progress=progress)
        model = result.model.to("cpu").eval()
        cand = {s: _correct(model, loaded.tokenizer, bundle, s, scoring) for s in (FORGET_SPLIT, RETAIN_SPLIT)}
        drops = _drops(base_correct, cand, policy)
        trial = Trial(i, drawn, drops["D_F"], drops["D_R"], float(cand[FORGET_SPLIT].mean()),
                      float(cand[RETAIN_SPLIT].mean()), drops["D_R"].high <= policy.max_retain_drop,
                      time.perf_counter() - start)
        trials.append(trial)
        _log(progress, f"{name} trial {i + 1}/{budget} {_settings_text(drawn)}: D_F {_ci(trial.D_F)}, "
                       f"D_R {_ci(trial.D_R)} ({trial.seconds:.1f}s)")
        del result, model
    base_name = loaded.name if isinstance(base, LoadedModel) else str(base)
    return TuneResult(name, base_name, bundle.name, seed, budget, policy.max_retain_drop, space, fixed,
                      {s: float(v.mean()) for s, v in base_correct.items()}, trials, choose(trials), notes)


def _settings_text(settings: Mapping) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())


def _ci(e: Estimate) -> str:
    return f"{e.point:+.3f} [{e.low:+.3f}, {e.high:+.3f}]"


def format_result(result: TuneResult) -> str:
    """A short table of the trials (the chosen one starred) for the terminal."""
    lines = [f"tune {result.method} on {result.base} ({result.benchmark}: {FORGET_SPLIT}/{RETAIN_SPLIT}), "
             f"budget {result.budget}, seed {result.seed}; feasible: D_R upper <= {result.max_retain_drop}"]
    for t in result.trials:
        mark = "*" if t.index == result.chosen else ("feasible" if t.feasible else "")
        lines.append(f"{mark:>8} #{t.index} {_settings_text(t.settings)}: D_F {_ci(t.D_F)}  D_R {_ci(t.D_R)}  "
                     f"{t.seconds:.1f}s")
    lines += [f"note: {n}" for n in result.notes]
    lines.append("chosen: none (no trial kept D_R within max_retain_drop)" if result.chosen is None
                 else f"chosen: #{result.chosen} {_settings_text(result.settings)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the settings file


def check_out_file(path: str | Path) -> Path:
    """InputError unless `path` can take the output file: its folder exists and it is not a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise InputError("output is a folder; expected a file name", path)
    if not path.parent.is_dir():
        raise InputError("folder of the output file does not exist", path.parent)
    return path


def write_result(result: TuneResult, path: str | Path) -> Path:
    """Write `result` as strict JSON to `path`, atomically (never half-written)."""
    write_json(path, result.to_dict())
    return Path(path)


def result_json(result: TuneResult) -> str:
    """`result` as the JSON text `write_result` writes (strict: non-finite floats as null)."""
    return json.dumps(json_safe(result.to_dict()), indent=1, sort_keys=True, allow_nan=False)


def settings_overrides(settings: Mapping[str, Any]) -> list[str]:
    """`key=value` strings (the form of `--set`) for a settings dict."""
    return [f"{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in settings.items()]


def read_settings_file(path: str | Path) -> tuple[str, list[str]]:
    """(method, ["key=value", ...]) from a `tune` output file; one-line InputError naming the file otherwise."""
    path = Path(path)
    doc = read_json_object(path, "settings file")
    if doc.get("format") != FORMAT:
        raise InputError(f"not a `mansu-audit tune` output (expected \"format\": \"{FORMAT}\")", path)
    if doc.get("version") != FORMAT_VERSION:
        raise InputError(f"tune output version {doc.get('version')!r} is not supported (expected {FORMAT_VERSION})",
                         path)
    method, chosen = doc.get("method"), doc.get("chosen")
    if not isinstance(method, str) or not method:
        raise InputError("tune output has no method name", path)
    if chosen is None:
        raise InputError(f"tune chose no settings for '{method}' (no trial kept D_R within max_retain_drop)", path)
    if not isinstance(chosen, dict) or not isinstance(chosen.get("settings"), dict):
        raise InputError("tune output field 'chosen.settings' must be a mapping", path)
    return method, settings_overrides(chosen["settings"])


TUNED_DIR = "tuned"  # a bundled model's folder may hold `tuned/<method>.json`: tune outputs for that base


def bundled_settings_files(base: str | Path, methods: Sequence[str]) -> list[Path]:
    """The tune outputs shipped with a model (`<model folder>/tuned/<method>.json`) for those of `methods` that
    have one, in `methods` order (the demo runs the methods at these settings)."""
    folder = resolve_model_path(base) / TUNED_DIR
    names = [getattr(resolve_method(m), "name", None) or str(m) for m in methods]  # registry spelling: GA -> ga
    return [folder / f"{n}.json" for n in names if (folder / f"{n}.json").is_file()]


def tuned_overrides(paths: Sequence[str | Path], methods: Sequence[str],
                    overrides: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """`matrix` overrides (method -> ["key=value", ...]) with each tune file's chosen settings put first, so a
    later `--set` for the same key wins. A file whose method is not in `methods` (names compared as the
    method registry does) or a method given two files is one InputError line."""
    out = {m: list(v) for m, v in (overrides or {}).items()}
    by_key = {loose(m): m for m in methods}
    seen: dict[str, Path] = {}
    for path in paths:
        method, pairs = read_settings_file(path)
        target = by_key.get(loose(method))
        if target is None:
            raise InputError(f"settings file is for method '{method}', which is not in --methods "
                             f"({', '.join(methods)})", path)
        if target in seen:
            raise InputError(f"a second settings file for method '{target}' (first: {seen[target]})", path)
        seen[target] = Path(path)
        out[target] = pairs + out.get(target, [])
    return out
