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
or "skip" (the CLI's `--cad skip`) leaves S "NOT COMPUTED" (the overall verdict can then not be PASS).
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from mansu_audit._version import __version__
from mansu_audit.attest import ATTESTATION_FILE, attestation_bytes, load_private_key
from mansu_audit.batching import AutoBatch
from mansu_audit.cache import (NoCache, ResultCache, files_sha256, mcq_items_sha256, sha256_json, state_dict_sha256,
                               tokenizer_sha256)
from mansu_audit.certificate import CERTIFICATE_FILE, Certificate, RESULTS_FILE, now_utc
from mansu_audit.circuits import compute_cad
from mansu_audit.compat import check_compatible
from mansu_audit.consistency import run_stage as run_consistency_check
from mansu_audit.crosscheck import SPLIT as CROSS_SPLIT, cross_scoring_for, cross_statistics
from mansu_audit.crosscheck import not_run as cross_not_run, section as cross_section
from mansu_audit.data import Bundle, load_bundle
from mansu_audit.desiderata import (BASE, CANDIDATE, UNQUANTIZED, Assessment, assess, cad_control_from_details,
                                     per_item_record, unquantized_record, variant_key)
from mansu_audit.errors import InputError
from mansu_audit.evaluate import TRUNCATE_MODES, MCQResult, evaluate_mcq
from mansu_audit.io import json_copy, json_safe, progress_logger, sha256_file
from mansu_audit.loading import LoadedModel, load_model, plan_device
from mansu_audit.outdir import check_output_dir, publish_dir
from mansu_audit.policy import Policy, load_policy
from mansu_audit.prompts import CHAT_MODES, chat_mode_for, chat_prompt_fn, chat_template_record, scoring_key
from mansu_audit.quantizers import available_quantizers, get_quantizer, quantize_model
from mansu_audit.quantizers.gguf import artifact_record, load_artifact
from mansu_audit.loading.bnb import bnb_artifact_record, is_bnb_folder, load_bnb_artifact
from mansu_audit.loading.gptq_artifact import gptq_artifact_record, is_gptq_folder, load_gptq_artifact
from mansu_audit.loading.lora import AdapterDelta, is_adapter, read_adapter_delta
from mansu_audit.recovery import run_stage as run_recovery
from mansu_audit.stats import Estimate, mean_ci
from mansu_audit.threads import choose_threads, with_thread_policy
from mansu_audit.verdicts import cross_informative, cross_verdict

DEFAULT_QUANTIZERS = ("nf4", "gptq", "int8")
EVAL_SPLITS = ("forget_eval", "retain_eval")
CAD_SPLIT = "forget_attr"
RUN_FILE = "run.json"  # wall times, cache use, the exact command: outside the hashed body
PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("torch", "transformers", "numpy", "scipy", "bitsandbytes", "safetensors", "tokenizers", "jsonschema")

CadHook = Callable[[LoadedModel, LoadedModel, Bundle, Policy], object]
ARTIFACT_BASE = "unquantized (a quantized artifact is given for the candidate only)"
MERGED, ADAPTER_ON_QUANTIZED_BASE = "merged", "adapter-on-quantized-base"
DEPLOYMENTS = (MERGED, ADAPTER_ON_QUANTIZED_BASE)  # deployment=: how a LoRA candidate is served quantized
CadSpec = Union[str, Estimate, np.ndarray, CadHook, None]
CAD_MODES = ("auto", "skip")  # the string forms of `cad=` (the CLI's --cad): "skip" is the same as None
STAGE_MODES = ("auto", "on", "skip")  # relearn=, consistency= (None is "skip")


_log = progress_logger("certify")


def runtime_record(model) -> dict:
    """What else changes a result computed on the same weights: precision, device, torch version."""
    p = next(model.parameters())
    return {"dtype": str(p.dtype), "device": p.device.type, "torch": metadata.version("torch")}


def cad_code_sha256() -> str:
    """Hash of the code a CAD result depends on (attribution, circuits, prompts, bootstrap)."""
    paths = [*sorted((PACKAGE_DIR / "circuits").glob("*.py")), PACKAGE_DIR / "prompts.py", PACKAGE_DIR / "stats.py"]
    return files_sha256(p for p in paths if p.is_file())


def evaluation_code_sha256() -> str:
    """Hash of the code whose change alters an evaluation result (cache 'code version'): the evaluator,
    prompts, batching, quantizers, and the two loaders that build an evaluated variant from a digest-keyed
    input (the LoRA delta over a quantized base, bitsandbytes and GPTQ artifacts). Not the other loaders: a
    loaded model enters the key by its content hash."""
    paths = [PACKAGE_DIR / "evaluate.py", PACKAGE_DIR / "prompts.py", PACKAGE_DIR / "batching.py",
             PACKAGE_DIR / "loading" / "lora.py", PACKAGE_DIR / "loading" / "bnb.py",
             PACKAGE_DIR / "loading" / "gptq_artifact.py"]
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
    out = {"python": platform.python_version(), "mansu-audit": __version__}
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
    seconds: dict[str, float] = field(default_factory=dict)  # "quantize:<key>", "evaluate:<key>": wall times


def _quantize(model: LoadedModel, name: str, bundle: Bundle):
    return quantize_model(model.model, name, tokenizer=model.tokenizer, calibration=bundle)


def check_quantizers(quantizers: Sequence[str], bundle: Bundle | None = None) -> None:
    """Refuse unknown quantizer names, and calibrated ones (`needs_calibration`, e.g. gptq) when `bundle` has
    no retain_corpus to calibrate on, before any long stage runs."""
    if not quantizers:
        return

    known = available_quantizers()
    for q in quantizers:
        if q not in known:
            raise InputError(f"unknown quantizer '{q}' (available: fp32, {', '.join(known)})")
        if bundle is not None and "retain_corpus" not in bundle.corpus and \
                getattr(get_quantizer(q), "needs_calibration", False):
            raise InputError(f"quantizer '{q}' calibrates on the benchmark's retain_corpus, and "
                             f"{bundle.root / 'manifest.json'} names none")


def check_artifacts(artifacts: dict[str, str | Path], quantizers: Sequence[str]) -> dict[str, Path]:
    """Validate `{variant name: GGUF file}` of user-supplied quantized candidates before anything loads.

    A name is letters, digits, `.`, `_`, `-`; it must differ from `unquantized`/`fp32`,
    the registered quantizers and the `quantizers` asked for (a variant is named once).
    """
    import re

    taken = {UNQUANTIZED, "fp32", *available_quantizers(), *quantizers}
    out = {}
    for name, path in artifacts.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise InputError(f"quantized artifact name '{name}': use letters, digits, '.', '_', '-'")
        if name in taken:
            raise InputError(f"quantized artifact name '{name}' is already a quantizer or variant name; pick another")
        quantized_artifact_record(path)  # exists, is .gguf or a bitsandbytes/GPTQ folder, readable (one-line errors)
        out[name] = Path(path)
    return out


def quantized_artifact_record(path: str | Path) -> dict:
    """The certificate record of a quantized artifact: a GPTQ or bitsandbytes checkpoint folder, or a GGUF file."""
    if is_gptq_folder(path):
        return gptq_artifact_record(path)
    return bnb_artifact_record(path) if is_bnb_folder(path) else artifact_record(path)


def load_quantized_artifact(path: str | Path, like, record: dict | None = None) -> object:
    """The artifact's dequantized weights in a copy of `like` (`.model`, `.record`); `record`: its
    `quantized_artifact_record` when already computed in this run."""
    if is_gptq_folder(path):
        return load_gptq_artifact(path, like, record)
    return load_bnb_artifact(path, like, record) if is_bnb_folder(path) else load_artifact(path, like, record)


def batch_key(model, batch_size: int | None) -> dict:
    """What an evaluation cache key adds for the batch size: nothing for float32 weights, else the size."""
    import torch  # certify's other stages import it anyway; the module itself needs it only here

    dtype = next(model.parameters()).dtype
    return {} if dtype == torch.float32 else {"batch_size": batch_size}


def evaluate_all(models: dict[str, LoadedModel], bundle: Bundle, quantizers: Sequence[str], cache: ResultCache, *,
                 batch_size: int | None = 64, chat_template: str = "off", progress: bool = False,
                 truncate: str | None = None, artifacts: dict[str, str | Path] | None = None,
                 scoring: str = "letter", deployment: str = MERGED, adapter: AdapterDelta | None = None,
                 splits: Sequence[str] = EVAL_SPLITS) -> Evaluations:
    """Evaluate every (role, variant, split), reusing cached entries and caching each new one at once.

    A variant whose splits are all cached is not even quantized, so an interrupted
    run resumes where it stopped. `batch_size=None` picks it automatically (halving
    on out-of-memory); `chat_template` (auto|on|off) wraps prompts in the
    tokenizer's chat template, and is part of every cache key; `truncate="left"`
    cuts prompts longer than the context instead of refusing them (also keyed);
    `scoring` is the MCQ scoring mode (`prompts.SCORING_MODES`; keyed unless "letter").
    The batch size is not keyed for float32 models: it moves log-likelihoods in the last float bits only
    (measured on the CPU on `reference` and random tiny models at batch 1, 7, 64 and 420: at most 6e-6, no
    prediction changed in 1,680 item evaluations) and certificates use predictions, so runs at any batch size
    share entries. In 16-bit dtypes (GPU) kernel tiling follows the batch shape and near-tie predictions can
    flip, so there the requested batch size is keyed.
    `deployment="adapter-on-quantized-base"` (with `adapter`, the candidate's LoRA factors over the
    base): each quantized variant of the candidate is the base's quantized variant plus the adapter's
    delta kept in full precision (keyed; `merged` quantizes the candidate's merged weights).
    `splits`: the MCQ splits to evaluate (default forget_eval and retain_eval).
    """
    batcher = AutoBatch(start=batch_size, evaluator=evaluate_mcq)
    how = "" if scoring == "letter" else f" ({scoring} scoring)"  # progress lines name a non-default formulation
    code = evaluation_code_sha256()
    items = {s: mcq_items_sha256(bundle.split(s)) for s in splits}
    calibration = sha256_json(bundle.texts("retain_corpus")) if "retain_corpus" in bundle.corpus else None
    hashes = {role: model_content_sha256(m) for role, m in models.items()}
    prompting = {role: chat_template_record(m.tokenizer, chat_template) for role, m in models.items()}
    prompt_fns = {role: chat_prompt_fn(m.tokenizer, chat_template) for role, m in models.items()}
    results: dict[str, dict[str, MCQResult]] = {s: {} for s in splits}
    settings: dict[str, dict] = {}
    artifacts = dict(artifacts or {})
    if artifacts:
        for name, path in artifacts.items():  # the file's digest enters the cache keys and the certificate
            settings[name] = {**quantized_artifact_record(path), "base": ARTIFACT_BASE}
    seconds: dict[str, float] = {}
    for variant in (UNQUANTIZED, *quantizers):
        for role, model in models.items():
            started, timed = time.perf_counter(), variant_key(role, variant)
            inputs = {s: {
                "model": hashes[role], "variant": variant, "split": s, "items": items[s], "code": code,
                "calibration": None if variant == UNQUANTIZED else calibration, **batch_key(model.model, batch_size),
                "prompting": prompting[role], "subject_line": bundle.subject_line, "truncate": truncate,
                **scoring_key(scoring), **runtime_record(model.model)}
                for s in splits}
            unmerged = deployment == ADAPTER_ON_QUANTIZED_BASE and role == CANDIDATE and variant != UNQUANTIZED
            if unmerged and variant not in artifacts:
                for s in splits:
                    inputs[s]["deployment"] = deployment
            if variant in artifacts:  # base: unquantized; candidate: the artifact's weights
                for s in splits:
                    inputs[s].update(calibration=None,
                                     artifact=settings[variant]["sha256"] if role == CANDIDATE else ARTIFACT_BASE)
            keys = {s: ResultCache.key("mcq-eval", inputs[s]) for s in splits}
            cached = {s: cache.get(k, validate=_eval_entry_check(bundle.split(s))) for s, k in keys.items()}
            evaluated = model.model
            if any(v is None for v in cached.values()) and variant in artifacts:
                if role == CANDIDATE:
                    _log(progress, f"loading {role} artifact {variant} ({settings[variant]['artifact']})")
                    record = {k: v for k, v in settings[variant].items() if k != "base"}
                    evaluated = load_quantized_artifact(artifacts[variant], model.model, record).model
            elif any(v is None for v in cached.values()) and variant != UNQUANTIZED:
                _log(progress, f"quantizing {role} with {variant}" + (" (base quantized, adapter in full precision)"
                                                                      if unmerged else ""))
                quantized = _quantize(models[BASE] if unmerged else model, variant, bundle)
                evaluated = adapter.apply(quantized.model) if unmerged else quantized.model
                seconds[f"quantize:{timed}"] = round(time.perf_counter() - started, 3)
                settings.setdefault(variant, json_copy(quantized.settings, default=str))
                del quantized  # keep only the model: the per-weight records are not needed here
            for split in splits:
                key = variant_key(role, variant)
                entry = cached[split]
                if entry is None:
                    _log(progress, f"evaluating {key} on {split}{how}")
                    res = batcher.evaluate(evaluated, model.tokenizer, bundle.split(split), split=split,
                                           prompt_fn=prompt_fns[role], subject_line=bundle.subject_line,
                                           progress=progress, truncate=truncate, scoring=scoring)
                    entry = {"result": res.to_dict(),
                             "quantizer_settings": settings.get(variant) if variant != UNQUANTIZED else None}
                    cache.put(keys[split], entry, stage="mcq-eval", inputs=inputs[split])
                else:
                    _log(progress, f"{key} on {split}{how}: cached")
                # Always go through the stored form, so fresh and cached runs give identical bytes.
                results[split][key] = MCQResult.from_dict(json_copy(entry["result"]))
                if variant != UNQUANTIZED and entry.get("quantizer_settings") is not None:
                    settings.setdefault(variant, entry["quantizer_settings"])
            del evaluated  # free the quantized copy before the next one
            seconds[f"evaluate:{timed}"] = round(time.perf_counter() - started - seconds.get(f"quantize:{timed}", 0), 3)
    return Evaluations(results, settings, batcher.batch_size, batcher.peak_memory_bytes, seconds)


def _eval_entry_check(items) -> Callable[[dict], None]:
    """A cached evaluation must be of exactly these items: ids, answers, one prediction and score row each."""
    ids = [it.id for it in items]
    answers = [it.answer for it in items]
    k = np.array([len(it.choices) for it in items])

    def check(value: dict) -> None:
        r = MCQResult.from_dict(value["result"])
        if list(r.ids) != ids or r.answers.tolist() != answers:
            raise ValueError("ids or answers differ from the split's")
        if r.predictions.shape != (len(ids),) or r.logprobs.ndim != 2 or r.logprobs.shape[0] != len(ids) \
                or r.logprobs.shape[1] < k.max():
            raise ValueError("arrays of the wrong length")
        if (r.predictions < 0).any() or (r.predictions >= k).any():
            raise ValueError("a prediction out of range")
        settings = value.get("quantizer_settings")
        if settings is not None and not isinstance(settings, dict):
            raise ValueError("quantizer_settings is not an object")

    return check


def _cad_entry_check(value: dict) -> None:
    Estimate.from_dict(value["cad"])


def _cad_from_circuits(base: LoadedModel, candidate: LoadedModel, bundle: Bundle, policy: Policy, cache: ResultCache,
                       progress: bool) -> tuple[Estimate, dict]:
    """The bundled EAP-IG + CAD on `forget_attr`, cached by both models' content."""

    items = bundle.split(CAD_SPLIT)
    inputs = {"base": model_content_sha256(base), "candidate": model_content_sha256(candidate),
              "items": mcq_items_sha256(items), "code": cad_code_sha256(), "B": policy.bootstrap_replicates,
              "seed": policy.seed, "level": policy.level, "ci_method": policy.ci_method, **runtime_record(base.model)}
    key = ResultCache.key("cad", inputs)
    entry = cache.get(key, validate=_cad_entry_check)
    if entry is None:
        _log(progress, f"CAD (EAP-IG) on {CAD_SPLIT}")
        try:
            result = compute_cad(base.model, candidate.model, base.tokenizer, items, B=policy.bootstrap_replicates,
                                 seed=policy.seed, level=policy.level, ci_method=policy.ci_method)
        except ValueError as exc:  # e.g. no forget_attr item whose corrupt prompt matches the clean one's length
            raise InputError(f"CAD on {CAD_SPLIT} impossible: {exc} (clean and corrupt prompts must tokenise to the "
                             f"same length; refit them with mansu_audit.convert.rematch_corrupt, or use --cad skip)",
                             bundle.files.get(CAD_SPLIT)) from None
        entry = json_copy(result.to_dict())
        cache.put(key, entry, stage="cad", inputs=inputs)
    else:
        _log(progress, "CAD: cached")
    return Estimate.from_dict(entry["cad"]), entry


def resolve_cad(cad: CadSpec, base: LoadedModel, candidate: LoadedModel, bundle: Bundle, policy: Policy,
                cache: ResultCache, progress: bool) -> tuple[Estimate | None, dict | None]:
    """Turn the `cad=` argument into (estimate for S, details for the sidecar)."""
    check_cad(cad)
    if cad is None or (isinstance(cad, str) and cad == "skip"):
        return None, None
    if isinstance(cad, str):
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
        return out.cad, json_copy(out.to_dict())
    raise TypeError(f"cad must be 'auto', None, an Estimate, per-item values or a callable, not {type(cad).__name__}")


def check_cad(cad: CadSpec) -> None:
    """InputError for a `cad=` string other than CAD_MODES, TypeError for a value of no accepted type."""
    if isinstance(cad, str) and cad not in CAD_MODES:
        raise InputError(f"cad must be one of {', '.join(CAD_MODES)} (or None), not {cad!r}")
    if not (cad is None or isinstance(cad, (str, Estimate, np.ndarray)) or callable(cad)):
        raise TypeError(f"cad must be 'auto', 'skip', None, an Estimate, per-item values or a callable, "
                        f"not {type(cad).__name__}")


def check_stage_modes(**stages: str | None) -> None:
    """Stage arguments (`relearn=`, `consistency=`, `cross_scoring=`): each one of STAGE_MODES or None (one
    InputError naming the argument)."""
    for name, value in stages.items():
        if value is not None and value not in STAGE_MODES:
            raise InputError(f"{name} must be one of {', '.join(STAGE_MODES)} (or None), not {value!r}")


def check_arguments(*, cad: CadSpec, relearn: str | None, consistency: str | None, chat_template: str,
                    truncate: str | None, batch_size: int | None, device, dtype,
                    cross_scoring: str | None = None) -> None:
    """Every option of `certify` that needs no file, checked before any work (one InputError naming it)."""
    check_cad(cad)
    check_stage_modes(relearn=relearn, consistency=consistency, cross_scoring=cross_scoring)
    if chat_template not in CHAT_MODES:
        raise InputError(f"chat_template must be one of {', '.join(CHAT_MODES)}, not {chat_template!r}")
    if truncate is not None and truncate not in TRUNCATE_MODES:
        raise InputError(f"truncate must be one of {', '.join(TRUNCATE_MODES)} (or None), not {truncate!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise InputError(f"batch_size must be a positive integer or None (auto), not {batch_size!r}")
    plan_device(device, dtype)  # unknown or unavailable device, unknown dtype


def _model_record(model: LoadedModel) -> dict:
    return {"name": model.name, "path": None if model.path is None else str(Path(model.path).resolve()),
            "files": model.file_hashes(),
            "state_dict_sha256": None if model.files else state_dict_sha256(model.model),
            **({} if model.files else {"tokenizer_sha256": tokenizer_sha256(model.tokenizer)}),
            "notes": list(model.notes)}


def _item_view(item, result_by_key: dict[str, MCQResult], margins: dict[str, np.ndarray], index: int) -> dict:
    return {"id": item.id, "question": item.question, "choices": list(item.choices), "answer": item.answer,
            "predictions": {k: int(r.predictions[index]) for k, r in sorted(result_by_key.items())},
            "margins": {k: round(float(margins[k][index]), 6) for k in sorted(result_by_key)}}


def worst_items(evals: Evaluations, bundle: Bundle, quantizers: Sequence[str], top: int = 20) -> dict:
    """Items a reviewer should read: knowledge kept, recovered by quantization, retain lost."""
    c = variant_key(CANDIDATE, UNQUANTIZED)
    b = variant_key(BASE, UNQUANTIZED)
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
               sidecar: bytes, chat_template: str = "off", truncate: str | None = None,
               scoring: str = "letter") -> dict:
    import hashlib


    a = assessment.to_dict()
    truncation = {} if truncate is None else {"truncate": truncate, "truncated": {
        s: evals.results[s][variant_key(CANDIDATE, UNQUANTIZED)].truncated for s in EVAL_SPLITS}}
    return {
        "suite": {"name": "mansu-audit", "version": __version__, "code_sha256": suite_code_sha256()},
        "verdict": assessment.overall,
        "desiderata": a["verdicts"],
        "statistics": {**a["statistics"], "cad": None if cad is None else cad.to_dict(),
                       "cad_control": None if assessment.cad_control is None else assessment.cad_control.to_dict()},
        "guard": a["guard"],
        "required": a["required"],
        "unquantized": unquantized_record(models),
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
                      "subject_line": bundle.subject_line, "scoring": scoring,
                      "cad": "plain prompts (CAD compares base and candidate on the same forget_attr prompts)",
                      **truncation},
        "per_item": per_item_record(evals.results, assessment.relearn),
        "sidecars": {RESULTS_FILE: hashlib.sha256(sidecar).hexdigest()},
    }


@with_thread_policy
def certify(base: str | Path | LoadedModel, candidate: str | Path | LoadedModel,
            benchmark: str | Path | Bundle = "synthhazard", *, quantizers: Sequence[str] = DEFAULT_QUANTIZERS,
            policy: Policy | str | Path | None = None, out: str | Path | None = None, cad: CadSpec = "auto",
            cache: ResultCache | None = None, batch_size: int | None = None, allow_pickle: bool = False,
            device: str = "auto", dtype: str | None = "auto", chat_template: str = "auto",
            truncate: str | None = None, progress: bool = False, overwrite: bool = False, sign_key=None,
            command: str | None = None, relearn: str | None = "auto",
            oracle: str | Path | LoadedModel | None = None, consistency: str | None = "auto",
            artifacts: dict[str, str | Path] | None = None, scoring: str | None = None,
            deployment: str = MERGED, cross_scoring: str | None = "auto",
            threads: int | None = None, report: bool = False, s_ceiling: bool = True) -> Certificate:
    """Certify `candidate` as an unlearned version of `base`; writes `out/certificate.json` if `out`.

    `policy` is a `Policy`, a YAML file or None (defaults). `cache` defaults to
    no cache (the library keeps no hidden state); pass `ResultCache()` to use the CLI's cache
    ($MANSU_CACHE_DIR or ~/.cache/mansu-audit) and share its entries.
    Defaults are the CLI's, so the API and the CLI share cache entries: models given by
    name load on `device` ("auto": the GPU when present) in `dtype` ("auto": float32 on
    CPU, bf16 on GPU); `batch_size=None` (auto: 64 on CPU, 256 on GPU, halved on
    out-of-memory).
    `chat_template` (auto|on|off) is recorded in the certificate's `prompting`;
    `truncate="left"` cuts prompts longer than the models' context (recorded there with
    the count per split) instead of refusing them. `scoring` (letter | choice-text |
    choice-text-norm; None: the bundle's `prompt.scoring`, else letter) is how MCQ
    items are scored (`mansu_audit.prompts`), recorded as `prompting.scoring`.

    `out` is checked before any model loads (a non-empty folder needs `overwrite`)
    and written all at once (`outdir.publish_dir`): certificate.json, results.json,
    certificate.intoto.jsonl (in-toto Statement in a DSSE envelope, signed when
    `sign_key`, an Ed25519 private key or its PEM path, is given) and run.json (wall
    times and cache use: outside the hashed body, so identical runs give identical
    bodies). `command` (the CLI line) is recorded in the body for "Reproduce".

    K (`mansu_audit.recovery`): `relearn="auto"` runs the relearning attack and the
    probes when the bundle has a `forget_attack` split or an `oracle` is given, "on"
    always (without `forget_attack`: a seeded split of `forget_eval`), "skip"/None
    never (K NOT COMPUTED). `oracle` (a model that never learned the forget facts) gets
    the same attack as a reference point (body `recovery.oracle`, not gated).
    `consistency="auto"` reports the permutation-consistency check of base and
    candidate (body `consistency`; "skip"/None leaves it out). Their wall times go to
    run.json only.

    `cross_scoring="auto"` also scores forget_eval, unquantized base and candidate, in a
    second formulation (letter <-> choice-text on the items' cloze statements;
    `mansu_audit.crosscheck`) and F takes the worse of both formulations when the base
    knows the facts there (body `cross_scoring`); "on" requires a second formulation,
    "skip"/None leaves it out.

    `s_ceiling=False` decides S without its ceiling rule (`verdicts`), as suites before
    0.4.0 did: only `verify --recompute` of such a certificate uses it.

    `artifacts` maps a variant name to a GGUF file of the candidate made elsewhere
    (e.g. llama.cpp's Q4_K_M): it is evaluated as the candidate's quantized variant
    of that name (Q[name], G_Q[name]), the base unquantized beside it, and the file's
    SHA-256, type and tensor types are recorded under `quantizers[name].settings`.

    A bitsandbytes checkpoint folder of the candidate (config.json with a bitsandbytes
    `quantization_config`, 4-bit nf4/fp4 or 8-bit) is an artifact too: dequantized with
    bitsandbytes' own functions (`mansu_audit.loading.bnb`), the digest of its config and
    weight files recorded; so is a GPTQ checkpoint folder (GPTQModel/AutoGPTQ/optimum
    format, `mansu_audit.loading.gptq_artifact`: 2/4/8-bit, sym or not, desc_act, gptq v1/v2).

    `deployment` ("merged" | "adapter-on-quantized-base") is how a LoRA-adapter candidate
    is deployed quantized: "merged" quantizes the merged dense weights; with
    "adapter-on-quantized-base" each quantized variant is the quantized base plus the
    adapter's delta scale·B·A in full precision (as QLoRA/PEFT serve it), so an update
    smaller than a quantization bin survives. The adapter must be plain LoRA over `base`
    (checked). A certificate has one deployment mode (body `deployment`), so its Q and
    G_Q are those of that mode; certify twice to compare the two.

    `threads`: torch CPU threads for the run (None: $MANSU_THREADS, else the detected
    default; `mansu_audit.threads`), restored after it and recorded in run.json.
    `report=True` also renders `out/index.html` (the `mansu-audit report` page) once the
    certificate folder is published; it needs `out`.
    """
    import time

    started = time.perf_counter()
    if report and out is None:
        raise InputError("report=True needs an output folder (out=...) to write index.html into")
    check_arguments(cad=cad, relearn=relearn, consistency=consistency, chat_template=chat_template,
                    truncate=truncate, batch_size=batch_size, device=device, dtype=dtype,
                    cross_scoring=cross_scoring)
    if deployment not in DEPLOYMENTS:
        raise InputError(f"deployment must be one of {', '.join(DEPLOYMENTS)}, not {deployment!r}")
    cand_folder = candidate.path if isinstance(candidate, LoadedModel) else candidate
    if deployment == ADAPTER_ON_QUANTIZED_BASE and (cand_folder is None or not is_adapter(cand_folder)):
        raise InputError(f"deployment '{deployment}' needs a LoRA adapter folder (adapter_config.json) as the "
                         f"candidate; {cand_folder} is not one")
    if out is not None:
        check_output_dir(out, overwrite)
    if sign_key is not None and not hasattr(sign_key, "sign"):
        sign_key = load_private_key(sign_key)
    policy_source = None
    if not isinstance(policy, Policy):
        policy_source = None if policy is None else Path(policy)
        policy = load_policy(policy_source)
    quantizers = tuple(dict.fromkeys(q for q in quantizers if q not in (UNQUANTIZED, "fp32")))
    check_quantizers(quantizers)
    artifacts = check_artifacts(dict(artifacts or {}), quantizers)
    quantizers = (*quantizers, *artifacts)
    cache = cache if cache is not None else NoCache()
    bundle = benchmark if isinstance(benchmark, Bundle) else load_bundle(benchmark)  # cheap checks first
    for split in EVAL_SPLITS:
        bundle.split(split)
    check_quantizers(tuple(q for q in quantizers if q not in artifacts), bundle)  # calibration needs
    scoring = bundle.check_scoring(scoring)
    chat_template = chat_mode_for(chat_template, scoring)
    cross_mode, cross_reason = resolve_cross_scoring(cross_scoring, scoring, bundle)  # before any model loads
    base_m = load_model(base, device=device, dtype=dtype, allow_pickle=allow_pickle)
    cand_m = load_model(candidate, device=device, dtype=dtype, allow_pickle=allow_pickle)
    check_compatible(base_m, cand_m)
    adapter = None if deployment == MERGED else read_adapter_delta(Path(cand_folder), base_m.model, cand_m.model,
                                                                   allow_pickle)
    models = {BASE: base_m, CANDIDATE: cand_m}
    run_relearn = _stage_wanted("relearn", relearn, auto="forget_attack" in bundle.mcq or oracle is not None)
    run_consistency = _stage_wanted("consistency", consistency, auto=True)
    oracle_m = None
    if oracle is not None and run_relearn:
        oracle_m = load_model(oracle, device=device, dtype=dtype, allow_pickle=allow_pickle)

    timings = {"load": time.perf_counter() - started}
    evals = evaluate_all(models, bundle, quantizers, cache, batch_size=batch_size, chat_template=chat_template,
                         progress=progress, truncate=truncate, artifacts=artifacts, scoring=scoring,
                         deployment=deployment, adapter=adapter)
    timings["evaluate"] = time.perf_counter() - started - sum(timings.values())
    cross, cross_record = None, cross_not_run(cross_scoring, cross_reason)
    if cross_mode is not None:
        _log(progress, f"forget_eval in a second formulation: {cross_mode} scoring")
        cross_chat = chat_mode_for(chat_template, cross_mode)
        cross_evals = evaluate_all(models, bundle, (), cache, batch_size=batch_size, chat_template=cross_chat,
                                   progress=progress, truncate=truncate, scoring=cross_mode, splits=(CROSS_SPLIT,))
        by_key = cross_evals.results[CROSS_SPLIT]
        first = by_key[variant_key(BASE, UNQUANTIZED)]
        predictions = {k: r.predictions for k, r in by_key.items()}
        cross = cross_statistics(first.answers, predictions, policy)
        chance = evals.results[CROSS_SPLIT][variant_key(BASE, UNQUANTIZED)].chance  # the primary split's, as verify
        cross_record = cross_section(cross_scoring, cross_mode, chat_template_record(cand_m.tokenizer, cross_chat),
                                     first.ids, first.answers, predictions, cross,
                                     cross_informative(cross, policy, chance),
                                     cross_verdict(cross, policy, chance, cross_mode)[0])
        timings["cross_scoring"] = time.perf_counter() - started - sum(timings.values())
    cad_estimate, cad_details = resolve_cad(cad, base_m, cand_m, bundle, policy, cache, progress)
    timings["cad"] = time.perf_counter() - started - sum(timings.values())
    cad_details, cad_seconds = split_timings(cad_details)
    stage_seconds: dict[str, float] = {}
    recovery_stage, consistency_section = None, None
    if run_relearn or run_consistency:
        roles = {**models, **({} if oracle_m is None else {"oracle": oracle_m})}
        prompt_fns = {r: chat_prompt_fn(m.tokenizer, chat_template) for r, m in roles.items()}
        prompting = {r: chat_template_record(m.tokenizer, chat_template) for r, m in roles.items()}
    if run_relearn:
        recovery_stage = run_recovery(models, bundle, policy, cache, oracle=oracle_m, prompt_fns=prompt_fns,
                                      prompting=prompting, truncate=truncate, scoring=scoring,
                                      log=lambda m: _log(progress, m))
        stage_seconds.update(recovery_stage.seconds)
        timings["relearn"] = time.perf_counter() - started - sum(timings.values())
    if run_consistency:
        consistency_section, seconds = run_consistency_check(
            models, bundle, policy, cache, prompt_fns=prompt_fns, prompting=prompting, truncate=truncate,
            batch_size=batch_size, scoring=scoring, log=lambda m: _log(progress, m))
        stage_seconds.update(seconds)
        timings["consistency"] = time.perf_counter() - started - sum(timings.values())
    assessment = assess(evals.results["forget_eval"], evals.results["retain_eval"], quantizers, policy,
                        cad=cad_estimate, cad_control=cad_control_from_details(cad_details),
                        relearn=None if recovery_stage is None else recovery_stage.relearn, scoring=scoring,
                        cross=cross, cross_scoring=cross_mode or "", s_ceiling=s_ceiling)
    timings["assess"] = time.perf_counter() - started - sum(timings.values())  # paired bootstrap and verdicts
    sidecar = sidecar_bytes(evals, bundle, quantizers, cad_details)
    body = build_body(assessment, evals, models, bundle, policy, policy_source, quantizers, cad_estimate, sidecar,
                      chat_template, truncate, scoring)
    body["command"] = command
    body["deployment"] = {"mode": deployment} if adapter is None else {
        "mode": deployment, "adapter": Path(cand_folder).name, "modules": len(adapter.pairs),
        "replaced": len(adapter.replaced),
        "served": "quantized --base weights + the adapter's scale·B·A in the model dtype (not quantized)"}
    if recovery_stage is not None:
        body["recovery"] = recovery_stage.section
    if consistency_section is not None:
        body["consistency"] = consistency_section
    body["cross_scoring"] = cross_record
    certificate = Certificate(body, now_utc())
    certificate.validate()
    if out is not None:
        timings["total"] = time.perf_counter() - started
        run = {"created_utc": certificate.created_utc, "command": command, "body_sha256": certificate.body_sha256,
               "wall_seconds": {k: round(v, 3) for k, v in timings.items()},
               "cad_attribution_seconds": cad_seconds, "stage_seconds": stage_seconds,
               "batch_size": evals.batch_size, "evaluate_seconds": evals.seconds,
               "threads": choose_threads(threads).to_dict(),
               "peak_memory_bytes": evals.peak_memory_bytes, "signed": sign_key is not None}
        publish_dir(out, {CERTIFICATE_FILE: certificate.to_json().encode("utf-8"), RESULTS_FILE: sidecar,
                          ATTESTATION_FILE: attestation_bytes(body, sign_key),
                          RUN_FILE: (json.dumps(run, indent=2, sort_keys=True) + "\n").encode("utf-8")},
                    overwrite=overwrite)
        if report:
            from mansu_audit.report import render_report  # report -> details -> certify: a top-level import cycles

            render_report(out)
    return certificate


def resolve_cross_scoring(requested: str | None, scoring: str, bundle: Bundle) -> tuple[str | None, str]:
    """(the second formulation to run or None, why not), from `cross_scoring=` (`mansu_audit.crosscheck`)."""
    mode = cross_scoring_for(scoring, bundle)
    if requested == "on" and mode is None:
        raise InputError(f"cross_scoring='on': the benchmark has no second formulation for {scoring} scoring "
                         f"(letter needs a cloze statement on every {CROSS_SPLIT} item)", bundle.root)
    if not _stage_wanted("cross_scoring", requested, auto=True):
        return None, "skipped (cross_scoring=skip)"
    if mode is None:
        return None, (f"no second formulation for {scoring} scoring (letter needs a cloze statement on every "
                      f"{CROSS_SPLIT} item; a verbatim lm-eval context cannot be scored by letter)")
    return mode, ""


def _stage_wanted(name: str, value: str | None, auto: bool) -> bool:
    """"auto" -> `auto`, "on" -> True, "skip"/None -> False; anything else is an InputError."""
    if value is None or value == "skip":
        return False
    if value == "on":
        return True
    if value == "auto":
        return auto
    raise InputError(f"{name} must be 'auto', 'on' or 'skip', not {value!r}")


def split_timings(details):
    """(details without any 'seconds' field, {path: seconds}): wall times never enter hashed files."""
    found: dict[str, float] = {}

    def strip(obj, path):
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                if k == "seconds" and isinstance(v, (int, float)):
                    found[".".join(path) or "seconds"] = v
                else:
                    out[k] = strip(v, (*path, str(k)))
            return out
        if isinstance(obj, list):
            return [strip(v, path) for v in obj]
        return obj

    return (None if details is None else strip(details, ())), found
