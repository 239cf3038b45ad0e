"""Benchmark bundles (SPEC §5): loading and validation.

A bundle is a folder with `manifest.json` naming its splits. MCQ splits hold
`{"id", "question", "choices", "answer", "subject"?}` objects, one per line
(extra keys are kept in `MCQItem.extra`, e.g. `corrupt` on `forget_attr`; the
optional strings `cloze`, `context` and `target_delimiter` set the choice-text
context, see `prompts.item_request`);
corpus splits hold `{"id", "text"}`. Every problem is reported as one
`InputError` naming the file and line.

Optional training/attack splits (manifest version 2, all MCQ): `forget_train`
and `retain_train` (items a method may train or tune on) and `forget_attack`
(items the K relearning attack fine-tunes on, `mansu_audit.recovery`). They must
be about other facts than every evaluation split: an item sharing an id or an
identical question (same text after whitespace normalisation, case-insensitive)
with `forget_eval`, `retain_eval` or `forget_attr` is refused, since a method or an
attack trained on it would be trained on an evaluated fact. Bundles without them
load as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mansu_audit.errors import InputError
from mansu_audit.io import read_json, read_jsonl_objects, sha256_file
from mansu_audit.resources import bundled_data_dir

MCQ_SPLITS = ("forget_eval", "retain_eval", "forget_attr")
TRAIN_SPLITS = ("forget_train", "retain_train", "forget_attack")  # optional; never evaluated by F/R/Q/S
CORPUS_SPLITS = ("forget_corpus", "retain_corpus")
REQUIRED_SPLITS = ("forget_eval", "retain_eval")
MAX_CHOICES = 26  # answer letters A-Z (prompts.LETTERS)
BUNDLED_DATA = bundled_data_dir()
BUNDLED_BENCHMARKS = {"synthhazard": BUNDLED_DATA / "synthhazard"}
LM_EVAL_PREFIX = "lm-eval:"  # --benchmark lm-eval:FORGET,RETAIN (resolve_benchmark)


@dataclass(frozen=True)
class MCQItem:
    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def corrupt(self) -> str | None:
        """Corrupted question (key entity swapped) for circuit attribution, if any."""
        return self.extra.get("corrupt")


@dataclass(frozen=True)
class CorpusItem:
    id: str
    text: str


@dataclass(frozen=True)
class Bundle:
    """A loaded benchmark. `files` maps split name to its file (for hashing)."""

    name: str
    root: Path
    mcq: dict[str, tuple[MCQItem, ...]]
    corpus: dict[str, tuple[CorpusItem, ...]]
    files: dict[str, Path]
    manifest: dict

    def split(self, name: str) -> tuple[MCQItem, ...]:
        if name not in self.mcq:
            raise InputError(f"benchmark has no MCQ split '{name}'", self.root / "manifest.json")
        return self.mcq[name]

    def texts(self, name: str) -> list[str]:
        if name not in self.corpus:
            raise InputError(f"benchmark has no corpus split '{name}'", self.root / "manifest.json")
        return [c.text for c in self.corpus[name]]

    @property
    def subject_line(self) -> bool:
        """Whether MCQ prompts open with lm-eval's subject line (manifest `prompt.subject_line`; WMDP/MMLU bundles)."""
        prompt = self.manifest.get("prompt") or {}
        return bool(prompt.get("subject_line", False)) if isinstance(prompt, dict) else False

    @property
    def default_scoring(self) -> str:
        """The bundle's scoring mode (manifest `prompt.scoring`; `convert lm-eval` writes choice-text), else letter."""
        prompt = self.manifest.get("prompt") or {}
        scoring = prompt.get("scoring", "letter") if isinstance(prompt, dict) else "letter"
        return scoring if isinstance(scoring, str) else "letter"

    def check_scoring(self, scoring: str | None) -> str:
        """`scoring`, or the bundle's default when None; one line when the mode cannot score these items."""
        from mansu_audit.prompts import check_scoring

        scoring = check_scoring(scoring or self.default_scoring)
        if scoring == "letter":
            for name, items in self.mcq.items():
                verbatim = next((it for it in items if "context" in it.extra), None)
                if verbatim is not None:
                    raise InputError(f"split '{name}' item '{verbatim.id}' carries a verbatim lm-eval context: "
                                     f"score with --scoring choice-text or choice-text-norm, not letter",
                                     self.files.get(name, self.root))
        return scoring

    def file_hashes(self) -> dict[str, str]:
        """SHA-256 of the manifest and every split file, by path relative to the bundle."""
        root = Path(self.root).resolve()  # split paths are resolved; a relative root must be too
        paths = [root / "manifest.json", *(Path(p).resolve() for p in self.files.values())]
        return {str(p.relative_to(root)): sha256_file(p) for p in sorted(set(paths))}


def resolve_benchmark(name_or_path: str | Path) -> Path:
    """A bundled benchmark name ("synthhazard"), a bundle folder, or lm-eval tasks
    `lm-eval:FORGET,RETAIN[:include_path=DIR][:limit=N][:num_fewshot=K][:fewshot_seed=S]`, converted now
    into the result cache's `lm-eval-bundles/` folder (`mansu_audit.convert.lm_eval.lm_eval_benchmark`)."""
    if str(name_or_path).startswith(LM_EVAL_PREFIX):
        from mansu_audit.convert.lm_eval import lm_eval_benchmark  # convert imports this module

        return lm_eval_benchmark(str(name_or_path))
    if str(name_or_path) in BUNDLED_BENCHMARKS:
        return BUNDLED_BENCHMARKS[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_dir():
        raise InputError("no such benchmark (not a bundled name and not a folder)", path)
    return path


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise InputError("split file not found", path)
    rows = read_jsonl_objects(path)
    if not rows:
        raise InputError("split is empty", path)
    return rows


def _check_keys(obj: dict, keys: dict[str, type], path: Path, lineno: int) -> None:
    for key, typ in keys.items():
        if key not in obj:
            raise InputError(f"missing key '{key}'", path, lineno)
        if not isinstance(obj[key], typ) or isinstance(obj[key], bool):
            raise InputError(f"key '{key}' must be {typ.__name__}, got {type(obj[key]).__name__}", path, lineno)


def parse_mcq(path: Path) -> tuple[MCQItem, ...]:
    items, seen = [], {}
    for lineno, obj in _read_jsonl(path):
        _check_keys(obj, {"id": str, "question": str, "choices": list, "answer": int}, path, lineno)
        choices = obj["choices"]
        if not obj["question"].strip():
            raise InputError("'question' is empty", path, lineno)
        if len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise InputError("'choices' must be a list of at least two strings", path, lineno)
        if len(choices) > MAX_CHOICES:
            raise InputError(f"{len(choices)} choices: at most {MAX_CHOICES} (answer letters A-Z)", path, lineno)
        if not 0 <= obj["answer"] < len(choices):
            raise InputError(f"answer {obj['answer']} out of range for {len(choices)} choices", path, lineno)
        if obj["id"] in seen:
            raise InputError(f"duplicate id '{obj['id']}' (first on line {seen[obj['id']]})", path, lineno)
        seen[obj["id"]] = lineno
        subject = obj.get("subject")
        if subject is not None and not isinstance(subject, str):
            raise InputError("'subject' must be a string", path, lineno)
        for key in ("context", "target_delimiter", "cloze"):  # choice-text contexts (prompts.item_request)
            if key in obj and not isinstance(obj[key], str):
                raise InputError(f"'{key}' must be a string", path, lineno)
        extra = {k: v for k, v in obj.items() if k not in ("id", "question", "choices", "answer", "subject")}
        items.append(MCQItem(obj["id"], obj["question"], tuple(choices), obj["answer"], subject, extra))
    return tuple(items)


def parse_corpus(path: Path) -> tuple[CorpusItem, ...]:
    items, seen = [], {}
    for lineno, obj in _read_jsonl(path):
        _check_keys(obj, {"id": str, "text": str}, path, lineno)
        if obj["id"] in seen:
            raise InputError(f"duplicate id '{obj['id']}' (first on line {seen[obj['id']]})", path, lineno)
        seen[obj["id"]] = lineno
        items.append(CorpusItem(obj["id"], obj["text"]))
    return tuple(items)


def load_bundle(name_or_path: str | Path) -> Bundle:
    """Load and validate a bundle; raises `InputError` naming the file and line."""
    root = resolve_benchmark(name_or_path)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise InputError("benchmark folder has no manifest.json", root)
    manifest = read_json(manifest_path)
    splits = manifest.get("splits") if isinstance(manifest, dict) else None
    if not isinstance(splits, dict):
        raise InputError("manifest needs a 'splits' object", manifest_path)
    for required in REQUIRED_SPLITS:
        if required not in splits:
            raise InputError(f"manifest names no '{required}' split", manifest_path)

    mcq: dict[str, tuple[MCQItem, ...]] = {}
    corpus: dict[str, tuple[CorpusItem, ...]] = {}
    files: dict[str, Path] = {}
    for name, spec in splits.items():
        rel = spec.get("path") if isinstance(spec, dict) else spec
        if not isinstance(rel, str) or not rel or "\0" in rel:
            raise InputError(f"split '{name}' needs a 'path'", manifest_path)
        path = (root / rel).resolve()
        if root.resolve() not in path.parents:
            raise InputError(f"split '{name}' points outside the bundle", manifest_path)
        kind = spec.get("kind") if isinstance(spec, dict) else None
        kind = kind or ("corpus" if name in CORPUS_SPLITS else "mcq")
        if name in (*MCQ_SPLITS, *TRAIN_SPLITS) and kind != "mcq":
            raise InputError(f"split '{name}' must be of kind 'mcq', not '{kind}'", manifest_path)
        files[name] = path
        if kind == "corpus":
            corpus[name] = parse_corpus(path)
        elif kind == "mcq":
            mcq[name] = parse_mcq(path)
        else:
            raise InputError(f"split '{name}' has unknown kind '{kind}'", manifest_path)

    _check_disjoint(mcq, files)
    _check_training_disjoint(mcq, files)
    return Bundle(str(manifest.get("name", root.name)), root, mcq, corpus, files, manifest)


def _check_disjoint(mcq: dict[str, tuple[MCQItem, ...]], files: dict[str, Path]) -> None:
    """Items used for attribution must not be evaluated, or CAD and F would share data."""
    names = [n for n in MCQ_SPLITS if n in mcq]
    for i, a in enumerate(names):
        ids_a = {it.id for it in mcq[a]}
        for b in names[i + 1:]:
            for lineno, it in enumerate(mcq[b], start=1):
                if it.id in ids_a:
                    raise InputError(f"id '{it.id}' also appears in split '{a}' (splits must not overlap)",
                                     files[b], lineno)


def _question_key(question: str) -> str:
    return " ".join(question.split()).casefold()


def _check_training_disjoint(mcq: dict[str, tuple[MCQItem, ...]], files: dict[str, Path]) -> None:
    """Training/attack splits share no id with any MCQ split and no question with an evaluation split."""
    evals = [n for n in MCQ_SPLITS if n in mcq]
    trains = [n for n in TRAIN_SPLITS if n in mcq]
    ids = {}
    questions = {}
    for name in evals:
        for it in mcq[name]:
            ids.setdefault(it.id, name)
            questions.setdefault(_question_key(it.question), name)
    for name in trains:
        for lineno, it in enumerate(mcq[name], start=1):
            if it.id in ids:
                raise InputError(f"id '{it.id}' also appears in split '{ids[it.id]}' (training and attack splits "
                                 f"must not overlap any other split)", files[name], lineno)
            if _question_key(it.question) in questions:
                raise InputError(f"question of '{it.id}' also appears in evaluation split "
                                 f"'{questions[_question_key(it.question)]}' (training and attack splits must ask "
                                 f"about other facts)", files[name], lineno)
            ids[it.id] = name
