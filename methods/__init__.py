"""The bundled unlearning methods (protocol: `mansu_audit.methods.base`).

Importing this package imports no method: it records each bundled method in the
one method registry (`mansu_audit.registry.METHODS`) as a lazy entry naming its
module, so `get_method("ga")` imports `ga.py` (and what it needs) only, and the
core never imports a method module itself. Each module registers its class with
`@register_method("name")`. A third party adds a method without editing this
package, either

* as an entry point in the group `mansu_audit.methods` (name -> class), or
* by pointing the CLI/API at a file: `--method path/to/file.py:ClassName`.

Names are case-insensitive and `_` equals `-` (`surgical_ga` is `surgical-ga`);
open-unlearning's trainer names resolve to ours (`GradAscent` -> `ga`; `GradDiff`,
`NPO`, `SimNPO` and `RMU` are our names already once case is ignored).
"""
from __future__ import annotations

from mansu_audit.registry import METHODS, available_methods, get_method, load_method_from_file

ENTRY_POINT_GROUP = METHODS.group
BUILTIN = {"ga": "ga", "surgical-ga": "surgical_ga", "graddiff": "graddiff", "npo": "npo", "simnpo": "simnpo",
           "rmu": "rmu", "sure": "sure", "gu-simnpo": "gu_simnpo", "lunar": "lunar", "mansu": "mansu",
           "lora-ga": "lora_ga", "lora-npo": "lora_npo", "saf": "saf"}
OPEN_UNLEARNING = {"GradAscent": "ga", "GradDiff": "graddiff", "NPO": "npo", "SimNPO": "simnpo", "RMU": "rmu"}

register_method = METHODS.register

for _name, _module in BUILTIN.items():
    METHODS.register(_name, lazy=f"{__name__}.{_module}")
for _alias, _name in OPEN_UNLEARNING.items():
    METHODS.alias(_alias, _name)

__all__ = ["register_method", "get_method", "available_methods", "load_method_from_file", "ENTRY_POINT_GROUP"]
