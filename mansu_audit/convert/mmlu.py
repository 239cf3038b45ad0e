"""MMLU (`cais/mmlu`) to a bundle: forget = chosen subjects, retain = the others (or `retain_source`).

Source layout (hub parquet `all/test-*.parquet` or its JSON export):
`question`, `subject`, `choices` (4 str), `answer` (int). MMLU is also the
usual retain set of other converters (`--retain-source`), read by `readers.read_mmlu`.
"""
from __future__ import annotations

from pathlib import Path

from mansu_audit.convert.options import ConvertOptions, build
from mansu_audit.convert.readers import FieldMap, filter_subjects, read_mmlu
from mansu_audit.data import MCQItem
from mansu_audit.errors import InputError

MMLU_HUB_ID = "cais/mmlu"


def convert_mmlu(source: str | Path, forget_subjects: tuple[str, ...], out: str | Path, options: ConvertOptions,
                 config: str | None = "all", split: str = "test") -> Path:
    """`mansu-audit convert mmlu`: some MMLU subjects as the forget set, the rest (or `retain_source`) as retain."""
    if not forget_subjects:
        raise InputError("convert mmlu needs --forget-subjects (e.g. college_biology,virology)")
    items, table = read_mmlu(source, config, split, fields=FieldMap.parse(options.map_spec))
    forget = filter_subjects(items, forget_subjects, table.origin)
    if options.retain_source is None:
        wanted = set(options.retain_subjects or ()) or {it.subject for it in items} - set(forget_subjects)
        retain = [MCQItem(f"retain-{it.id}", it.question, it.choices, it.answer, it.subject)
                  for it in items if it.subject in wanted and it.subject not in forget_subjects]
        if not retain:
            raise InputError("no retain items left (every subject is a forget subject)", table.origin)
        return build(out, "mmlu-" + "+".join(forget_subjects), forget, table, options, retain=retain,
                     description=f"MMLU {', '.join(forget_subjects)} (forget) vs other MMLU subjects (retain)")
    return build(out, "mmlu-" + "+".join(forget_subjects), forget, table, options,
                 description=f"MMLU {', '.join(forget_subjects)} (forget) vs {options.retain_source} (retain)")
