"""`mansu-audit convert jsonl|parquet|hf`: any MCQ table, mapped by `--map`, to a bundle.

A thin converter: `readers.read_table` + `readers.rows_to_items`, then the shared
pipeline `options.build` (retain set, corpora, splits, corrupt stems, writing).
"""
from __future__ import annotations

from pathlib import Path

from mansu_audit.convert.options import ConvertOptions, build
from mansu_audit.convert.readers import FieldMap, read_table, rows_to_items


def convert_generic(source: str | Path, out: str | Path, options: ConvertOptions, *, config: str | None = None,
                    split: str | None = "test", subject: str | None = None) -> Path:
    """`mansu-audit convert jsonl|parquet|hf`: any MCQ table through `options.map_spec`."""
    table = read_table(source, config, split)
    name = options.name or (Path(str(source)).stem if Path(str(source)).exists() else str(source).split("/")[-1])
    forget = rows_to_items(table, FieldMap.parse(options.map_spec), "forget", subject=subject)
    return build(out, name, forget, table, options, description=f"{source} (forget), converted by mansu-audit")
