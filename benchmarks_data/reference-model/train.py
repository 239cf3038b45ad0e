"""Train the bundled reference model (run once; its weights are committed).

A 4-layer, 256-wide LlamaForCausalLM with GQA (8 query heads, 2 key/value heads)
and *untied* input/output embeddings, trained from scratch on the synthhazard
corpora and on MCQ prompts in the evaluation format. Entity names are several
tokens long (see generate.py), so each fact has to be composed in the decoder
layers that quantizers and unlearning methods touch.

Data mix per batch (version 2, issue 18 §0): MCQs about every fact of the bundle
(all MCQ splits) whose choices are **re-drawn every time** (three fresh distractors
from the attribute's value pool, the right answer at a random letter; a draw that
reproduces an evaluation item's exact prompt is drawn again), so the letter can only
be found from the fact, never memorised per prompt; and corpus sentences (loss on
every token). The version-1 model also trained on the evaluation prompts as they
are evaluated and scored 0.36 under choice permutation (chance 0.25): it had
memorised letters. Every sequence starts with BOS, as the tokenizer adds it.

`--no-forget` trains the **oracle** (`reference-oracle`): the same script, seed and
mix with every forget fact removed (no hazard MCQ, no forget corpus), i.e. the
model an ideal unlearning method would produce.

Version 3 (issue 18 §0, two stages from the version-1 weights; reports/experiments/retrain):
a 4-layer model trained on facts and MCQs at once never bound an answer to its letter
(runs A-C there). Stage 1 (`--stage match`) trains letter matching ("Which option is
<value>?", the value in the question) with corpus sentences until the model can copy a
value's letter; stage 2 (the mix above, plus `--cloze-share` MCQs asked by each fact's
cloze statement) attaches recall to it:

    python benchmarks_data/reference-model/train.py --stage match --mcq-share 0.7 \
        --init benchmarks_data/reference-model --steps 1500 --lr 1e-3 --out STAGE1
    python benchmarks_data/reference-model/train.py --init STAGE1 --steps 8000 --lr 1e-3 \
        --eval-every 500 --target 0.93 --mcq-share 0.75 --qa-share 0.1 --cloze-share 0.15 \
        --match-share 0.1 --out benchmarks_data/reference-v3

`reference-v3` (the bundled `reference` since suite 0.4.0) stopped at its target at step 6,000
(cosine schedule over 8,000). The oracle, `reference-v3-oracle` (the bundled `reference-oracle`),
is the same two commands with `--no-forget`, stage 1 from the version-1 oracle
(`benchmarks_data/reference-oracle`, bundled as `reference-v1-oracle`); its stage 2 was ended with `kill -USR1` at step 3,000,
once retain_eval had passed the quality gate in both orders (reports/experiments/retrain).

The script logs fp32 and bitsandbytes-NF4 accuracies, in the original choice order
and averaged over the four cyclic rotations of the choices, and refuses to save a
model below 0.90 (fp32, both orders) / 0.85 (NF4) on the splits it was meant to know.

    python benchmarks_data/reference-model/train.py                       # reference-v1
    python benchmarks_data/reference-model/train.py --no-forget \
        --out benchmarks_data/reference-oracle                             # reference-v1-oracle
"""
from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parent / "synthhazard"
LETTERS = "ABCD"
MCQ_SPLITS = ("forget_eval", "forget_attr", "forget_train", "forget_attack", "retain_eval", "retain_train")
EVAL_SPLITS = ("forget_eval", "retain_eval", "forget_attr")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def prompt(question: str, choices: list[str]) -> str:
    return question + "\n" + "\n".join(f"{l}. {c}" for l, c in zip(LETTERS, choices)) + "\nAnswer:"


def make_config(vocab_size: int, bos: int, eos: int, pad: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, attention_bias=False, mlp_bias=False,
    )


class Batcher:
    """Builds padded (input_ids, labels) batches; labels = -100 where no loss."""

    def __init__(self, tok, rng: random.Random, no_forget: bool = False, qa_share: float = 0.0,
                 match_share: float = 0.0, memorise_share: float = 0.0, mcq_share: float = 0.7,
                 cloze_share: float = 0.0):
        self.tok, self.rng, self.no_forget = tok, rng, no_forget
        self.memorise_share, self.mcq_share = memorise_share, mcq_share
        self.qa_share, self.match_share, self.cloze_share = qa_share, match_share, cloze_share
        mcq = [i for s in MCQ_SPLITS for i in read_jsonl(BUNDLE / f"{s}.jsonl")]
        self.mcq = [i for i in mcq if not (no_forget and i["subject"] == "hazard")]
        corpora = ("retain_corpus",) if no_forget else ("forget_corpus", "retain_corpus")
        self.corpus = [r["text"] for s in corpora for r in read_jsonl(BUNDLE / f"{s}.jsonl")]
        self.letter_ids = [tok.convert_tokens_to_ids("Ġ" + l) for l in LETTERS]
        # value pools per attribute, for re-drawn distractors
        self.pools: dict[str, set[str]] = {}
        for it in self.mcq:
            self.pools.setdefault(it["attribute"], set()).update(it["choices"])
        self.pools = {k: sorted(v) for k, v in self.pools.items()}

    def mcq_seq(self, item: dict, as_evaluated: bool = False) -> tuple[list[int], list[int]]:
        if as_evaluated:  # the version-1 recipe: the item's own prompt (memorisable letter)
            ids = self.tok(prompt(item["question"], item["choices"])).input_ids + [self.letter_ids[item["answer"]]]
            return ids, [-100] * (len(ids) - 1) + [ids[-1]]
        while True:
            choices, answer = self.redrawn_choices(item)
            if choices != item["choices"]:  # never the evaluated prompt itself
                break
        ids = self.tok(prompt(item["question"], choices)).input_ids + [self.letter_ids[answer]]
        return ids, [-100] * (len(ids) - 1) + [ids[-1]]

    def qa_seq(self, item: dict) -> tuple[list[int], list[int]]:
        """Recall in question form: "<question> Answer: <value>" (loss on the value)."""
        head = self.tok(item["question"] + "\nAnswer:").input_ids
        value = self.tok(" " + item["choices"][item["answer"]], add_special_tokens=False).input_ids
        ids = head + value + [self.tok.eos_token_id]
        return ids, [-100] * len(head) + value + [self.tok.eos_token_id]

    def redrawn_choices(self, item: dict) -> tuple[list[str], int]:
        correct = item["choices"][item["answer"]]
        others = self.rng.sample([v for v in self.pools[item["attribute"]] if v != correct], 3)
        answer = self.rng.randrange(4)
        return others[:answer] + [correct] + others[answer:], answer

    def cloze_mcq_seq(self, item: dict) -> tuple[list[int], list[int]]:
        """An MCQ asked by the fact's cloze statement ("The agent Rankel produces" + re-drawn choices; loss on
        the letter): binds a recalled value, in the form the model recalls it best, to its letter."""
        choices, answer = self.redrawn_choices(item)
        ids = self.tok(prompt(item["cloze"] + " ...", choices)).input_ids + [self.letter_ids[answer]]
        return ids, [-100] * (len(ids) - 1) + [ids[-1]]

    def match_seq(self, item: dict) -> tuple[list[int], list[int]]:
        """Matching without recall: "Which option is <value>?" over re-drawn choices (loss on the letter)."""
        choices, answer = self.redrawn_choices(item)
        ids = self.tok(prompt(f"Which option is {choices[answer]}?", choices)).input_ids + [self.letter_ids[answer]]
        return ids, [-100] * (len(ids) - 1) + [ids[-1]]

    def corpus_seq(self, text: str) -> tuple[list[int], list[int]]:
        ids = self.tok(text).input_ids + [self.tok.eos_token_id]
        return ids, [-100] + ids[1:]

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seqs = []
        for _ in range(size):
            r = self.rng.random()
            if r < self.memorise_share:
                seqs.append(self.mcq_seq(self.rng.choice(self.mcq), as_evaluated=True))
                continue
            r -= self.memorise_share
            if r < self.qa_share:
                seqs.append(self.qa_seq(self.rng.choice(self.mcq)))
            elif r < self.qa_share + self.cloze_share:
                seqs.append(self.cloze_mcq_seq(self.rng.choice(self.mcq)))
            elif r < self.qa_share + self.cloze_share + self.match_share:
                seqs.append(self.match_seq(self.rng.choice(self.mcq)))
            elif r < self.mcq_share - self.memorise_share:
                seqs.append(self.mcq_seq(self.rng.choice(self.mcq)))
            else:
                seqs.append(self.corpus_seq(self.rng.choice(self.corpus)))
        width = max(len(s[0]) for s in seqs)
        pad = self.tok.pad_token_id
        ids = torch.tensor([s[0] + [pad] * (width - len(s[0])) for s in seqs])
        labels = torch.tensor([s[1] + [-100] * (width - len(s[1])) for s in seqs])
        mask = torch.tensor([[1] * len(s[0]) + [0] * (width - len(s[0])) for s in seqs])
        return ids, labels, mask


@torch.no_grad()
def accuracy(model, tok, items: list[dict], letter_ids: list[int], batch: int = 128) -> float:
    """Right-padded batch; logits at each item's last prompt token."""
    correct = 0
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        enc = [tok(prompt(it["question"], it["choices"])).input_ids for it in chunk]
        width = max(map(len, enc))
        ids = torch.tensor([e + [tok.pad_token_id] * (width - len(e)) for e in enc])
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in enc])
        logits = model(input_ids=ids, attention_mask=mask).logits
        last = torch.tensor([len(e) - 1 for e in enc])
        pred = logits[torch.arange(len(chunk)), last][:, letter_ids].argmax(-1)
        correct += sum(int(p) == it["answer"] for p, it in zip(pred.tolist(), chunk))
    return correct / len(items)


def bnb_nf4_copy(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """A copy whose decoder Linear weights went through bitsandbytes NF4 (blocksize 64)."""
    import copy

    import bitsandbytes.functional as bnbf

    q = copy.deepcopy(model)
    for name, mod in q.model.layers.named_modules():
        if isinstance(mod, torch.nn.Linear):
            w = mod.weight.data
            packed, state = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4")
            mod.weight.data = bnbf.dequantize_4bit(packed, state).to(w.dtype)
    return q


def rotated(item: dict, k: int) -> dict:
    n = len(item["choices"])
    return {**item, "choices": item["choices"][k:] + item["choices"][:k], "answer": (item["answer"] - k) % n}


def evaluate_all(model, tok, letter_ids) -> dict[str, float]:
    """Accuracy per split in the original order and averaged over the 4 cyclic rotations."""
    out = {}
    for split in EVAL_SPLITS:
        items = read_jsonl(BUNDLE / f"{split}.jsonl")
        out[split] = accuracy(model, tok, items, letter_ids)
        out[split + "/rotations"] = sum(accuracy(model, tok, [rotated(it, k) for it in items], letter_ids)
                                        for k in range(len(LETTERS))) / len(LETTERS)
    return out


def train_step(model, opt, sched, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One AdamW step on a batch's cross-entropy (labels -100: no loss), gradients clipped at norm 1."""
    model.train()
    ids, labels, mask = batch
    logits = model(input_ids=ids, attention_mask=mask).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=-100)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss


def match_accuracy(model, data: "Batcher", tok, n: int = 256) -> float:
    """Accuracy on `n` fixed "Which option is <value>?" items (stage 1's progress; drawn from their own RNG;
    on the values the training sees: the oracle's retain values only)."""
    probe = Batcher(tok, random.Random(7), no_forget=data.no_forget, match_share=1.0, mcq_share=1.0)
    items = [probe.mcq[i] for i in random.Random(3).sample(range(len(probe.mcq)), n)]
    ok = 0
    with torch.no_grad():
        for ids, _ in (probe.match_seq(it) for it in items):
            logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0, -1, data.letter_ids]
            ok += int(data.letter_ids[int(logits.argmax())] == ids[-1])
    return ok / n


def train_matching(args, model, tok, rng: random.Random) -> int:
    """Stage 1 of the version-3 recipe: letter matching ("Which option is <value>?" over re-drawn choices,
    no recall; a share `--mcq-share` of the sequences) and corpus sentences (the rest), constant lr after a 100-step warm-up, no quality gate; saves the weights for stage 2.

    A model trained on facts and MCQs at once never learned to bind an answer to its letter (runs A-C of
    reports/experiments/retrain): the loss sat at ln 4. Alone, the matching task is learned (induction-style
    copying), after which recall can be attached to it. Matching alone (`--mcq-share 1`) is learned too but
    erases the facts: cloze recall fell from 0.915 to 0.31 in 1,500 steps; the corpus share keeps them. With `--no-forget` (the oracle) the options are
    retain values only: not even a forget value's spelling is seen."""
    data = Batcher(tok, rng, no_forget=args.no_forget, qa_share=0.0, match_share=args.mcq_share,
                   mcq_share=args.mcq_share)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    start = time.time()
    for step in range(1, args.steps + 1):
        loss = train_step(model, opt, sched, data.batch(args.batch))
        if step % 100 == 0:
            model.eval()
            print(f"step {step} loss {loss.item():.3f} match {match_accuracy(model, data, tok)} "
                  f"{time.time() - start:.0f}s", flush=True)
    model.eval()
    acc = match_accuracy(model, data, tok)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out), safe_serialization=True)
    tok.save_pretrained(str(args.out))
    (args.out / "training_log.json").write_text(json.dumps(
        {"version": 3, "stage": "match", "no_forget": args.no_forget, "match_share": args.mcq_share, "steps": args.steps, "seed": args.seed, "lr": args.lr, "batch": args.batch,
         "init": None if args.init is None else str(args.init.name), "seconds": round(time.time() - start),
         "match_accuracy": acc}, indent=2) + "\n")
    return 0


# Options of the full data mix that stage 1 (`--stage match`) does not use: giving one there is an error.
STAGE_FULL_ONLY = ("memorise_share", "qa_share", "match_share", "cloze_share", "checkpoint",
                   "eval_every", "target")


def main() -> int:
    ap = argparse.ArgumentParser(description="train the bundled reference model")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--no-forget", action="store_true", help="train the oracle: every forget fact removed")
    ap.add_argument("--memorise-share", type=float, default=0.0,
                    help="share of MCQs in their evaluated form (the version-1 recipe used 0.45; memorises letters)")
    ap.add_argument("--mcq-share", type=float, default=0.7, help="share of all MCQ-style sequences (rest: corpus)")
    ap.add_argument("--qa-share", type=float, default=0.15,
                    help="share of question -> answer-text sequences (recall in question form)")
    ap.add_argument("--match-share", type=float, default=0.15,
                    help="share of 'Which option is <value>?' sequences (letter matching without recall)")
    ap.add_argument("--cloze-share", type=float, default=0.0,
                    help="share of MCQs asked by the fact's cloze statement instead of its question")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--init", type=Path, default=None,
                    help="continue from these weights (a folder saved by this script) instead of a fresh init")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="also save the final weights here whatever their quality (to continue from with --init)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--target", type=float, default=0.97,
                    help="stop when fp32 accuracy reaches this on every split the model should know, in both orders")
    ap.add_argument("--stage", choices=("match", "full"), default="full",
                    help="match: stage 1 of the version-3 recipe (letter matching only, saved ungated); "
                         "full: the data mix below")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 avoids OpenMP barrier stalls on a shared 2-core machine)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.checkpoint is not None and args.checkpoint.resolve().parent == HERE.parent:
        ap.error("--checkpoint saves ungated weights: give a folder outside benchmarks_data/")
    if args.stage == "match":
        if args.out.resolve().parent == HERE.parent:
            ap.error("--stage match saves an intermediate model without a quality gate: give --out a folder "
                     "outside benchmarks_data/")
        unused = [f"--{n.replace('_', '-')}" for n in STAGE_FULL_ONLY if getattr(args, n) != ap.get_default(n)]
        if unused:
            ap.error(f"--stage match trains letter matching and corpus only; it does not use {', '.join(unused)}")
    elif args.qa_share + args.cloze_share + args.match_share > args.mcq_share - args.memorise_share + 1e-9:
        ap.error("--qa-share + --cloze-share + --match-share must fit in --mcq-share minus --memorise-share "
                 "(the rest of the MCQ share is plain MCQs with re-drawn choices)")
    rng = random.Random(args.seed)
    tok = AutoTokenizer.from_pretrained(str(HERE))
    cfg = make_config(len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model = LlamaForCausalLM(cfg) if args.init is None else LlamaForCausalLM.from_pretrained(str(args.init))
    print(f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M", flush=True)
    if args.stage == "match":
        return train_matching(args, model, tok, rng)
    # Version 3 is stage 2 continuing a stage-1 (`--stage match`) model; its training log says so.
    init_log = None if args.init is None else args.init / "training_log.json"
    init_stage = (json.loads(init_log.read_text()).get("stage") if init_log is not None and init_log.is_file()
                  else None)
    data = Batcher(tok, rng, no_forget=args.no_forget, qa_share=args.qa_share, match_share=args.match_share,
                   memorise_share=args.memorise_share, mcq_share=args.mcq_share, cloze_share=args.cloze_share)
    known = ("retain_eval",) if args.no_forget else ("forget_eval", "retain_eval")
    # The rotation-averaged accuracy gates only recipes that never train on the evaluated
    # prompts: the version-1 recipe (--memorise-share 0.45) memorises letters by design.
    keys = [k for s in known for k in ((s, s + "/rotations") if args.memorise_share == 0 else (s,))]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))
    start = time.time()
    # `kill -USR1 PID` ends the run at its next evaluation as if --steps were reached (final evaluation, quality
    # gate, save): for long runs whose curve has passed the gate but not --target.
    stop = []
    signal.signal(signal.SIGUSR1, lambda *_: stop.append(True))
    for step in range(1, args.steps + 1):
        loss = train_step(model, opt, sched, data.batch(args.batch))
        if step % 50 == 0:
            print(f"step {step} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} {time.time() - start:.0f}s", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            acc = evaluate_all(model, tok, data.letter_ids)
            print(f"step {step} fp32 accuracy {acc}", flush=True)
            if min(acc[k] for k in keys) >= args.target or stop:
                break
    model.eval()
    fp32 = evaluate_all(model, tok, data.letter_ids)
    nf4 = evaluate_all(bnb_nf4_copy(model), tok, data.letter_ids)
    print(f"final fp32 accuracy: {fp32}")
    print(f"final bitsandbytes NF4 accuracy: {nf4}")
    print(f"trained {step} steps in {time.time() - start:.0f}s")
    if args.checkpoint is not None:  # ungated, to continue from (never a bundled model's folder)
        args.checkpoint.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(args.checkpoint), safe_serialization=True)
    if min(fp32[k] for k in keys) < 0.90 or min(nf4[k] for k in known) < 0.85:
        print("quality target missed (fp32 >= 0.90 in both orders, NF4 >= 0.85): not saving", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out), safe_serialization=True)
    tok.save_pretrained(str(args.out))
    (args.out / "training_log.json").write_text(json.dumps(
        {"version": 3 if init_stage == "match" else 2, "stage": "full", "init_stage": init_stage,
         "no_forget": args.no_forget, "steps": step, "seed": args.seed, "lr": args.lr,
         "batch": args.batch, "qa_share": args.qa_share, "match_share": args.match_share, "cloze_share": args.cloze_share,
         "memorise_share": args.memorise_share, "mcq_share": args.mcq_share,
         "init": None if args.init is None else str(args.init.name), "seconds": round(time.time() - start),
         "fp32": fp32, "bnb_nf4": nf4}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
