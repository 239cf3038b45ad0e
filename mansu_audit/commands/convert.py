"""`mansu-audit convert`: build a benchmark bundle from WMDP, MMLU, any MCQ table or lm-eval tasks (SPEC §5).

`convert lm-eval --forget-task T --retain-task T [--include-path DIR] [--limit N] [--num-fewshot K]
--out DIR`: prompts built by lm-eval's own TaskManager (`mansu_audit.convert.lm_eval`)."""
from __future__ import annotations

import argparse

from mansu_audit.commands._common import add_renamed, non_negative_int, parse_list, positive_int
from mansu_audit.convert import (DEFAULT_ATTR_FRACTION, ConvertOptions, convert_generic, convert_lm_eval, convert_mmlu,
                                 convert_wmdp)
from mansu_audit.convert.lm_eval import DEFAULT_FEWSHOT_SEED
from mansu_audit.data import load_bundle
from mansu_audit.errors import InputError

NAME = "convert"
HELP = ("build a benchmark bundle from WMDP, MMLU, a JSONL/parquet/datasets table "
        "(forget_eval/forget_attr split, MMLU retain, corpora) or lm-eval tasks (lm-eval's own prompts)")
FORMATS = ("wmdp", "mmlu", "jsonl", "parquet", "hf", "lm-eval")
LM_EVAL_ONLY = ("forget_task", "retain_task", "include_path", "limit", "num_fewshot")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=FORMATS, help="what --source holds (lm-eval: --forget-task/--retain-task)")
    p.add_argument("--source", default=None,
                   help="a .parquet/.jsonl/.json file, a folder (hub layout or datasets.save_to_disk), or a hub id "
                        "(all formats but lm-eval)")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--config", default=None, help="dataset config (wmdp: wmdp-bio|wmdp-chem|wmdp-cyber)")
    p.add_argument("--split", default="test", help="source split (default %(default)s)")
    p.add_argument("--map", default=None,
                   help="column mapping question=COL,choices=COL|COL1|COL2..,answer=COL[,subject=COL][,id=COL]")
    p.add_argument("--subject", default=None, help="subject line for every forget item (generic formats)")
    p.add_argument("--forget-subjects", default="", help="mmlu: comma list of forget subjects (default: none)")
    p.add_argument("--retain-source", default=None, help="MMLU-layout retain benchmark (file, folder or cais/mmlu)")
    p.add_argument("--retain-config", default="all", help="config of --retain-source (default %(default)s)")
    p.add_argument("--retain-split", default="test", help="split of --retain-source (default %(default)s)")
    p.add_argument("--retain-subjects", default="", help="comma list (default: all)")
    p.add_argument("--retain-map", default=None, help="column mapping of the retain source (as --map)")
    p.add_argument("--retain-max", type=int, default=None, help="seeded subsample of the retain items")
    p.add_argument("--forget-corpus", default=None, help="JSONL/parquet with a text column (e.g. WMDP corpora)")
    p.add_argument("--retain-corpus", default=None, help="JSONL/parquet with a text column")
    p.add_argument("--corpus-field", default="text",
                   help="text column of --forget-corpus/--retain-corpus (default %(default)s)")
    p.add_argument("--corpus-max-docs", type=int, default=None,
                   help="first N documents of each corpus (default: all)")
    p.add_argument("--attr-fraction", type=float, default=DEFAULT_ATTR_FRACTION,
                   help="share of forget items held out for attribution (forget_attr; default %(default)s)")
    p.add_argument("--attr-max", type=int, default=None, help="cap on forget_attr items")
    p.add_argument("--split-seed", type=non_negative_int, default=0,
                   help="seed of the forget_eval/forget_attr split (default %(default)s)")
    add_renamed(p, "--seed", "--split-seed")
    p.add_argument("--tokenizer", default=None,
                   help="model whose tokenizer length-matches the neutral corrupt stems (folder, .gguf, 'reference')")
    p.add_argument("--name", default=None, help="bundle name (default: from the source)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    lm = p.add_argument_group("lm-eval (format lm-eval; also --forget-corpus, --retain-corpus, --name, --force)")
    lm.add_argument("--forget-task", default=None, help="lm-eval task or group whose docs become forget_eval")
    lm.add_argument("--retain-task", default=None, help="lm-eval task or group whose docs become retain_eval")
    lm.add_argument("--include-path", default=None, help="folder of extra lm-eval task YAMLs (lm-eval's include_path)")
    lm.add_argument("--limit", type=positive_int, default=None,
                    help="first N docs of each task (lm-eval's --limit; default all)")
    lm.add_argument("--num-fewshot", type=non_negative_int, default=None,
                    help="override the tasks' num_fewshot as lm-eval's --num_fewshot (default: the task's)")
    lm.add_argument("--fewshot-seed", type=non_negative_int, default=DEFAULT_FEWSHOT_SEED,
                    help="seed of lm-eval's few-shot sampler (lm-eval's fewshot_random_seed; default %(default)s)")


def run_lm_eval(args: argparse.Namespace):
    if args.source is not None:
        raise InputError("convert lm-eval takes --forget-task and --retain-task, not --source")
    if args.forget_task is None or args.retain_task is None:
        raise InputError("convert lm-eval needs --forget-task and --retain-task (lm-eval task or group names)")
    return convert_lm_eval(args.forget_task, args.retain_task, args.out, include_path=args.include_path,
                           limit=args.limit, num_fewshot=args.num_fewshot, fewshot_seed=args.fewshot_seed,
                           forget_corpus=args.forget_corpus, retain_corpus=args.retain_corpus,
                           corpus_field=args.corpus_field, corpus_max_docs=args.corpus_max_docs, name=args.name,
                           overwrite=args.force)


def run(args: argparse.Namespace) -> int:
    if args.format == "lm-eval":
        return report(run_lm_eval(args))
    given = [f"--{k.replace('_', '-')}" for k in LM_EVAL_ONLY if getattr(args, k) is not None]
    if given:
        raise InputError(f"{given[0]} is for convert lm-eval only")
    if args.source is None:
        raise InputError(f"convert {args.format} needs --source")
    options = ConvertOptions(
        map_spec=args.map, retain_source=args.retain_source, retain_config=args.retain_config,
        retain_split=args.retain_split, retain_subjects=parse_list(args.retain_subjects) or None,
        retain_map=args.retain_map, retain_max=args.retain_max, forget_corpus=args.forget_corpus,
        retain_corpus=args.retain_corpus, corpus_field=args.corpus_field, corpus_max_docs=args.corpus_max_docs,
        attr_fraction=args.attr_fraction, attr_max=args.attr_max, seed=args.split_seed, tokenizer=args.tokenizer,
        name=args.name, overwrite=args.force)
    if args.format == "wmdp":
        out = convert_wmdp(args.source, args.config or "wmdp-bio", args.out, options)
    elif args.format == "mmlu":
        out = convert_mmlu(args.source, parse_list(args.forget_subjects), args.out, options,
                           config=args.config or "all", split=args.split)
    else:
        out = convert_generic(args.source, args.out, options, config=args.config, split=args.split,
                              subject=args.subject)
    return report(out)


def report(out) -> int:
    bundle = load_bundle(out)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in {**bundle.mcq, **bundle.corpus}.items())
    print(f"wrote {out} ({bundle.name}): {sizes}")
    return 0
