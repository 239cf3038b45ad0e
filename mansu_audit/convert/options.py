"""The converters' pipeline: options shared by every converter and the step they all end with (`build`).

Layering: `readers` (read and map rows) <- this module (retain set, corpora,
splits, corrupt stems, atomic write via `bundle`) <- the thin converters
(`generic`, `mmlu`, `wmdp`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mansu_audit.convert.bundle import DEFAULT_ATTR_FRACTION, DEFAULT_SEED, assemble, check_out_dir, subsample
from mansu_audit.convert.readers import FieldMap, Table, read_corpus, read_mmlu
from mansu_audit.data import MCQItem
from mansu_audit.errors import InputError
from mansu_audit.loading import load_tokenizer


@dataclass(frozen=True)
class ConvertOptions:
    """Everything but the forget source. `retain_*` default to MMLU's layout (`cais/mmlu`, config `all`)."""

    map_spec: str | None = None
    retain_source: str | Path | None = None
    retain_config: str | None = "all"
    retain_split: str = "test"
    retain_subjects: tuple[str, ...] | None = None
    retain_map: str | None = None
    retain_max: int | None = None
    forget_corpus: str | Path | None = None
    retain_corpus: str | Path | None = None
    corpus_field: str = "text"
    corpus_max_docs: int | None = None
    attr_fraction: float = DEFAULT_ATTR_FRACTION
    attr_max: int | None = None
    seed: int = DEFAULT_SEED
    tokenizer: str | None = None  # model spec whose tokenizer length-matches the neutral stems
    name: str | None = None
    overwrite: bool = False


def read_retain(options: ConvertOptions) -> tuple[list[MCQItem], Table]:
    if options.retain_source is None:
        raise InputError("a retain benchmark is needed: pass --retain-source (MMLU parquet/JSON, a folder, "
                         "or the hub id cais/mmlu)")
    items, table = read_mmlu(options.retain_source, options.retain_config, options.retain_split,
                             options.retain_subjects, FieldMap.parse(options.retain_map), id_prefix="retain")
    return subsample(items, options.retain_max, options.seed), table


def build(out: str | Path, name: str, forget: Sequence[MCQItem], forget_table: Table, options: ConvertOptions, *,
          retain: Sequence[MCQItem] | None = None, description: str = "") -> Path:
    """Read retain data and corpora, then split, corrupt and write the bundle (see `bundle.assemble`)."""
    check_out_dir(Path(out), options.overwrite)
    provenance = {"forget": forget_table.provenance()}
    if retain is None:
        retain, retain_table = read_retain(options)
        provenance["retain"] = retain_table.provenance()
    corpora: dict[str, list[str]] = {}
    for split, src in (("forget_corpus", options.forget_corpus), ("retain_corpus", options.retain_corpus)):
        if src is not None:
            texts, table = read_corpus(src, options.corpus_field, max_docs=options.corpus_max_docs)
            corpora[split] = texts
            provenance[split] = table.provenance()
    tokenizer = None
    if options.tokenizer is not None:
        tokenizer = load_tokenizer(options.tokenizer)
    return assemble(out, options.name or name, forget, retain, attr_fraction=options.attr_fraction,
                    attr_max=options.attr_max, seed=options.seed, tokenizer=tokenizer,
                    tokenizer_name=None if options.tokenizer is None else str(options.tokenizer),
                    corpora=corpora, provenance=provenance, description=description, overwrite=options.overwrite)
