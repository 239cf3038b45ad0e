"""WMDP (Li et al. 2024; `cais/wmdp`) to a bundle: forget = one WMDP config, retain = MMLU.

Source layout (hub parquet or its JSON export): `question` (str), `choices`
(4 str), `answer` (int). The subject line is the one lm-eval's wmdp tasks use
("... about biology."), so `subject_line=True` reproduces lm-eval's prompt.
Corpora: `cais/wmdp-corpora` JSONL/parquet with a `text` column.
"""
from __future__ import annotations

from pathlib import Path

from mansu_audit.convert.options import ConvertOptions, build
from mansu_audit.convert.readers import FieldMap, read_table, rows_to_items
from mansu_audit.errors import InputError

WMDP_SUBJECTS = {"wmdp-bio": "biology", "wmdp-chem": "chemistry", "wmdp-cyber": "cybersecurity"}
WMDP_HUB_ID = "cais/wmdp"


def convert_wmdp(source: str | Path, config: str, out: str | Path, options: ConvertOptions) -> Path:
    """`mansu-audit convert wmdp`: one WMDP config as the forget set, MMLU (`retain_source`) as retain."""
    if config not in WMDP_SUBJECTS:
        raise InputError(f"unknown WMDP config '{config}' (use {', '.join(WMDP_SUBJECTS)})")
    table = read_table(source, config, "test")
    forget = rows_to_items(table, FieldMap(subject=None), config, subject=WMDP_SUBJECTS[config])
    return build(out, config, forget, table, options,
                 description=f"WMDP {config} (forget) vs MMLU (retain), converted by mansu-audit")
