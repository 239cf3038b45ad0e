"""Converters from real benchmarks (WMDP, MMLU, any MCQ table) to the bundle format of SPEC §5.

Python API: `convert_wmdp`, `convert_mmlu`, `convert_generic` (all take a
`ConvertOptions`), `rematch_corrupt` to fit neutral corrupt stems to a
tokenizer; `convert_lm_eval` builds a bundle from lm-eval tasks through lm-eval's
own TaskManager (module `lm_eval`). The CLI is `mansu-audit convert`.

Layers: `readers` (tables -> items) <- `options` (the pipeline: `build`) <- the thin
converters `generic`, `mmlu`, `wmdp`; `bundle` splits, corrupts and writes.
"""
from mansu_audit.convert.bundle import (DEFAULT_ATTR_FRACTION, neutral_corrupt, rematch_corrupt, split_forget,
                                        write_bundle)
from mansu_audit.convert.generic import convert_generic
from mansu_audit.convert.lm_eval import convert_lm_eval, lm_eval_benchmark
from mansu_audit.convert.mmlu import convert_mmlu
from mansu_audit.convert.options import ConvertOptions
from mansu_audit.convert.readers import FieldMap, read_mmlu, read_table
from mansu_audit.convert.wmdp import WMDP_SUBJECTS, convert_wmdp

__all__ = ["ConvertOptions", "DEFAULT_ATTR_FRACTION", "FieldMap", "WMDP_SUBJECTS", "convert_generic",
           "convert_lm_eval", "convert_mmlu", "convert_wmdp", "lm_eval_benchmark", "neutral_corrupt", "read_mmlu",
           "read_table", "rematch_corrupt", "split_forget", "write_bundle"]
