"""Report details the certificate does not carry: permanence diagnostics and per-layer circuit mass.

The certificate holds verdicts and totals; a reviewer also wants to see *where*
an update sits. For one (base, candidate) pair this module computes
- `diagnostics.diagnose` under every quantizer (update-vs-bin-width histogram,
  code-flip fractions per layer), and
- the circuit attribution mass per layer before/after: the circuit C is selected
  from θ0's EAP-IG attribution on `forget_attr` exactly as CAD does (same
  fraction, same steps), then per layer l
  `mass_base[l] = Σ_{c∈C, layer l} |a_θ0(c)|` and
  `mass_candidate[l] = Σ_{c∈C, layer l} s_c·a_θu(c)`, with s_c = sign(a_θ0(c)).
  Summed over layers these are CAD's `circuit_mass_base` / `circuit_mass_candidate`,
  and 1 − Σ mass_candidate / Σ mass_base is CAD's point estimate.
The whole dict is cached by both models' content, the data and this code, and
written to `details.json` beside the certificate (not covered by its hash; the
report shows the file's own SHA-256).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from mansu_audit.cache import ResultCache, files_sha256, mcq_items_sha256
from mansu_audit.certify import model_content_sha256
from mansu_audit.circuits import attribute, select_circuit
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


def circuit_mass_per_layer(base_mean: np.ndarray, candidate_mean: np.ndarray, mask: np.ndarray) -> dict:
    """Per-layer circuit mass before/after from mean MLP attributions [L, F] and the circuit mask [L, F]."""
    base_mean = np.asarray(base_mean, dtype=np.float64)
    candidate_mean = np.asarray(candidate_mean, dtype=np.float64)
    signs = np.sign(base_mean)
    in_c = np.asarray(mask, dtype=bool)
    mass_base = np.where(in_c, np.abs(base_mean), 0.0).sum(axis=1)
    mass_cand = np.where(in_c, signs * candidate_mean, 0.0).sum(axis=1)
    total_base, total_cand = float(mass_base.sum()), float(mass_cand.sum())
    return {"layers": list(range(base_mean.shape[0])),
            "circuit_neurons": in_c.sum(axis=1).astype(int).tolist(),
            "circuit_mass_base": mass_base.tolist(),
            "circuit_mass_candidate": mass_cand.tolist(),
            "mlp_mass_base": np.abs(base_mean).sum(axis=1).tolist(),
            "mlp_mass_candidate": np.abs(candidate_mean).sum(axis=1).tolist(),
            "total_base": total_base, "total_candidate": total_cand,
            "cad_point": (1.0 - total_cand / total_base) if total_base > 0 else None}


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
                    progress: bool = False, circuits: bool = True) -> dict:
    """Diagnostics and per-layer circuit mass for the pair (cached by content; `circuits=False`: no
    attribution, `circuit_layers` None, as for a benchmark without forget_attr)."""

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
    if has_attr:
        items = bundle.split("forget_attr")
        base_attr = (base_attributions or BaseAttributions()).get(base, items, progress)
        cand_attr = attribute(candidate.model, candidate.tokenizer, items, steps=ATTRIBUTION_STEPS, method="eap-ig",
                              progress=progress)
        selected = select_circuit(base_attr, CIRCUIT_FRAC)
        circuit = circuit_mass_per_layer(base_attr.mlp_mean.numpy(), cand_attr.mlp_mean.numpy(),
                                         selected.neuron_mask().numpy())
        circuit.update({"circuit_frac": CIRCUIT_FRAC, "attribution_steps": ATTRIBUTION_STEPS, "method": "eap-ig",
                        "n_items": base_attr.n_items})
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
