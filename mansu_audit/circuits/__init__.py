"""Circuit attribution (EAP / EAP-IG with plain hooks on Hugging Face models) and CAD."""
from mansu_audit.circuits.adapters import Adapter, adapter_for
from mansu_audit.circuits.attribution import METHODS, Attribution, attribute
from mansu_audit.circuits.cad import CADResult, cad_from_attributions, compute_cad
from mansu_audit.circuits.circuit import (Circuit, empty_circuit, faithfulness, faithfulness_details, full_circuit,
                                          random_circuit, select_circuit)

__all__ = ["Adapter", "adapter_for", "METHODS", "Attribution", "attribute", "CADResult", "cad_from_attributions",
           "compute_cad", "Circuit", "empty_circuit", "faithfulness", "faithfulness_details", "full_circuit",
           "random_circuit", "select_circuit"]
