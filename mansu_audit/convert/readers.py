"""Readers of foreign MCQ and corpus tables: local JSONL/JSON/parquet, `datasets` folders, hub ids.

The converters' first layer: it reads and maps rows, and writes nothing (the
pipeline is `convert.options.build`; each converter module is a thin call of both).

A source is a file, a folder (HF hub snapshot layout `CONFIG/SPLIT-*.parquet`,
`SPLIT.jsonl`, ... or a `datasets.save_to_disk` folder) or a hub dataset id
(only when the hub is reachable; tests never use it). Rows become `MCQItem`s
through a `FieldMap` naming which columns hold question, choices, answer and
optionally subject and id. Answers may be an index, a letter ("B") or the text
of the right choice. Every bad row is one `InputError` naming file and row.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mansu_audit.data import MCQItem
from mansu_audit.errors import InputError, first_line
from mansu_audit.io import read_jsonl_objects, sha256_file
from mansu_audit.prompts import LETTERS

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
HUB_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


@dataclass(frozen=True)
class FieldMap:
    """Source column names. `choices` may name one list column or several columns joined by '|'."""

    question: str = "question"
    choices: str = "choices"
    answer: str = "answer"
    subject: str | None = "subject"
    id: str | None = None

    @classmethod
    def parse(cls, text: str | None, default: "FieldMap | None" = None) -> "FieldMap":
        """`question=q,choices=opts,answer=label[,subject=s][,id=uid]` over the defaults."""
        base = default or cls()
        if not text:
            return base
        values = dict(question=base.question, choices=base.choices, answer=base.answer, subject=base.subject,
                      id=base.id)
        for part in text.split(","):
            key, sep, value = part.partition("=")
            key, value = key.strip(), value.strip()
            if not sep or key not in values or not value:
                raise InputError(f"bad --map entry '{part}' (expected question=COL,choices=COL,answer=COL"
                                 "[,subject=COL][,id=COL])")
            values[key] = value
        return cls(**values)


@dataclass(frozen=True)
class Table:
    """Rows read from a source, and where they came from (for errors and the manifest)."""

    rows: list[dict]
    origin: str  # what error messages name: a file, or "hub:ID[/config]:split"
    files: tuple[Path, ...]  # local files read (hashed into the manifest)

    def provenance(self) -> dict:
        return {"origin": self.origin, "files": {str(p): sha256_file(p) for p in self.files}}


# --------------------------------------------------------------------------- reading

def _read_jsonl(path: Path) -> list[dict]:

    return [obj for _, obj in read_jsonl_objects(path)]


def _read_json(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"bad JSON: {exc.msg}", path, exc.lineno) from None
    if isinstance(data, dict):  # {"data": [...]} or column-oriented {"question": [...], ...}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(data) == 1 and lists and all(isinstance(r, dict) for r in lists[0]):
            data = lists[0]
        elif lists and len(lists) == len(data) and len({len(v) for v in lists}) == 1:
            keys = list(data)
            data = [dict(zip(keys, values)) for values in zip(*data.values())]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError("expected a JSON list of objects (or JSONL)", path)
    return data


def _read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq

        return pq.read_table(str(path)).to_pylist()
    except ImportError:
        raise InputError("parquet files need the 'pyarrow' package", path) from None
    except Exception as exc:
        raise InputError(f"unreadable parquet: {first_line(exc)}", path) from None


def read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        try:
            return _read_json(path)
        except InputError:
            return _read_jsonl(path)  # JSON Lines saved with a .json suffix (HF's to_json default)
    raise InputError(f"unsupported file type '{suffix}' (use .parquet, .jsonl or .json)", path)


def _folder_files(folder: Path, config: str | None, split: str | None) -> list[Path]:
    """Data files of `split` under `folder[/config]`, in HF hub layout or flat."""
    base = folder / config if config and (folder / config).is_dir() else folder
    files = sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                   and not p.name.startswith(("dataset_info", "state", "dataset_dict")))
    if config and base is folder:
        named = [p for p in files if config in p.relative_to(folder).as_posix()]
        files = named or files
    if split:
        matching = [p for p in files if re.match(rf"^{re.escape(split)}([-_.]|$)", p.name)
                    or p.parent.name == split]
        files = matching or files
    return files


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_info.json").is_file() or (folder / "dataset_dict.json").is_file() \
        or (folder / "state.json").is_file()


def _read_saved_dataset(folder: Path, split: str | None) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise InputError("this folder was saved by `datasets`; install the 'datasets' package", folder) from None
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as exc:
        raise InputError(f"unreadable datasets folder: {first_line(exc)}", folder) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise InputError(f"no split '{split}' (has {', '.join(ds)})", folder)
        ds = ds[split]
    return ds.to_list()


def _read_hub(dataset_id: str, config: str | None, split: str) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise InputError(f"'{dataset_id}' is not a local path, and hub datasets need the 'datasets' package") \
            from None
    try:
        return datasets.load_dataset(dataset_id, config, split=split).to_list()
    except Exception as exc:
        raise InputError(f"'{dataset_id}' is not a local file or folder and could not be loaded from the hub"
                         f" ({type(exc).__name__}: {first_line(exc)})") from None


def read_table(source: str | Path, config: str | None = None, split: str | None = "test") -> Table:
    """Rows of a file, folder, `datasets` folder or hub dataset id."""
    path = Path(source)
    if path.is_file():
        return Table(read_file(path), str(path), (path,))
    if path.is_dir():
        if _is_saved_dataset(path) or (config and _is_saved_dataset(path / config)):
            folder = path / config if config and _is_saved_dataset(path / config) else path
            files = tuple(sorted(p for p in folder.rglob("*") if p.is_file()))
            return Table(_read_saved_dataset(folder, split), str(folder), files)
        files = _folder_files(path, config, split)
        if not files:
            raise InputError(f"no .parquet/.jsonl/.json data files (config {config!r}, split {split!r})", path)
        rows: list[dict] = []
        for f in files:
            rows.extend(read_file(f))
        return Table(rows, str(files[0] if len(files) == 1 else path), tuple(files))
    if HUB_DATASET.match(str(source)) and "/" in str(source):
        rows = _read_hub(str(source), config, split or "test")
        return Table(rows, f"hub:{source}{'/' + config if config else ''}:{split}", ())
    raise InputError("source not found (not a file, a folder, or an owner/name hub dataset id)", path)


# --------------------------------------------------------------------------- rows -> items

def _answer_index(value, choices: list[str], where: str, row: int) -> int:
    if isinstance(value, bool):
        raise InputError(f"answer must be an index, a letter or a choice, got {value!r}", where, row)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        index = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            index = int(text)
        elif len(text) == 1 and text.upper() in LETTERS[:len(choices)]:
            index = LETTERS.index(text.upper())
        elif text in choices:
            index = choices.index(text)
        else:
            raise InputError(f"answer {value!r} is not an index, a letter or one of the choices", where, row)
    else:
        raise InputError(f"answer must be an index, a letter or a choice, got {type(value).__name__}", where, row)
    if not 0 <= index < len(choices):
        raise InputError(f"answer {index} out of range for {len(choices)} choices", where, row)
    return index


def _choices(row: dict, fields: FieldMap, where: str, lineno: int) -> list[str]:
    names = fields.choices.split("|")
    if len(names) > 1:
        missing = [n for n in names if n not in row]
        if missing:
            raise InputError(f"missing choice column '{missing[0]}'", where, lineno)
        values = [row[n] for n in names]
    else:
        values = row[fields.choices]
        if isinstance(values, dict) and "text" in values:  # e.g. {"label": [...], "text": [...]}
            values = values["text"]
        if not isinstance(values, (list, tuple)):
            raise InputError(f"'{fields.choices}' must be a list of strings", where, lineno)
    values = [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in values]
    if len(values) < 2 or not all(isinstance(v, str) for v in values):
        raise InputError(f"'{fields.choices}' must hold at least two strings", where, lineno)
    return list(values)


def rows_to_items(table: Table, fields: FieldMap, id_prefix: str, subject: str | None = None) -> list[MCQItem]:
    """MCQ items from rows; ids `{id_prefix}-{row:05d}` unless the map names an id column.

    Rows are numbered from 1 in error messages (the line of a JSONL file).
    """
    items: list[MCQItem] = []
    seen: dict[str, int] = {}
    for lineno, row in enumerate(table.rows, start=1):
        for key in (fields.question, fields.answer):
            if key not in row:
                raise InputError(f"missing column '{key}' (columns: {', '.join(map(str, row))})", table.origin,
                                 lineno)
        if "|" not in fields.choices and fields.choices not in row:
            raise InputError(f"missing column '{fields.choices}' (columns: {', '.join(map(str, row))})",
                             table.origin, lineno)
        question = row[fields.question]
        if not isinstance(question, str) or not question.strip():
            raise InputError(f"'{fields.question}' must be a non-empty string", table.origin, lineno)
        choices = _choices(row, fields, table.origin, lineno)
        answer = _answer_index(row[fields.answer], choices, table.origin, lineno)
        item_subject = subject
        if item_subject is None and fields.subject and row.get(fields.subject) is not None:
            item_subject = str(row[fields.subject])
        item_id = f"{id_prefix}-{lineno - 1:05d}"
        if fields.id:
            if row.get(fields.id) is None:
                raise InputError(f"missing id column '{fields.id}'", table.origin, lineno)
            item_id = f"{id_prefix}-{row[fields.id]}"
        if item_id in seen:
            raise InputError(f"duplicate id '{item_id}' (first in row {seen[item_id]})", table.origin, lineno)
        seen[item_id] = lineno
        items.append(MCQItem(item_id, question.strip(), tuple(choices), answer, item_subject))
    if not items:
        raise InputError("source has no rows", table.origin)
    return items


def read_corpus(source: str | Path, text_field: str = "text", config: str | None = None,
                split: str | None = "train", max_docs: int | None = None) -> tuple[list[str], Table]:
    """Non-empty texts of a corpus source (WMDP corpora: JSONL or parquet with a `text` column)."""
    table = read_table(source, config, split)
    texts: list[str] = []
    for lineno, row in enumerate(table.rows, start=1):
        if text_field not in row:
            raise InputError(f"missing column '{text_field}' (use --corpus-field)", table.origin, lineno)
        value = row[text_field]
        if not isinstance(value, str):
            raise InputError(f"'{text_field}' must be a string", table.origin, lineno)
        if value.strip():
            texts.append(value)
        if max_docs is not None and len(texts) >= max_docs:
            break
    if not texts:
        raise InputError("corpus has no non-empty texts", table.origin)
    return texts, table


def filter_subjects(items: Iterable[MCQItem], subjects: tuple[str, ...] | None, where: str) -> list[MCQItem]:
    items = list(items)
    if not subjects:
        return items
    known = {it.subject for it in items}
    unknown = [s for s in subjects if s not in known]
    if unknown:
        raise InputError(f"subject '{unknown[0]}' not in the source (has {len(known)} subjects, e.g. "
                         f"{', '.join(sorted(str(k) for k in known)[:5])})", where)
    wanted = set(subjects)
    return [it for it in items if it.subject in wanted]


def read_mmlu(source: str | Path, config: str | None = "all", split: str = "test",
              subjects: tuple[str, ...] | None = None, fields: FieldMap | None = None,
              id_prefix: str = "mmlu") -> tuple[list[MCQItem], Table]:
    """MMLU items (optionally only `subjects`) and the table they came from.

    MMLU layout (hub parquet `all/test-*.parquet` or its JSON export): `question`,
    `subject`, `choices` (4 str), `answer` (int); it is also the usual retain set of
    the other converters (`--retain-source`)."""
    table = read_table(source, config, split)
    items = rows_to_items(table, fields or FieldMap(), id_prefix)
    return filter_subjects(items, subjects, table.origin), table
