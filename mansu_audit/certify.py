"""The certification pipeline: `certify(base, candidate, ...) -> Certificate` (SPEC §3, §10, §11).

Stages: load and check both models (compatible architecture, shapes,
tokenizer) -> evaluate base and candidate, unquantized and under every
quantizer, on `forget_eval` and `retain_eval` (each evaluation cached by
content) -> CAD on `forget_attr` (S; cached) -> paired bootstrap and verdicts
(`desiderata.assess`) -> certificate body with every hash -> atomic write.

S accepts a CAD result from anywhere (`cad=`): "auto" runs the bundled
EAP-IG + CAD (`mansu_audit.circuits.compute_cad`), an `Estimate` or per-item
values are used as given, a callable `(base, candidate, bundle, policy) ->
Estimate | CADResult` is a hook for another attribution method, and None
leaves S "NOT COMPUTED" (the overall verdict can then not be PASS).
"""
from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

import mansu_audit
from mansu_audit.cache import (ResultCache, files_sha256, mcq_items_sha256, sha256_json, state_dict_sha256,
                               tokenizer_sha256)
from mansu_audit.certificate import RESULTS_FILE, Certificate, now_utc
from mansu_audit.compat import check_compatible
from mansu_audit.data import Bundle, load_bundle
from mansu_audit.desiderata import BASE, CANDIDATE, FULL_PRECISION, Assessment, assess, variant_key
from mansu_audit.errors import InputError
from mansu_audit.evaluate import MCQResult, evaluate_mcq
from mansu_audit.models import LoadedModel, load_model
from mansu_audit.policy import Policy, load_policy
from mansu_audit.stats import Estimate, mean_ci

DEFAULT_QUANTIZERS = ("nf4", "gptq", "int8")
EVAL_SPLITS = ("forget_eval", "retain_eval")
CAD_SPLIT = "forget_attr"
PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("torch", "transformers", "numpy", "scipy", "bitsandbytes", "safetensors", "tokenizers", "jsonschema")

CadHook = Callable[[LoadedModel, LoadedModel, Bundle, Policy], object]
CadSpec = Union[str, Estimate, np.ndarray, CadHook, None]


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"[certify] {message}", file=sys.stderr, flush=True)


def runtime_record(model) -> dict:
    """What else changes a result computed on the same weights: precision, device, torch version."""
    p = next(model.parameters())
    return {"dtype": str(p.dtype), "device": p.device.type, "torch": metadata.version("torch")}


def cad_code_sha256() -> str:
    """Hash of the code a CAD result depends on (attribution, circuits, prompts, bootstrap)."""
    paths = [*sorted((PACKAGE_DIR / "circuits").glob("*.py")), PACKAGE_DIR / "prompts.py", PACKAGE_DIR / "stats.py"]
    return files_sha256(p for p in paths if p.is_file())


def evaluation_code_sha256() -> str:
    """Hash of the code whose change alters an evaluation result (cache 'code version')."""
    paths = [PACKAGE_DIR / "evaluate.py", PACKAGE_DIR / "prompts.py", PACKAGE_DIR / "loaders.py"]
    paths += sorted((PACKAGE_DIR / "quantizers").glob("*.py"))
    return files_sha256(p for p in paths if p.is_file())


def suite_code_sha256() -> str:
    """Hash of every source file of the suite and the certificate schema (recorded in the body)."""
    paths = sorted(PACKAGE_DIR.rglob("*.py")) + [PACKAGE_DIR / "schemas" / "certificate.schema.json"]
    return files_sha256(p for p in paths if "__pycache__" not in p.parts)


def model_content_sha256(model: LoadedModel) -> str:
    """Content hash: its files' hashes if it came from files, else its state dict and tokenizer."""
    if model.files:
        return sha256_json({"files": model.file_hashes()})
    return sha256_json({"state_dict": state_dict_sha256(model.model), "tokenizer": tokenizer_sha256(model.tokenizer)})


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "mansu-audit": mansu_audit.__version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


@dataclass
class Evaluations:
    """Per-item results: split -> variant_key -> MCQResult, plus each quantizer's settings."""

    results: dict[str, dict[str, MCQResult]]
    quantizer_settings: dict[str, dict]
    batch_size: int = 0  # the batch size last used (0: everything came from the cache)
    peak_memory_bytes: int = 0  # peak GPU memory of the evaluations (0 on CPU)


def _quantize(model: LoadedModel, name: str, bundle: Bundle):
    from mansu_audit.quantizers import quantize_model

    return quantize_model(model.model, name, tokenizer=model.tokenizer, calibration=bundle)


def check_quantizers(quantizers: Sequence[str]) -> None:
    """Refuse unknown quantizer names before any long stage runs."""
    if not quantizers:
        return
    from mansu_audit.quantizers import available_quantizers

    known = available_quantizers()
    for q in quantizers:
        if q not in known:
            raise InputError(f"unknown quantizer '{q}' (available: fp32, {', '.join(known)})")


def evaluate_all(models: dict[str, LoadedModel], bundle: Bundle, quantizers: Sequence[str], cache: ResultCache, *,
                 batch_size: int | None = 64, chat_template: str = "off", progress: bool = False) -> Evaluations:
    """Evaluate every (role, variant, split), reusing cached entries and caching each new one at once.

    A variant whose splits are all cached is not even quantized, so an interrupted
    run resumes where it stopped. `batch_size=None` picks it automatically (halving
    on out-of-memory); `chat_template` (auto|on|off) wraps prompts in the
    tokenizer's chat template, and is part of every cache key.
    """
    from mansu_audit.loaders import AutoBatch, chat_prompt_fn, chat_template_record

    batcher = AutoBatch(start=batch_size, evaluator=evaluate_mcq)
    code = evaluation_code_sha256()
    items = {s: mcq_items_sha256(bundle.split(s)) for s in EVAL_SPLITS}
    calibration = sha256_json(bundle.texts("retain_corpus")) if "retain_corpus" in bundle.corpus else None
    hashes = {role: model_content_sha256(m) for role, m in models.items()}
    prompting = {role: chat_template_record(m.tokenizer, chat_template) for role, m in models.items()}
    prompt_fns = {role: chat_prompt_fn(m.tokenizer, chat_template) for role, m in models.items()}
    results: dict[str, dict[str, MCQResult]] = {s: {} for s in EVAL_SPLITS}
    settings: dict[str, dict] = {}
    for variant in (FULL_PRECISION, *quantizers):
        for role, model in models.items():
            keys = {s: ResultCache.key("mcq-eval", {
                "model": hashes[role], "variant": variant, "split": s, "items": items[s], "code": code,
                "calibration": None if variant == FULL_PRECISION else calibration, "batch_size": batch_size,
                "prompting": prompting[role], "subject_line": bundle.subject_line, **runtime_record(model.model)})
                for s in EVAL_SPLITS}
            cached = {s: cache.get(k) for s, k in keys.items()}
            evaluated = model.model
            if any(v is None for v in cached.values()) and variant != FULL_PRECISION:
                _log(progress, f"quantizing {role} with {variant}")
                quantized = _quantize(model, variant, bundle)
                evaluated = quantized.model
                settings.setdefault(variant, json.loads(json.dumps(quantized.settings, default=str)))
                del quantized  # keep only the model: the per-weight records are not needed here
            for split in EVAL_SPLITS:
                key = variant_key(role, variant)
                entry = cached[split]
                if entry is None:
                    _log(progress, f"evaluating {key} on {split}")
                    res = batcher.evaluate(evaluated, model.tokenizer, bundle.split(split), split=split,
                                           prompt_fn=prompt_fns[role], subject_line=bundle.subject_line,
                                           progress=progress)
                    entry = {"result": res.to_dict(),
                             "quantizer_settings": settings.get(variant) if variant != FULL_PRECISION else None}
                    cache.put(keys[split], entry)
                else:
                    _log(progress, f"{key} on {split}: cached")
                # Always go through the stored form, so fresh and cached runs give identical bytes.
                results[split][key] = MCQResult.from_dict(json.loads(json.dumps(entry["result"])))
                if variant != FULL_PRECISION and entry.get("quantizer_settings") is not None:
                    settings.setdefault(variant, entry["quantizer_settings"])
            del evaluated  # free the quantized copy before the next one
    return Evaluations(results, settings, batcher.batch_size, batcher.peak_memory_bytes)


def _cad_from_circuits(base: LoadedModel, candidate: LoadedModel, bundle: Bundle, policy: Policy, cache: ResultCache,
                       progress: bool) -> tuple[Estimate, dict]:
    """The bundled EAP-IG + CAD on `forget_attr`, cached by both models' content."""
    from mansu_audit.circuits import compute_cad

    items = bundle.split(CAD_SPLIT)
    key = ResultCache.key("cad", {"base": model_content_sha256(base), "candidate": model_content_sha256(candidate),
                                  "items": mcq_items_sha256(items), "code": cad_code_sha256(),
                                  "B": policy.bootstrap_replicates, "seed": policy.seed, "level": policy.level,
                                  "ci_method": policy.ci_method, **runtime_record(base.model)})
    entry = cache.get(key)
    if entry is None:
        _log(progress, f"CAD (EAP-IG) on {CAD_SPLIT}")
        try:
            result = compute_cad(base.model, candidate.model, base.tokenizer, items, B=policy.bootstrap_replicates,
                                 seed=policy.seed, level=policy.level, ci_method=policy.ci_method)
        except ValueError as exc:  # e.g. no forget_attr item whose corrupt prompt matches the clean one's length
            raise InputError(f"CAD on {CAD_SPLIT} impossible: {exc} (clean and corrupt prompts must tokenise to the "
                             f"same length; refit them with mansu_audit.convert.rematch_corrupt, or use --cad skip)",
                             bundle.files.get(CAD_SPLIT)) from None
        entry = json.loads(json.dumps(result.to_dict()))
        cache.put(key, entry)
    else:
        _log(progress, "CAD: cached")
    return Estimate.from_dict(entry["cad"]), entry


def resolve_cad(cad: CadSpec, base: LoadedModel, candidate: LoadedModel, bundle: Bundle, policy: Policy,
                cache: ResultCache, progress: bool) -> tuple[Estimate | None, dict | None]:
    """Turn the `cad=` argument into (estimate for S, details for the sidecar)."""
    if cad is None:
        return None, None
    if isinstance(cad, str):
        if cad != "auto":
            raise InputError(f"unknown CAD option '{cad}' (use 'auto' or none)")
        if CAD_SPLIT not in bundle.mcq:
            _log(progress, f"benchmark has no {CAD_SPLIT} split: S not computed")
            return None, None
        return _cad_from_circuits(base, candidate, bundle, policy, cache, progress)
    if isinstance(cad, Estimate):
        return cad, {"cad": cad.to_dict(), "source": "given"}
    if isinstance(cad, np.ndarray):
        est = mean_ci(cad, B=policy.bootstrap_replicates, seed=policy.seed, level=policy.level,
                      method=policy.ci_method)
        return est, {"cad": est.to_dict(), "source": "per-item values"}
    if callable(cad):
        out = cad(base, candidate, bundle, policy)
        if out is None:
            return None, None
        if isinstance(out, Estimate):
            return out, {"cad": out.to_dict(), "source": getattr(cad, "__name__", "hook")}
        return out.cad, json.loads(json.dumps(out.to_dict()))
    raise TypeError(f"cad must be 'auto', None, an Estimate, per-item values or a callable, not {type(cad).__name__}")


def _model_record(model: LoadedModel) -> dict:
    return {"name": model.name, "path": None if model.path is None else str(Path(model.path).resolve()),
            "files": model.file_hashes(),
            "state_dict_sha256": None if model.files else state_dict_sha256(model.model),
            **({} if model.files else {"tokenizer_sha256": tokenizer_sha256(model.tokenizer)}),
            "notes": list(model.notes)}


def _per_item(evals: Evaluations) -> dict:
    out = {}
    for split, by_key in evals.results.items():
        first = next(iter(by_key.values()))
        out[split] = {"ids": list(first.ids), "answers": first.answers.tolist(),
                      "predictions": {k: r.predictions.tolist() for k, r in sorted(by_key.items())}}
    return out


def _item_view(item, result_by_key: dict[str, MCQResult], margins: dict[str, np.ndarray], index: int) -> dict:
    return {"id": item.id, "question": item.question, "choices": list(item.choices), "answer": item.answer,
            "predictions": {k: int(r.predictions[index]) for k, r in sorted(result_by_key.items())},
            "margins": {k: round(float(margins[k][index]), 6) for k in sorted(result_by_key)}}


def worst_items(evals: Evaluations, bundle: Bundle, quantizers: Sequence[str], top: int = 20) -> dict:
    """Items a reviewer should read: knowledge kept, recovered by quantization, retain lost."""
    c = variant_key(CANDIDATE, FULL_PRECISION)
    b = variant_key(BASE, FULL_PRECISION)
    forget, retain = evals.results["forget_eval"], evals.results["retain_eval"]
    f_items, r_items = bundle.split("forget_eval"), bundle.split("retain_eval")
    fm = {k: r.margin for k, r in forget.items()}
    rm = {k: r.margin for k, r in retain.items()}
    out: dict[str, list] = {}
    kept = [i for i in np.argsort(-fm[c], kind="stable") if forget[c].correct[i]][:top]
    out["forget_still_known"] = [_item_view(f_items[i], forget, fm, i) for i in kept]
    for q in quantizers:
        cq = variant_key(CANDIDATE, q)
        rec = [i for i in np.argsort(-fm[cq], kind="stable") if forget[cq].correct[i] and not forget[c].correct[i]]
        out[f"forget_recovered[{q}]"] = [_item_view(f_items[i], forget, fm, i) for i in rec[:top]]
    lost = [i for i in np.argsort(rm[c], kind="stable") if retain[b].correct[i] and not retain[c].correct[i]]
    out["retain_lost"] = [_item_view(r_items[i], retain, rm, i) for i in lost[:top]]
    return out


def json_safe(obj):
    """Plain JSON data with non-finite floats as None (certificates and sidecars are strict JSON)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def sidecar_bytes(evals: Evaluations, bundle: Bundle, quantizers: Sequence[str], cad_details: dict | None) -> bytes:
    """`results.json` beside the certificate, for the HTML report (its SHA-256 is in the body).

    - `per_item_margins[split][variant_key]`: log p(answer) - max log p(other) per
      item, aligned with `body.per_item[split].ids` (> 0 means correct);
    - `worst_items`: `forget_still_known` (candidate still right, largest margin),
      `forget_recovered[<q>]` (wrong unquantized, right under q), `retain_lost`
      (base right, candidate wrong); each item with id, question, choices, answer
      and every model's prediction and margin (hazardous text: redact in the report);
    - `cad`: the CAD details (`CADResult.to_dict()`) or null.
    """
    data = {"per_item_margins": {s: {k: np.round(r.margin, 6).tolist() for k, r in sorted(by_key.items())}
                                 for s, by_key in evals.results.items()},
            "worst_items": worst_items(evals, bundle, quantizers),
            "cad": json_safe(cad_details)}
    return (json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def build_body(assessment: Assessment, evals: Evaluations, models: dict[str, LoadedModel], bundle: Bundle,
               policy: Policy, policy_source: Path | None, quantizers: Sequence[str], cad: Estimate | None,
               sidecar: bytes, chat_template: str = "off") -> dict:
    import hashlib

    from mansu_audit.data import sha256_file
    from mansu_audit.loaders import chat_template_record

    a = assessment.to_dict()
    return {
        "suite": {"name": "mansu-audit", "version": mansu_audit.__version__, "code_sha256": suite_code_sha256()},
        "verdict": assessment.overall,
        "desiderata": a["verdicts"],
        "statistics": {**a["statistics"], "cad": None if cad is None else cad.to_dict()},
        "guard": a["guard"],
        "chance": assessment.chance,
        "policy": {"values": policy.to_dict(), "sha256": policy.sha256(),
                   "source": None if policy_source is None else str(Path(policy_source).resolve()),
                   "source_sha256": None if policy_source is None else sha256_file(Path(policy_source))},
        "models": {role: _model_record(m) for role, m in models.items()},
        "benchmark": {"name": bundle.name, "path": str(Path(bundle.root).resolve()), "files": bundle.file_hashes(),
                      "splits": {s: len(bundle.split(s)) for s in (*EVAL_SPLITS, CAD_SPLIT) if s in bundle.mcq}},
        "quantizers": {q: {"settings": evals.quantizer_settings.get(q, {})} for q in quantizers},
        "environment": library_versions(),
        "seeds": {"bootstrap": policy.seed},
        "prompting": {**chat_template_record(models[CANDIDATE].tokenizer, chat_template),
                      "subject_line": bundle.subject_line,
                      "cad": "plain prompts (CAD compares base and candidate on the same forget_attr prompts)"},
        "per_item": _per_item(evals),
        "sidecars": {RESULTS_FILE: hashlib.sha256(sidecar).hexdigest()},
    }


def as_model(spec: str | Path | LoadedModel, *, device: str = "cpu", dtype: "str | torch.dtype | None" = None,
             allow_pickle: bool = False) -> LoadedModel:
    """A LoadedModel as given, or loaded from a name/folder/file under the device plan.

    `dtype` None or "auto": float32 on CPU, bf16 on a GPU (`loaders.plan_device`).
    """
    if isinstance(spec, LoadedModel):
        return spec
    from mansu_audit.loaders import plan_device

    dtype = "auto" if dtype is None else dtype
    if device != "auto":  # resolve here; with device "auto" the loader plans device and dtype together
        dtype = plan_device(device, dtype).dtype
    return load_model(spec, device=device, dtype=dtype, allow_pickle=allow_pickle)


def certify(base: str | Path | LoadedModel, candidate: str | Path | LoadedModel,
            benchmark: str | Path | Bundle = "synthhazard", *, quantizers: Sequence[str] = DEFAULT_QUANTIZERS,
            policy: Policy | str | Path | None = None, out: str | Path | None = None, cad: CadSpec = "auto",
            cache: ResultCache | None = None, batch_size: int | None = 64, allow_pickle: bool = False,
            device: str = "cpu", dtype: str | None = None, chat_template: str = "auto",
            progress: bool = False) -> Certificate:
    """Certify `candidate` as an unlearned version of `base`; writes `out/certificate.json` if `out`.

    `policy` is a `Policy`, a YAML file or None (defaults). `cache` defaults to
    `ResultCache()` ($MANSU_CACHE_DIR or .mansu_cache/); pass `NoCache()` to disable.
    Models given by name load on `device` ("auto": the GPU when present) in `dtype`
    (None: float32 on CPU, bf16 on GPU); `batch_size=None` is chosen automatically.
    `chat_template` (auto|on|off) is recorded in the certificate's `prompting`.
    """
    policy_source = None
    if not isinstance(policy, Policy):
        policy_source = None if policy is None else Path(policy)
        policy = load_policy(policy_source)
    quantizers = tuple(dict.fromkeys(q for q in quantizers if q != FULL_PRECISION))
    check_quantizers(quantizers)
    cache = cache if cache is not None else ResultCache()
    bundle = benchmark if isinstance(benchmark, Bundle) else load_bundle(benchmark)  # cheap checks first
    for split in EVAL_SPLITS:
        bundle.split(split)
    base_m = as_model(base, device=device, dtype=dtype, allow_pickle=allow_pickle)
    cand_m = as_model(candidate, device=device, dtype=dtype, allow_pickle=allow_pickle)
    check_compatible(base_m, cand_m)
    models = {BASE: base_m, CANDIDATE: cand_m}

    evals = evaluate_all(models, bundle, quantizers, cache, batch_size=batch_size, chat_template=chat_template,
                         progress=progress)
    cad_estimate, cad_details = resolve_cad(cad, base_m, cand_m, bundle, policy, cache, progress)
    assessment = assess(evals.results["forget_eval"], evals.results["retain_eval"], quantizers, policy,
                        cad=cad_estimate)
    sidecar = sidecar_bytes(evals, bundle, quantizers, cad_details)
    body = build_body(assessment, evals, models, bundle, policy, policy_source, quantizers, cad_estimate, sidecar,
                      chat_template)
    certificate = Certificate(body, now_utc())
    if out is not None:
        certificate.write(out, sidecar)
    else:
        certificate.validate()
    return certificate
