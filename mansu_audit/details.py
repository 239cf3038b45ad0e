"""Report details the certificate does not carry: permanence diagnostics and per-layer circuit mass.

The certificate holds verdicts and totals; a reviewer also wants to see *where*
an update sits. For one (base, candidate) pair this module computes
- `diagnostics.diagnose` under every quantizer (update-vs-bin-width histogram,
  code-flip fractions per layer), and
- the circuit attribution mass per layer before/after: the circuit C is selected
  from θ0's EAP-IG attribution on `forget_attr` exactly as CAD does (same
  fraction, same steps), then per layer l
  `mass_base[l] = Σ_{c∈C, layer l} |a_θ0(c)|` and
  `mass_candidate[l] = Σ_{c∈C, layer l} s_c·a_θu(c)`, with s_c = sign(a_θ0(c))
  (`circuits.cad.circuit_mass_per_layer`). Summed over layers these are CAD's
  `circuit_mass_base` / `circuit_mass_candidate`, and 1 − Σ mass_candidate / Σ
  mass_base is CAD's point estimate. When the certificate's CAD ran (the usual
  case), its `circuit_layers` are these numbers and are taken from it (`cad_details`):
  the attributions are not computed twice. Otherwise both models are attributed here.
The whole dict is cached by both models' content, the data and this code, and
written to `details.json` beside the certificate (not covered by its hash; the
report shows the file's own SHA-256).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from mansu_audit.cache import ResultCache, files_sha256, mcq_items_sha256
from mansu_audit.certify import model_content_sha256
from mansu_audit.circuits import attribute, select_circuit
from mansu_audit.circuits.cad import circuit_layers_from_attributions, circuit_mass_per_layer
from mansu_audit.data import Bundle
from mansu_audit.diagnostics import diagnose
from mansu_audit.io import json_copy, read_json_object, sha256_file, write_json
from mansu_audit.loading import LoadedModel

DETAILS_FILE = "details.json"
CIRCUIT_FRAC = 0.01  # the same defaults as `circuits.compute_cad` (and so as S in the certificate)
ATTRIBUTION_STEPS = 5
PACKAGE_DIR = Path(__file__).resolve().parent


def details_code_sha256() -> str:
    paths = [PACKAGE_DIR / "details.py", PACKAGE_DIR / "diagnostics.py", *sorted((PACKAGE_DIR / "circuits").glob("*.py")),
             *sorted((PACKAGE_DIR / "quantizers").glob("*.py"))]
    return files_sha256(p for p in paths if p.is_file())


class BaseAttributions:
    """θ0's attribution, computed once per process and reused for every candidate."""

    def __init__(self):
        self._by_model: dict[int, object] = {}

    def get(self, base: LoadedModel, items, progress: bool):
        key = id(base.model)
        if key not in self._by_model:
            self._by_model[key] = attribute(base.model, base.tokenizer, items, steps=ATTRIBUTION_STEPS,
                                            method="eap-ig", progress=progress)
        return self._by_model[key]


def compute_details(base: LoadedModel, candidate: LoadedModel, bundle: Bundle, quantizers: Sequence[str],
                    cache: ResultCache, *, base_attributions: BaseAttributions | None = None,
                    progress: bool = False, circuits: bool = True, cad_details: Mapping | None = None) -> dict:
    """Diagnostics and per-layer circuit mass for the pair (cached by content; `circuits=False`: no
    attribution, `circuit_layers` None, as for a benchmark without forget_attr). `cad_details`: the
    certificate's CAD record (results.json "cad"); its `circuit_layers` are used instead of attributing again."""

    has_attr = circuits and "forget_attr" in bundle.mcq
    inputs = {"base": model_content_sha256(base), "candidate": model_content_sha256(candidate),
              "quantizers": list(quantizers), "code": details_code_sha256(),
              "items": mcq_items_sha256(bundle.split("forget_attr")) if has_attr else None}
    key = ResultCache.key("report-details", inputs)
    entry = cache.get(key, validate=lambda v: (v["diagnosis"], v["circuit_layers"]))
    if entry is not None:
        return entry
    diagnosis = diagnose(base.model, candidate.model, list(quantizers), base_name=base.name,
                         candidate_name=candidate.name).to_dict()
    circuit = None
    from_cad = (cad_details or {}).get("circuit_layers")
    if has_attr and from_cad is not None:
        circuit = {**from_cad, "circuit_frac": CIRCUIT_FRAC, "attribution_steps": ATTRIBUTION_STEPS,
                   "method": "eap-ig", "n_items": int(cad_details["n_items"])}
    elif has_attr:
        items = bundle.split("forget_attr")
        base_attr = (base_attributions or BaseAttributions()).get(base, items, progress)
        cand_attr = attribute(candidate.model, candidate.tokenizer, items, steps=ATTRIBUTION_STEPS, method="eap-ig",
                              progress=progress)
        circuit = circuit_layers_from_attributions(base_attr, cand_attr, select_circuit(base_attr, CIRCUIT_FRAC))
        circuit.update({"circuit_frac": CIRCUIT_FRAC, "attribution_steps": ATTRIBUTION_STEPS, "method": "eap-ig",
                        "n_items": len(set(base_attr.item_ids) & set(cand_attr.item_ids))})
    entry = json_copy({"diagnosis": diagnosis, "circuit_layers": circuit})
    cache.put(key, entry, stage="report-details", inputs=inputs)
    return entry


def write_details(out_dir: str | Path, details: dict, run: dict | None = None) -> Path:
    """Write `details.json` (diagnostics, circuit mass per layer, the unlearning run record) atomically."""
    path = Path(out_dir) / DETAILS_FILE
    write_json(path, {**details, "run": run})
    return path


def read_details(out_dir: str | Path) -> dict | None:
    path = Path(out_dir) / DETAILS_FILE
    return read_json_object(path, "details file") if path.is_file() else None


def details_sha256(out_dir: str | Path) -> str | None:
    path = Path(out_dir) / DETAILS_FILE
    return sha256_file(path) if path.is_file() else None


__all__ = ["DETAILS_FILE", "compute_details", "write_details", "read_details", "circuit_mass_per_layer",
           "BaseAttributions"]
