"""lm-eval tasks as benchmark bundles: `convert lm-eval` and `--benchmark lm-eval:FORGET,RETAIN`.

Contract. Every doc of a task's evaluation split (the first `limit` with
`limit`) becomes one MCQ item whose prompt is exactly lm-eval's: the tasks are
loaded through lm-eval's own `TaskManager`, configured as `simple_evaluate`
configures them (`num_fewshot` override unless the task's config pins 0, the
few-shot sampler seeded with `fewshot_seed`, default 1234 as lm-eval's
`fewshot_random_seed`), and the requests are built by the task itself
(`build_all_requests`, i.e. `fewshot_context` = description + few-shot examples
+ `doc_to_text`). Each item holds:

- `context`: the request's context string, verbatim;
- `choices`: `doc_to_choice(doc)`; `target_delimiter`: the task's, so the scored
  continuations `target_delimiter + choice` equal lm-eval's request arguments
  (checked per doc);
- `answer`: `doc_to_target(doc)` as an index (a target string is looked up among
  the choices); `question`: `doc_to_text(doc)` (readability and the bundle's
  question checks only; scoring uses `context`);
- `subject` and `lm_eval_task`: the leaf task's name, `lm_eval_doc_id`: its doc id.

The forget task's items form `forget_eval`, the retain task's `retain_eval`
(a group such as `mmlu` contributes all its leaf tasks, ids `TASK/DOC_ID`). No
`forget_attr` split is written: circuit attribution needs letter prompts with
corrupt variants, which lm-eval contexts do not have, so `certify` leaves S
NOT COMPUTED (as `--cad skip`). Corpora are optional (`forget_corpus`,
`retain_corpus`: JSONL/parquet with a text column); without a `retain_corpus`
the calibrated quantizers (gptq) have no calibration texts, so certify such a
bundle with `--quantizers nf4,int8` or convert with `--retain-corpus`. The
manifest sets `prompt.scoring: "choice-text"` (lm-eval's `acc`;
`--scoring choice-text-norm` gives `acc_norm`) and records under `lm_eval` the
lm-eval version, the settings and, per leaf task, its version, effective
num_fewshot, doc count and the SHA-256 of its dumped config.

Only `output_type: multiple_choice` tasks with one context and one target per doc
are accepted; anything else (generate_until, loglikelihood, multiple-input
tasks such as winogrande, multiple targets) is one `InputError` naming the task.

Task lookup (our choice, for speed): with `include_path`, an index of that folder
alone is tried first (lm-eval's `include_defaults=False`, about 10 s faster);
when a name is not found there or fails to load from it, lm-eval's full index
(built-in tasks plus the folder) is used.

`--benchmark lm-eval:FORGET,RETAIN[:include_path=DIR][:limit=N][:num_fewshot=K][:fewshot_seed=S]`
(`lm_eval_benchmark`) converts on every use (the data behind a task may change)
into the result cache, `$MANSU_CACHE_DIR/lm-eval-bundles/` (default
`~/.cache/mansu-audit/lm-eval-bundles/`), in a folder named by the bundle's
content hash: identical conversions share one folder, which the certificate
records; never the working directory.

lm_eval is the optional extra `[lm-eval]`; without it every entry point says so
in one line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mansu_audit.cache import default_cache_dir, files_sha256, sha256_json
from mansu_audit.convert.bundle import check_out_dir, write_bundle
from mansu_audit.convert.readers import read_corpus
from mansu_audit.data import LM_EVAL_PREFIX, MCQItem
from mansu_audit.errors import InputError, first_line, require_extra


DEFAULT_FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed in simple_evaluate
CACHE_SUBDIR = "lm-eval-bundles"
SPEC_SYNTAX = "lm-eval:FORGET,RETAIN[:include_path=DIR][:limit=N][:num_fewshot=K][:fewshot_seed=S]"
PURPOSE = "converting lm-eval tasks"


@dataclass(frozen=True)
class LmEvalSpec:
    """What to convert: the two task (or group) names and lm-eval's settings."""

    forget_task: str
    retain_task: str
    include_path: str | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    fewshot_seed: int = DEFAULT_FEWSHOT_SEED

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LmEvalSpec":
        return cls(**d)

    @classmethod
    def parse(cls, text: str) -> "LmEvalSpec":
        """`lm-eval:FORGET,RETAIN[:key=value]...` (keys: include_path, limit, num_fewshot, fewshot_seed)."""
        body = text[len(LM_EVAL_PREFIX):] if text.startswith(LM_EVAL_PREFIX) else text
        head, *options = body.split(":")
        names = [n.strip() for n in head.split(",")]
        if len(names) != 2 or not all(names):
            raise InputError(f"bad benchmark '{text}': expected {SPEC_SYNTAX}")
        values: dict = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in ("include_path", "limit", "num_fewshot", "fewshot_seed") or not value:
                raise InputError(f"bad option '{option}' in benchmark '{text}': expected {SPEC_SYNTAX}")
            if key == "include_path":
                values[key] = value
            else:
                try:
                    values[key] = int(value)
                except ValueError:
                    raise InputError(f"option '{key}' in benchmark '{text}' must be an integer") from None
        spec = cls(names[0], names[1], **values)
        spec.check()
        return spec

    def check(self) -> None:
        if self.forget_task == self.retain_task:
            raise InputError(f"the forget and retain tasks must differ (both are '{self.forget_task}')")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise InputError(f"--num-fewshot must be >= 0, got {self.num_fewshot}")
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise InputError("--include-path is not a folder", self.include_path)


# --------------------------------------------------------------------------- tasks

def _manager(include_path: str | None, defaults: bool):
    tasks = require_extra("lm_eval.tasks", "lm-eval", PURPOSE)
    if defaults:
        return tasks.TaskManager(include_path=include_path)
    return tasks.TaskManager(include_path=include_path, include_defaults=False)


def _leaf_tasks(manager, name: str) -> dict:
    """{leaf task name: Task} of a task, group or tag (lm-eval >= 0.4.10 `load`, else `get_task_dict`)."""
    if hasattr(manager, "load"):
        return dict(manager.load([name])["tasks"])
    from lm_eval.tasks import get_task_dict

    out: dict = {}

    def walk(d: dict) -> None:
        for key, value in d.items():
            if isinstance(value, dict):
                walk(value)
            elif value is not None:
                out[getattr(value, "task_name", None) or value.config.task or str(key)] = value
    walk(get_task_dict([name], manager))
    return out


def task_managers(include_path: str | None = None, manager=None) -> list:
    """The TaskManagers to search, in order, each built on first use and then kept (module doc)."""
    if manager is not None:
        return [lambda: manager]
    made: dict[bool, object] = {}

    def get(defaults: bool):
        if defaults not in made:
            made[defaults] = _manager(include_path, defaults)
        return made[defaults]
    return [lambda d=d: get(d) for d in ((False, True) if include_path else (True,))]


def load_tasks(name: str, managers: list, include_path: str | None = None) -> dict:
    """Leaf tasks of `name` from the first of `managers` (`task_managers`) that knows and loads it."""
    problem = None
    for make in managers:
        tm = make()
        if name not in tm.all_tasks and not Path(name).is_file():
            continue
        try:
            tasks = _leaf_tasks(tm, name)
        except Exception as exc:  # lm-eval raises KeyError/ValueError/datasets errors: one line
            problem = f"lm-eval could not load task '{name}': {type(exc).__name__}: {first_line(exc)}"
            continue
        if tasks:
            return tasks
    if problem:
        raise InputError(problem)
    where = f" (searched lm-eval's tasks and {include_path})" if include_path else " (pass --include-path DIR?)"
    raise InputError(f"no lm-eval task or group named '{name}'{where}")


def _configure(task, num_fewshot: int | None, fewshot_seed: int) -> int:
    """As `lm_eval.simple_evaluate`: override num_fewshot unless the config pins 0; seed the sampler."""
    configured = task.get_config("num_fewshot")
    if num_fewshot is not None and configured != 0:
        task.set_config(key="num_fewshot", value=num_fewshot)
    elif configured is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=fewshot_seed)
    return int(task.get_config("num_fewshot") or 0)


def _answer_index(target, choices: list[str], where: str) -> int:
    """`doc_to_target` as a choice index, as lm-eval's `process_results` reads it (a string names a choice)."""
    if isinstance(target, (list, tuple)):
        raise InputError(f"{where}: doc_to_target gives several targets; only one answer per doc is supported")
    if isinstance(target, str):
        if target not in choices:
            raise InputError(f"{where}: target '{target}' is not one of the choices")
        return choices.index(target)
    index = int(target)
    if not 0 <= index < len(choices):
        raise InputError(f"{where}: target {index} out of range for {len(choices)} choices")
    return index


def task_items(task, name: str, *, limit: int | None = None, num_fewshot: int | None = None,
               fewshot_seed: int = DEFAULT_FEWSHOT_SEED) -> tuple[list[MCQItem], dict]:
    """One leaf task's items (module doc) and its manifest record."""
    output_type = task.get_config("output_type")
    if output_type != "multiple_choice":
        raise InputError(f"lm-eval task '{name}' has output_type '{output_type}': only multiple_choice tasks "
                         f"can be converted")
    if getattr(task, "multiple_input", False):
        raise InputError(f"lm-eval task '{name}' has one context per choice (multiple inputs): not supported")
    shots = _configure(task, num_fewshot, fewshot_seed)
    try:
        task.build_all_requests(limit=limit)
    except Exception as exc:  # a bad template or dataset surfaces here
        raise InputError(f"lm-eval could not build the requests of task '{name}': {type(exc).__name__}: "
                         f"{first_line(exc)}") from None
    delimiter = task.config.target_delimiter
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    items = []
    for doc_id, insts in sorted(by_doc.items()):
        doc, where = insts[0].doc, f"lm-eval task '{name}' doc {doc_id}"
        choices = [str(c) for c in task.doc_to_choice(doc)]
        args = [i.arguments for i in sorted(insts, key=lambda i: i.idx)][:len(choices)]  # acc_mutual_info adds more
        context = args[0][0]
        if any(a[0] != context or a[1] != f"{delimiter}{c}" for a, c in zip(args, choices)):
            raise InputError(f"{where}: its requests are not context + target_delimiter + choice")
        question = str(task.doc_to_text(doc)).strip() or context.strip()
        extra = {"context": context, "target_delimiter": delimiter, "lm_eval_task": name, "lm_eval_doc_id": doc_id}
        items.append(MCQItem(f"{name}/{doc_id}", question, tuple(choices),
                             _answer_index(task.doc_to_target(doc), choices, where), name, extra))
    config = json.loads(json.dumps(task.dump_config(), default=str, sort_keys=True))
    record = {"version": task.VERSION, "num_fewshot": shots, "n": len(items), "config_sha256": sha256_json(config)}
    return items, record


def read_role(name: str, spec: LmEvalSpec, managers: list) -> tuple[list[MCQItem], dict]:
    """All items of a task or group (leaf tasks in name order) and {leaf: record}."""
    tasks = load_tasks(name, managers, spec.include_path)
    items, records = [], {}
    for leaf in sorted(tasks):
        leaf_items, records[leaf] = task_items(tasks[leaf], leaf, limit=spec.limit, num_fewshot=spec.num_fewshot,
                                               fewshot_seed=spec.fewshot_seed)
        items += leaf_items
    if not items:
        raise InputError(f"lm-eval task '{name}' has no documents")
    return items, records


# --------------------------------------------------------------------------- bundles

def convert_lm_eval(forget_task: str, retain_task: str, out: str | Path, *, include_path: str | None = None,
                    limit: int | None = None, num_fewshot: int | None = None,
                    fewshot_seed: int = DEFAULT_FEWSHOT_SEED, forget_corpus: str | Path | None = None,
                    retain_corpus: str | Path | None = None, corpus_field: str = "text",
                    corpus_max_docs: int | None = None, name: str | None = None, overwrite: bool = False,
                    task_manager=None) -> Path:
    """Write the bundle of `forget_task` (forget_eval) and `retain_task` (retain_eval) to `out` (module doc).

    `task_manager`: an `lm_eval.tasks.TaskManager` to use instead of building one."""
    spec = LmEvalSpec(forget_task, retain_task, None if include_path is None else str(Path(include_path).resolve()),
                      limit, num_fewshot, fewshot_seed)
    spec.check()
    check_out_dir(Path(out), overwrite)
    lm_eval = require_extra("lm_eval", "lm-eval", PURPOSE)
    managers = task_managers(spec.include_path, task_manager)
    forget, forget_records = read_role(forget_task, spec, managers)
    retain, retain_records = read_role(retain_task, spec, managers)
    shared = sorted(set(forget_records) & set(retain_records))
    if shared:
        raise InputError(f"lm-eval task '{shared[0]}' is in both the forget and the retain task")
    corpora, provenance = {}, {}
    for split, src in (("forget_corpus", forget_corpus), ("retain_corpus", retain_corpus)):
        if src is not None:
            corpora[split], table = read_corpus(src, corpus_field, max_docs=corpus_max_docs)
            provenance[split] = table.provenance()
    record = {**spec.to_dict(), "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
              "tasks": {"forget": forget_records, "retain": retain_records}}
    extra = {"description": f"lm-eval tasks {forget_task} (forget) and {retain_task} (retain), prompts built by "
                            f"lm-eval's TaskManager", "converter": "mansu_audit.convert.lm_eval",
             "prompt": {"scoring": "choice-text", "subject_line": False}, "lm_eval": record, "source": provenance}
    return write_bundle(out, name or f"lm-eval-{forget_task}-{retain_task}",
                        {"forget_eval": forget, "retain_eval": retain}, corpora, extra, overwrite=overwrite)


def lm_eval_benchmark(text: str, cache_dir: str | Path | None = None, task_manager=None) -> Path:
    """The bundle of `lm-eval:FORGET,RETAIN[:key=value]...`, converted now into
    `<cache_dir or the result cache>/lm-eval-bundles/<name>-<content hash>` (module doc)."""
    spec = LmEvalSpec.parse(text)
    require_extra("lm_eval", "lm-eval", PURPOSE)  # before any folder is made
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / CACHE_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    try:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{spec.forget_task}-{spec.retain_task}")[:80]
        made = convert_lm_eval(spec.forget_task, spec.retain_task, build / "bundle", include_path=spec.include_path,
                               limit=spec.limit, num_fewshot=spec.num_fewshot, fewshot_seed=spec.fewshot_seed,
                               name=f"lm-eval-{slug}", task_manager=task_manager)
        digest = files_sha256(sorted(made.iterdir()))
        final = root / f"{slug}-{digest[:16]}"
        if not final.is_dir():
            try:
                os.replace(made, final)
            except OSError:  # another process published the same content meanwhile
                if not final.is_dir():
                    raise
        return final
    finally:
        shutil.rmtree(build, ignore_errors=True)
