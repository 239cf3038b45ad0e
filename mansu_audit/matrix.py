"""Regression matrix: methods × quantizers × seeds, compared against a stored baseline (SPEC §1.2).

For every (method, seed) cell: unlearn the base model (the checkpoint is stored
under the cache folder, keyed by method, resolved settings, seed, base and
benchmark file hashes and the methods' code, so a rerun reuses it), certify it
through every quantizer (`certify`; each evaluation and the CAD are cached by
content, so the base model is evaluated once for the whole grid), and write the
pair's `details.json` (diagnostics, per-layer circuit mass) and `candidate.json`
(where the unlearned checkpoint is stored and the exact `mansu-audit unlearn`
command that rebuilds it, so a certificate stays verifiable after the cache is
cleared). An interrupted run resumes from the cache.

Outputs in OUT: one certificate folder per cell (`runs/<method>/seed-<k>/`),
`matrix.json` (every cell's verdicts and headline statistics, and per method the
result pooled over seeds), `matrix.html` (comparison) and `index.html` (the full
audit report of every cell).

Writing OUT (`outdir`): OUT is checked before any work (a non-empty folder needs
`overwrite` and must hold an earlier mansu-audit output); the cells run; then the
results (every cell folder and `matrix.json`) are built in a temporary folder
beside OUT and renamed to OUT at once (an earlier OUT goes whole, its HTML
included), and `matrix.html` and `index.html` are rendered into the published
folder after, each file atomically. A reader sees the old run, the new results
(briefly without HTML), or the new results with their HTML; never a mix of runs.
Our choice, rather than rendering inside the temporary folder too: the report
names each certificate by its path (the `verify` and "Reproduce" commands, the
folder line), which must be the final one; and the results, the expensive part,
are published before the render, so a render failure leaves them in OUT
(`mansu-audit report OUT` renders them again) with no stale HTML beside them. The
baseline comparison (when given) runs before the render, so `matrix.html` names
its regressions from the start. Without a cache the unlearned checkpoints live
beside OUT in `.<OUT name>.checkpoints/` (not inside OUT, which is replaced whole;
the certificates record their paths, so `verify` finds them).

Pooling over seeds (our choice): the candidate's per-item correctness is averaged
over seeds (items stay paired with the base model), and every statistic of a
certificate (`desiderata.split_statistics`) is bootstrapped over items from those
averages with the certificate's policy; S uses the envelope of the seeds' CAD (and
random-circuit control) intervals (mean point, lowest low, highest high), since
per-item CAD values are not stored. Verdicts come from the certificate's own engine
(`verdicts.decide`) with every seed's guard findings (records) applied, so a pooled
verdict is never PASS when a seed tripped the over-unlearning guard. K is pooled like
the splits when every seed ran the relearning attack on the same held-out items (the
candidate's before/after correctness averaged over seeds, the base's from the first seed),
and then gates the pooled verdict as it gates a certificate's (from 0.4.0; before, a
pooled verdict had no K and could PASS methods whose every seed FAILed K). Beside it,
per quantizer, the certification rate over seeds (DurableUn's "PASS in k of n
seeds", `certification_rate`): how many seeds' own certificates PASS F, R and Q[q].

Baseline comparison: every cell and pooled result in the baseline must exist,
no verdict may become more severe (PASS < INCONCLUSIVE/NOT COMPUTED < FAIL), no
pooled certification rate may fall (k/n compared as fractions), and
the point estimate of no gated statistic (D_F, D_R, every G_Q[q], CAD) may move by
more than its tolerance, either way: a baseline that no longer describes the
method must be re-saved. Each violation is named. The per-variant accuracies
are stored for the report but not gated (with a fixed base they move with D_F/D_R).
"""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from mansu_audit.cache import FileLock, NoCache, ResultCache, cache_lock, files_sha256, sha256_json, state_dict_sha256
from mansu_audit.certificate import RESULTS_FILE, body_schema_version, guard_messages, guard_records, unquantized_label
from mansu_audit.certify import (BASE, CAD_MODES, certify, check_quantizers, check_stage_modes, evaluate_all,
                                 model_content_sha256, resolve_cross_scoring)
from mansu_audit.crosscheck import BASE_KEY as CROSS_BASE, CAND_KEY as CROSS_CAND, read_section as read_cross
from mansu_audit.crosscheck import statistics_from_correct
from mansu_audit.data import BUNDLED_BENCHMARKS, Bundle, load_bundle
from mansu_audit.desiderata import split_statistics, variant_keys
from mansu_audit.details import BaseAttributions, compute_details, write_details
from mansu_audit.errors import InputError
from mansu_audit.executors import InProcessExecutor
from mansu_audit.io import atomic_write_bytes, json_copy, progress_logger, read_json_object, write_json
from mansu_audit.loading import LoadedModel, load_model
from mansu_audit.policy import Policy
from mansu_audit.prompts import chat_mode_for
from mansu_audit.rederive import scoring_of
from mansu_audit.registry import code_files, get_method
from mansu_audit.outdir import check_output_dir, staged_dir
from mansu_audit.report import matrix_html, render_report, write_html
from mansu_audit.stats import Estimate
from mansu_audit.unlearn import RECORD_NAME, adapter_base_spec, resolve_method, unlearn
from mansu_audit.verdicts import K_AFTER, K_BASE, K_BEFORE, UNQUANTIZED, below_chance_findings, decide, k_statistics

MATRIX_SCHEMA = "mansu-audit-matrix"
MATRIX_SCHEMA_VERSION = 1
MATRIX_FILE = "matrix.json"
MATRIX_HTML = "matrix.html"
DEFAULT_TOLERANCE = 0.02
GATED_STATISTICS = ("D_F", "D_R", "G_Q", "CAD")  # families the baseline gate checks (accuracies are reported only)
SEVERITY = {"PASS": 0, "NOT COMPUTED": 1, "INCONCLUSIVE": 1, "FAIL": 2}


_log = progress_logger("matrix")


def methods_code_sha256(method) -> str:
    """Hash of one method's code (its own source file and the method modules it imports,
    `registry.code_files`) and the core code methods call; a change retrains that method only."""

    pkg = Path(__file__).resolve().parent
    paths = [*code_files(method), *sorted((pkg / "circuits").glob("*.py")), pkg / "unlearn.py",
             *sorted((pkg / "quantizers").glob("*.py"))]
    return files_sha256(p for p in paths if p.is_file())


def default_cell_dir(method: str, seed: int) -> str:
    return f"runs/{method}/seed-{seed}"


def checkpoint_store(cache: ResultCache, out: Path) -> Path:
    """Where unlearned checkpoints live: beside the result cache, or beside OUT when caching is off."""
    if isinstance(cache, NoCache):
        return out.parent / f".{out.name}.checkpoints"
    return cache.root / "checkpoints"


def unlearned_checkpoint(method: str, seed: int, overrides: Sequence[str], base: LoadedModel, bundle: Bundle,
                         store: Path, *, device: str = "cpu", progress: bool = False) -> tuple[Path, dict]:
    """The unlearned checkpoint of (method, settings, seed) on `base`; trained only if not stored yet."""
    from mansu_audit.methods.base import parse_overrides, settings_dict

    instance = resolve_method(method)
    settings = parse_overrides(instance.Settings, list(overrides))
    key = sha256_json({"method": instance.name, "settings": settings_dict(settings), "seed": seed,
                       "base": base.file_hashes() or state_dict_sha256(base.model), "benchmark": bundle.file_hashes(),
                       "code": methods_code_sha256(instance)})
    path = store / f"{instance.name}-seed{seed}-{key[:20]}"
    store.mkdir(parents=True, exist_ok=True)
    with FileLock(store / f".{path.name}.lock"):  # processes (and machines) sharing the store train it once
        return _stored_or_trained(instance, seed, overrides, base, bundle, path, device, progress)


def _stored_or_trained(instance, seed, overrides, base, bundle, path: Path, device: str, progress: bool):
    record_path = path / RECORD_NAME
    if record_path.is_file():
        _log(progress, f"{instance.name} seed {seed}: checkpoint cached ({path})")
        return path, json.loads(record_path.read_text(encoding="utf-8"))
    if path.exists():  # an empty or foreign folder from an interrupted run (unlearn writes atomically)
        import shutil

        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _log(progress, f"{instance.name} seed {seed}: unlearning")
    unlearn(instance, base, bundle, seed=seed, overrides=list(overrides), out=path, device=device, progress=progress)
    return path, json.loads(record_path.read_text(encoding="utf-8"))


CANDIDATE_FILE = "candidate.json"


def candidate_record(method: str, base: LoadedModel, bundle: Bundle, checkpoint: Path, record: Mapping,
                     threads: int | None = None) -> dict:
    """`candidate.json` beside each cell's certificate: where its unlearned checkpoint is stored (inside the
    result cache, so clearing the cache removes it) and the `mansu-audit unlearn` command that rebuilds it,
    with every setting spelled out (so a later change of a default cannot change the rebuild). The rebuilt
    weights are checked by `mansu-audit verify CERT --candidate DIR` against the certificate's digests. The
    cell's torch thread count is part of the command: float reductions, and so the trained weights, depend on it."""
    try:
        base_spec = adapter_base_spec(base)
    except InputError:
        base_spec = base.name
    bench = bundle.name if BUNDLED_BENCHMARKS.get(bundle.name) == bundle.root else str(bundle.root)
    sets = [f"--set {shlex.quote(f'{k}={v}')}" for k, v in sorted((record.get("settings") or {}).items())]
    command = " ".join(["mansu-audit unlearn --method", shlex.quote(method), "--model", shlex.quote(base_spec),
                        "--benchmark", shlex.quote(bench), "--seed", str(record.get("seed")), *sets,
                        "--device", shlex.quote(str(record.get("device", "cpu"))),
                        *([f"--threads {int(threads)}"] if threads else []), "--out CANDIDATE_DIR"])
    return {"checkpoint": str(Path(checkpoint).resolve()), "rebuild": command,
            "verify": "mansu-audit verify certificate.json --candidate CANDIDATE_DIR",
            "unlearn": dict(record)}


def run_record(record: Mapping) -> dict:
    """The part of `unlearn.json` the report shows."""
    return {k: record.get(k) for k in ("method", "settings", "seed", "steps", "seconds", "device", "versions")}


def _estimate(d: Mapping | None) -> dict | None:
    return None if d is None else {k: d.get(k) for k in ("point", "low", "high", "n", "B", "seed", "mde")}


def cell_summary(method: str, seed: int, body: Mapping, folder: str) -> dict:
    """Verdicts and headline statistics of one certificate."""

    d = body["desiderata"]
    f, r = body["statistics"]["forget_eval"], body["statistics"]["retain_eval"]
    quantizers = list(body["quantizers"])
    u = unquantized_label(body)
    stats = {"D_F": _estimate(d["F"]["estimate"]), "D_R": _estimate(d["R"]["estimate"]),
             **{f"G_Q[{q}]": _estimate(f.get(f"G_Q[{q}]")) for q in quantizers},
             "CAD": _estimate(d["S"]["estimate"]), "KR": _estimate(f.get("KR")),
             **{f"acc_forget[{v}]": _estimate(f.get(f"acc[candidate/{v}]")) for v in (u, *quantizers)},
             **{f"acc_retain[{v}]": _estimate(r.get(f"acc[candidate/{v}]")) for v in (u, *quantizers)}}
    return {"method": method, "seed": seed, "folder": folder, "verdict": body["verdict"],
            "verdicts": {k: v["verdict"] for k, v in sorted(d.items())}, "statistics": stats,
            "guard": guard_messages(body)}


def _correct(body: Mapping, split: str, key: str) -> np.ndarray:
    per = body["per_item"][split]
    return np.asarray(per["predictions"][key]) == np.asarray(per["answers"])


def _envelope(estimates: Sequence[Mapping | None], level: float):
    """Mean point, lowest low, highest high of the seeds' estimates (None if any seed lacks one)."""

    if not estimates or any(e is None for e in estimates):
        return None
    return Estimate(float(np.mean([e["point"] for e in estimates])), min(e["low"] for e in estimates),
                    max(e["high"] for e in estimates), estimates[0]["n"], estimates[0]["B"], estimates[0]["seed"],
                    level, "seed envelope")


def pool_seeds(bodies: Sequence[Mapping]) -> dict:
    """One method's result pooled over its seeds (see the module docstring).

    Statistics come from the same code as a certificate's (`desiderata.split_statistics`,
    on seed-averaged candidate vectors) and verdicts from the same `verdicts.decide`,
    with every seed's guard findings (structured records) applied, below chance re-checked on
    the pooled interval, and F's second formulation pooled the same way (`_pooled_cross`).
    """

    first = bodies[0]
    for b in bodies[1:]:
        for split in ("forget_eval", "retain_eval"):
            if b["per_item"][split]["ids"] != first["per_item"][split]["ids"]:
                raise InputError(f"{split}: the seeds were certified on different items; cannot pool them")
        if scoring_of(b) != scoring_of(first) or b["chance"] != first["chance"]:
            raise InputError(f"the seeds were scored differently ({scoring_of(first)} vs {scoring_of(b)}, chance "
                             f"{first['chance']} vs {b['chance']}); cannot pool them")
    policy = Policy.from_dict(first["policy"]["values"])
    quantizers = list(first["quantizers"])
    correct = {}
    for split in ("forget_eval", "retain_eval"):
        correct[split] = {}
        for key in variant_keys(quantizers):
            stored = [_stored_key(b, key) for b in bodies]
            if key.startswith("base/"):
                correct[split][key] = _correct(first, split, stored[0])
            else:
                correct[split][key] = np.mean([_correct(b, split, k) for b, k in zip(bodies, stored)], axis=0)
    stats = split_statistics(correct, quantizers, policy, float(first["chance"]))
    f_est, r_est = stats["forget_eval"], stats["retain_eval"]
    cad = _envelope([b["statistics"].get("cad") or b["desiderata"]["S"]["estimate"] for b in bodies], policy.level)
    control = _envelope([b["statistics"].get("cad_control") for b in bodies], policy.level)
    guard = [g for b in bodies for g in guard_records(b)]
    pooled = []
    if _rules(first) >= 2:  # the pooled interval is narrower than any seed's: below chance is checked on it too
        pooled = below_chance_findings(f_est, (UNQUANTIZED, *quantizers), policy, float(first["chance"]),
                                       scoring_of(first))
    guard += pooled
    cross, cross_mode = _pooled_cross(bodies, policy)
    relearn = _pooled_relearn(bodies, policy)
    decision = decide(f_est, r_est, quantizers, policy, chance=float(first["chance"]), cad=cad, cad_control=control,
                      relearn=relearn, guard=guard, rules=_rules(first), cross=cross, cross_scoring=cross_mode)
    messages = [f"seed run {i + 1} of {len(bodies)}: {m}" for i, b in enumerate(bodies) for m in _messages(b)]
    messages += [f"pooled over {len(bodies)} seeds: {g.message}" for g in pooled]
    out_stats = {"D_F": f_est["D_F"], "D_R": r_est["D_R"], **{f"G_Q[{q}]": f_est[f"G_Q[{q}]"] for q in quantizers}}
    if cad is not None:
        out_stats["CAD"] = cad
    if relearn is not None:
        out_stats["K"] = relearn["recovered_fraction"]
    seed_verdicts = [{k: v["verdict"] for k, v in b["desiderata"].items()} for b in bodies]
    return {"n_seeds": len(bodies), "verdict": decision.overall,
            "verdicts": {k: v.verdict for k, v in sorted(decision.verdicts.items())},
            "statistics": {k: _estimate(e.to_dict()) for k, e in out_stats.items()}, "guard": messages,
            "cert_rate": certification_rate(seed_verdicts, quantizers)}


def _pooled_relearn(bodies: Sequence[Mapping], policy: Policy) -> dict | None:
    """K's statistics pooled over seeds (module docstring), or None unless every seed ran the relearning attack."""
    split = "relearn_heldout"  # per_item records it like the splits: ids, answers, predictions by model key
    records = [b["per_item"].get(split) for b in bodies]
    if any(r is None for r in records):
        return None
    if any(r["ids"] != records[0]["ids"] for r in records):
        raise InputError("relearn_heldout: the seeds were attacked on different held-out items; cannot pool them")
    return k_statistics(_correct(bodies[0], split, K_BASE),
                        np.mean([_correct(b, split, K_BEFORE) for b in bodies], axis=0),
                        np.mean([_correct(b, split, K_AFTER) for b in bodies], axis=0), policy)


def _pooled_cross(bodies: Sequence[Mapping], policy: Policy) -> tuple[dict | None, str]:
    """F's second formulation (`crosscheck`) pooled like the main splits: the base from the first seed, the
    candidate's per-item correctness averaged over seeds. Seeds must agree on whether and how it ran."""
    records = [b.get("cross_scoring") or {} for b in bodies]
    modes = {r.get("scoring") for r in records}
    if len(modes) > 1:
        raise InputError(f"the seeds differ in F's second formulation ({sorted(map(str, modes))}); cannot pool them")
    mode = modes.pop()
    if mode is None:
        return None, ""
    ids, answers, predictions = read_cross(records[0])
    candidate = []
    for r in records:
        r_ids, r_answers, r_predictions = read_cross(r)
        if r_ids != ids or (r_answers != answers).any():
            raise InputError("the seeds' second formulations cover different items; cannot pool them")
        candidate.append(r_predictions[CROSS_CAND] == answers)
    return statistics_from_correct(predictions[CROSS_BASE] == answers, np.mean(candidate, axis=0), policy), mode


CERT_RATE_REQUIRES = ("F", "R")  # with Q[q]: what one seed must PASS to count as certified at quantizer q


def certification_rate(seed_verdicts: Sequence[Mapping[str, str]], quantizers: Sequence[str]) -> dict:
    """DurableUn's certification rate over seeds: "PASS in k of n seeds", per quantizer and for all of them.

    A seed counts as certified at quantizer q when its own certificate's F, R and
    Q[q] are all PASS (the forgetting is real, utility kept, and it survives q;
    our reading of DurableUn's (eps, precisions) durability certificate; S and K
    are left out: they do not depend on the precision). `all_quantizers` counts
    the seeds certified at every quantizer. Each entry: k, n and rate = k / n.
    """
    n = len(seed_verdicts)

    def rate(names: Sequence[str]) -> dict:
        k = sum(all(v.get(d) == "PASS" for d in names) for v in seed_verdicts)
        return {"k": k, "n": n, "rate": k / n if n else None}

    return {"requires": [*CERT_RATE_REQUIRES, "Q[q]"],
            "per_quantizer": {q: rate([*CERT_RATE_REQUIRES, f"Q[{q}]"]) for q in quantizers},
            "all_quantizers": rate([*CERT_RATE_REQUIRES, *(f"Q[{q}]" for q in quantizers)])}


def _stored_key(body: Mapping, key: str) -> str:
    """A variant key as stored in `body` (schema-1 certificates call the unquantized variant 'fp32')."""

    role, variant = key.split("/", 1)
    return f"{role}/{unquantized_label(body)}" if variant == UNQUANTIZED else key


def _rules(body: Mapping) -> int:
    return body_schema_version(body)


def _messages(body: Mapping) -> list[str]:
    return guard_messages(body)


@dataclass
class MatrixRun:
    """What `run_matrix` wrote: the results document and the paths of its files."""

    results: dict
    out: Path
    results_path: Path
    html_path: Path
    report_path: Path
    regressions: list[str] | None = None  # against the baseline, when one was given


def check_inputs(methods: Sequence[str], quantizers: Sequence[str], seeds: Sequence[int]) -> None:
    """Refuse unknown methods/quantizers and bad seeds before any long stage."""

    if not methods:
        raise InputError("no methods given")
    if not seeds:
        raise InputError("no seeds given")
    if len(set(methods)) != len(methods) or len(set(seeds)) != len(seeds):
        raise InputError("methods and seeds must not repeat")
    for m in methods:
        get_method(m)
    if any(s < 0 for s in seeds):
        raise InputError("seeds must be non-negative")
    check_quantizers(quantizers)


@dataclass
class MatrixContext:
    """What every cell of one matrix shares; picklable, so a remote executor ships it once to its workers.

    `base` is a name/folder (loaded where the cell runs) or a LoadedModel; `store` is
    the checkpoint folder (None: a temporary folder per cell, for remote cells without
    a cache); `base_entries` are the base model's evaluation cache entries from the
    first stage, read by every cell (so a worker without the shared cache folder does
    not evaluate the base model again). `threads`: torch's CPU thread count while a
    cell runs (restored afterwards); float reductions depend on it, so equal thread
    counts are what makes results byte-identical across executors.
    """

    base: object
    bundle: Bundle
    policy: object
    cache: ResultCache
    quantizers: tuple
    device: str
    store: Path | None
    progress: bool
    threads: int | None = None
    base_entries: dict | None = None
    cad: str = "auto"  # certify's cad= for every cell; "skip" also skips the report's per-layer circuit mass
    relearn: str | None = "auto"  # certify's relearn= for every cell (K)
    consistency: str | None = "auto"  # certify's consistency= for every cell
    cross_scoring: str | None = "auto"  # certify's cross_scoring= for every cell

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}  # not the loaded memo

    def loaded_base(self) -> LoadedModel:
        """The base model, loaded once per process (and per context)."""
        if isinstance(self.base, LoadedModel):
            return self.base
        if getattr(self, "_base", None) is None:
            self._base = load_model(self.base)
        return self._base

    def base_attributions(self):
        if getattr(self, "_attributions", None) is None:
            self._attributions = BaseAttributions()
        return self._attributions


class _RecordingCache(ResultCache):
    """Passes through to `inner`; remembers every value read or written (the base stage's output)."""

    def __init__(self, inner: ResultCache):
        self.inner, self.root, self._warn, self.entries = inner, inner.root, getattr(inner, "_warn", None), {}

    def get(self, key, validate=None):
        value = self.inner.get(key, validate)
        if value is not None:
            self.entries[key] = value
        return value

    def put(self, key, value, **kwargs):
        self.inner.put(key, value, **kwargs)
        self.entries[key] = json_copy(value)  # what a later get() returns


class _SeededCache(ResultCache):
    """`inner`, with the base stage's entries answered first (validated like any entry)."""

    def __init__(self, inner: ResultCache, seeded: Mapping[str, dict]):
        self.inner, self.root, self._warn, self.seeded = inner, inner.root, getattr(inner, "_warn", None), seeded

    def get(self, key, validate=None):
        if key in self.seeded:
            value = json_copy(self.seeded[key])
            try:
                if validate is not None:
                    validate(value)
                return value
            except Exception:
                pass
        return self.inner.get(key, validate)

    def put(self, key, value, **kwargs):
        self.inner.put(key, value, **kwargs)


def _certify_defaults() -> tuple:
    """`certify`'s batch size and chat-template defaults (the base stage must compute the same cache keys)."""
    import inspect

    params = inspect.signature(certify).parameters
    return params["batch_size"].default, params["chat_template"].default


class _Threads:
    """torch's intra-op thread count set for a block and restored after it (None: unchanged)."""

    def __init__(self, n: int | None):
        self.n, self.old = n, None

    def __enter__(self):
        import torch

        if self.n:
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        if self.old is not None:
            torch.set_num_threads(self.old)


def evaluate_base(ctx: MatrixContext, _item=None) -> dict:
    """First stage: evaluate the base model through fp32 and every quantizer (each cached by content).

    Runs under a lock in the cache folder, so two drivers sharing a cache never
    compute the base entries at once; returns the entries for the cells to read.
    """

    base = ctx.loaded_base()
    batch_size, chat_template = _certify_defaults()
    scoring = ctx.bundle.check_scoring(None)  # what each cell's certify uses: the bundle's default scoring
    chat_template = chat_mode_for(chat_template, scoring)
    recording = _RecordingCache(ctx.cache)
    name = sha256_json({"base": model_content_sha256(base), "benchmark": ctx.bundle.file_hashes(),
                        "quantizers": list(ctx.quantizers)})
    with _Threads(ctx.threads), cache_lock(ctx.cache, f"base-{name[:32]}"):
        evaluate_all({BASE: base}, ctx.bundle, ctx.quantizers, recording, batch_size=batch_size,
                     chat_template=chat_template, progress=ctx.progress, scoring=scoring)
    return recording.entries


def run_cell(ctx: MatrixContext, cell: tuple) -> dict:
    """One (method, seed) cell: unlearn (or reuse the checkpoint), certify, diagnose.

    `cell` is (method, seed, overrides, folder). Writes nothing in the output folder:
    returns `{"files": [(name, bytes)...], "body", "record"}` for the driver to write.
    The whole cell runs under a lock in the cache folder (two drivers never compute
    the same cell at once; the second finds it cached).
    """
    import shutil
    import tempfile

    method, seed, overrides, _folder = cell
    base = ctx.loaded_base()
    cache = _SeededCache(ctx.cache, ctx.base_entries or {})
    name = sha256_json({"method": method, "seed": seed, "overrides": list(overrides),
                        "base": model_content_sha256(base), "benchmark": ctx.bundle.file_hashes(),
                        "quantizers": list(ctx.quantizers)})
    scratch = Path(tempfile.mkdtemp(prefix="mansu-cell-"))
    try:
        with _Threads(ctx.threads), cache_lock(ctx.cache, f"cell-{name[:32]}"):
            store = ctx.store if ctx.store is not None else scratch / "checkpoints"
            ckpt, record = unlearned_checkpoint(method, seed, overrides, base, ctx.bundle, store, device=ctx.device,
                                                progress=ctx.progress)
            candidate = load_model(ckpt)
            staging = scratch / "out"
            _log(ctx.progress, f"{method} seed {seed}: certifying through {', '.join(ctx.quantizers)}")
            cert = certify(base, candidate, ctx.bundle, quantizers=ctx.quantizers, policy=ctx.policy, out=staging,
                           cache=cache, progress=ctx.progress, threads=ctx.threads, cad=ctx.cad,
                           relearn=ctx.relearn, consistency=ctx.consistency, cross_scoring=ctx.cross_scoring)
            _log(ctx.progress, f"{method} seed {seed}: diagnostics and per-layer circuit mass")
            cad_details = json.loads((staging / RESULTS_FILE).read_text(encoding="utf-8")).get("cad")
            details = compute_details(base, candidate, ctx.bundle, ctx.quantizers, cache,
                                      base_attributions=ctx.base_attributions(), progress=ctx.progress,
                                      circuits=ctx.cad != "skip", cad_details=cad_details)
            write_details(staging, details, run_record(record))
            write_json(staging / CANDIDATE_FILE, candidate_record(method, base, ctx.bundle, ckpt, record, ctx.threads))
            del candidate
        names = sorted((p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()),
                       key=lambda n: (n == "certificate.json", n))
        files = [(n, (staging / n).read_bytes()) for n in names]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"files": files, "body": cert.body, "record": record}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def run_matrix(methods: Sequence[str], quantizers: Sequence[str], seeds: Sequence[int], out: str | Path, *,
               base: str | Path | LoadedModel = "reference", benchmark: str | Path | Bundle = "synthhazard",
               policy=None, cache: ResultCache | None = None, overrides: Mapping[str, Sequence[str]] | None = None,
               device: str = "cpu", cell_dir: Callable[[str, int], str] = default_cell_dir,
               progress: bool = True, title: str | None = None, executor=None, threads: int | None = None,
               include_forget_text: bool = False, overwrite: bool = False, baseline: Mapping | None = None,
               baseline_path: str | None = None, tolerances: Mapping[str, float] | None = None,
               cad: str = "auto", relearn: str | None = "auto", consistency: str | None = "auto",
               cross_scoring: str | None = "auto") -> MatrixRun:
    """Run the grid into `out` (see the module docstring); returns the results and file paths.

    `executor` (default `InProcessExecutor()`; see `mansu_audit.executors`) runs the
    base-model stage, then every (method, seed) cell; the driver (this call) writes
    each cell's files, `matrix.json` and the reports, so the results do not depend
    on the executor or on the number of workers, given the same CPU `threads` per
    cell (default: the executor's `threads_per_cell`, else torch's current count).
    `out` is checked first and published whole at the end (module docstring); an
    earlier output there is replaced only with `overwrite`. `baseline` (results read
    by `read_results`, named `baseline_path` in the page) is compared with
    `tolerances` (`parse_tolerance`); the regressions are in `MatrixRun.regressions`.
    `cad` ("auto" or "skip", as `certify`'s), `relearn`, `consistency` and `cross_scoring` (as
    `certify`'s) are passed to every cell's certification.
    """

    quantizers = tuple(dict.fromkeys(q for q in quantizers if q != "fp32"))
    seeds = tuple(int(s) for s in seeds)
    check_inputs(methods, quantizers, seeds)
    if cad not in CAD_MODES:
        raise InputError(f"cad must be one of {', '.join(CAD_MODES)}, not {cad!r}")
    check_stage_modes(relearn=relearn, consistency=consistency, cross_scoring=cross_scoring)
    out = check_output_dir(out, overwrite)
    overrides = dict(overrides or {})
    cache = cache if cache is not None else ResultCache()
    executor = executor if executor is not None else InProcessExecutor()
    remote = not isinstance(executor, InProcessExecutor)
    if not remote and not isinstance(base, LoadedModel):
        base = load_model(base)  # fail early on a bad base; the cells share this one copy
    bundle = benchmark if isinstance(benchmark, Bundle) else load_bundle(benchmark)
    resolve_cross_scoring(cross_scoring, bundle.check_scoring(None), bundle)  # "on" without one: before any cell
    store = None if remote and isinstance(cache, NoCache) else checkpoint_store(cache, out)
    ctx = MatrixContext(base=base, bundle=bundle, policy=policy, cache=cache, quantizers=quantizers, device=device,
                        store=store, progress=progress and not remote, cad=cad,
                        relearn=relearn, consistency=consistency, cross_scoring=cross_scoring,
                        threads=threads or getattr(executor, "threads_per_cell", None) or _torch_threads())
    _log(progress, f"base model: evaluating through fp32, {', '.join(quantizers)} (once for every cell)")
    ctx.base_entries = executor.map(evaluate_base, ctx, [None], ["base model"], progress=progress)[0]
    grid = [(m, s, tuple(overrides.get(m, ())), cell_dir(m, s)) for m in methods for s in seeds]
    done = executor.map(run_cell, ctx, grid, [f"{m} seed {s}" for m, s, _, _ in grid], progress=progress)
    cells, bodies = [], {}
    for (method, seed, _, folder_name), result in zip(grid, done):
        cells.append(cell_summary(method, seed, result["body"], Path(folder_name).as_posix()))
        bodies.setdefault(method, []).append(result["body"])
    pooled = {m: pool_seeds(b) for m, b in bodies.items()} if len(seeds) > 1 else {}
    first = next(iter(bodies.values()))[0]
    results = {"schema": MATRIX_SCHEMA, "schema_version": MATRIX_SCHEMA_VERSION,
               "methods": list(methods), "quantizers": list(quantizers), "seeds": list(seeds),
               "overrides": {m: list(v) for m, v in sorted(overrides.items())},
               "base": first["models"]["base"], "benchmark": {k: first["benchmark"][k] for k in ("name", "files")},
               "policy": first["policy"], "suite": first["suite"], "title": title, "cells": cells, "pooled": pooled}
    regressions = None if baseline is None else compare_to_baseline(results, baseline, tolerances or
                                                                    parse_tolerance(None))
    with staged_dir(out, overwrite) as stage:  # the results, published whole (module docstring)
        for (_, _, _, folder_name), result in zip(grid, done):
            for name, data in result["files"]:  # in the order the cell wrote them (certificate.json last)
                atomic_write_bytes(stage / folder_name / name, data)
        write_results(results, stage / MATRIX_FILE)
    html_path = write_matrix_html(out, results, regressions=regressions, baseline_path=baseline_path, title=title)
    report_path = render_report(out, title=title, include_forget_text=include_forget_text)
    return MatrixRun(results, out, out / MATRIX_FILE, html_path, report_path, regressions)


def write_results(results: Mapping, path: str | Path) -> Path:
    """Write matrix `results` to `path` (strict JSON, atomic): `matrix.json`, or a baseline file."""
    write_json(path, dict(results))
    return Path(path)


def read_results(path: str | Path) -> dict:
    """A matrix results (or baseline) file; `InputError` if it is not one."""
    path = Path(path)
    if path.is_dir():
        path = path / MATRIX_FILE
    data = read_json_object(path, "matrix results file")
    if data.get("schema") != MATRIX_SCHEMA:
        raise InputError(f"not a mansu-audit matrix file (schema {data.get('schema')!r})", path)
    if data.get("schema_version") != MATRIX_SCHEMA_VERSION:
        raise InputError(f"unsupported matrix schema version {data.get('schema_version')!r}", path)
    if not isinstance(data.get("cells"), list) or not isinstance(data.get("pooled"), dict):
        raise InputError("matrix file has no 'cells' list or 'pooled' mapping", path)
    return data


def parse_tolerance(text: str | None) -> dict[str, float]:
    """`0.02` or `0.02,CAD=0.1,G_Q=0.01` (a bare number is the default; `G_Q` covers every `G_Q[q]`)."""
    out = {"default": DEFAULT_TOLERANCE}
    if text is None:
        return out
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        name, sep, value = part.rpartition("=")
        name = name.strip() if sep else "default"
        try:
            tol = float(value)
        except ValueError:
            raise InputError(f"tolerance '{part}': expected a number or NAME=number") from None
        if not math.isfinite(tol) or tol < 0:
            raise InputError(f"tolerance '{part}': must be a non-negative number")
        out[name] = tol
    return out


def tolerance_for(name: str, tolerances: Mapping[str, float]) -> float:
    if name in tolerances:
        return tolerances[name]
    family = name.split("[", 1)[0]
    return tolerances.get(family, tolerances["default"])


def _entries(results: Mapping) -> dict[str, dict]:
    out = {f"{c['method']} seed {c['seed']}": c for c in results["cells"]}
    out.update({f"{m} pooled": p for m, p in results["pooled"].items()})
    return out


def compare_to_baseline(results: Mapping, baseline: Mapping, tolerances: Mapping[str, float]) -> list[str]:
    """Every regression of `results` against `baseline`, one line each (empty: none)."""
    current, previous = _entries(results), _entries(baseline)
    problems = []
    for name, old in previous.items():
        new = current.get(name)
        if new is None:
            problems.append(f"{name}: missing from this run (the baseline has it)")
            continue
        for d, old_v in sorted(old["verdicts"].items()):
            new_v = new["verdicts"].get(d)
            if new_v is None:
                problems.append(f"{name}: verdict {d} missing (baseline {old_v})")
            elif SEVERITY.get(new_v, 2) > SEVERITY.get(old_v, 2):
                problems.append(f"{name}: verdict {d} worsened {old_v} -> {new_v}")
        if SEVERITY.get(new["verdict"], 2) > SEVERITY.get(old["verdict"], 2):
            problems.append(f"{name}: overall verdict worsened {old['verdict']} -> {new['verdict']}")
        old_rates = (old.get("cert_rate") or {}).get("per_quantizer", {})
        new_rates = (new.get("cert_rate") or {}).get("per_quantizer", {})
        for q, old_r in sorted(old_rates.items()):
            new_r = new_rates.get(q)
            if new_r is not None and new_r["k"] * old_r["n"] < old_r["k"] * new_r["n"]:
                problems.append(f"{name}: certification rate at {q} fell {old_r['k']}/{old_r['n']} -> "
                                f"{new_r['k']}/{new_r['n']} seeds")
        for stat, old_e in sorted(old["statistics"].items()):
            if stat.split("[", 1)[0] not in GATED_STATISTICS:
                continue
            new_e = new["statistics"].get(stat)
            old_p = None if old_e is None else old_e.get("point")
            new_p = None if new_e is None else new_e.get("point")
            if old_p is None and new_p is None:
                continue
            if old_p is None or new_p is None:
                problems.append(f"{name}: {stat} {'appeared' if old_p is None else 'disappeared'} "
                                f"(baseline {old_p}, now {new_p})")
                continue
            tol = tolerance_for(stat, tolerances)
            if abs(new_p - old_p) > tol + 1e-12:
                problems.append(f"{name}: {stat} moved {old_p:+.4f} -> {new_p:+.4f} "
                                f"(|change| {abs(new_p - old_p):.4f} > tolerance {tol:g})")
    return problems


def write_matrix_html(out: Path, results: Mapping, *, regressions: Sequence[str] | None = None,
                      baseline_path: str | None = None, title: str | None = None) -> Path:
    """The comparison page (`report.matrix_html`): the run's identity, verdicts and statistics per cell and
    pooled, one chart per statistic with its policy threshold."""

    html = matrix_html(Path(out), dict(results), regressions=regressions, baseline_path=baseline_path, title=title)
    path = Path(out) / MATRIX_HTML
    write_html(path, html)
    return path


def format_matrix_table(results: Mapping) -> str:
    """Plain-text summary: one line per cell and pooled result."""
    qs = results["quantizers"]
    head = f"{'candidate':<22}{'overall':<14}{'F':<6}{'R':<6}" + "".join(f"{'Q[' + q + ']':<10}" for q in qs) + \
        f"{'S':<6}{'K':<6}{'D_F':>8}{'D_R':>8}" + "".join(f"{'G_Q[' + q + ']':>11}" for q in qs) + f"{'CAD':>8}"
    lines = [head]

    def short(v):
        return {"PASS": "PASS", "FAIL": "FAIL", "INCONCLUSIVE": "INC", "NOT COMPUTED": "n/c"}.get(v, v or "-")

    def pt(e):
        return "-" if not e or e.get("point") is None else f"{e['point']:+.3f}"

    entries = [(f"{c['method']} s{c['seed']}", c) for c in results["cells"]]
    entries += [(f"{m} pooled", p) for m, p in results["pooled"].items()]
    for label, e in entries:
        v, s = e["verdicts"], e["statistics"]
        lines.append(f"{label:<22}{e['verdict']:<14}{short(v.get('F')):<6}{short(v.get('R')):<6}"
                     + "".join(f"{short(v.get(f'Q[{q}]')):<10}" for q in qs) + f"{short(v.get('S')):<6}"
                     + f"{short(v.get('K', 'NOT COMPUTED')):<6}"
                     + f"{pt(s.get('D_F')):>8}{pt(s.get('D_R')):>8}" + "".join(f"{pt(s.get(f'G_Q[{q}]')):>11}" for q in qs)
                     + f"{pt(s.get('CAD')):>8}")
    for m, p in results["pooled"].items():
        if p.get("cert_rate"):
            lines.append(f"{m} certified (F, R, Q[q] PASS) in " + cert_rate_text(p["cert_rate"]))
    return "\n".join(lines)


def cert_rate_text(cert_rate: Mapping) -> str:
    """`nf4 2/3 seeds, int8 3/3 seeds; every quantizer 2/3 seeds`."""
    per = ", ".join(f"{q} {e['k']}/{e['n']} seeds" for q, e in cert_rate["per_quantizer"].items())
    every = cert_rate["all_quantizers"]
    return f"{per}; every quantizer {every['k']}/{every['n']} seeds"
