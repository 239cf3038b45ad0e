"""MCQ prompts in the convention of lm-eval's MMLU/WMDP tasks (SPEC §5).

    [The following are multiple choice questions (with answers) about {subject}.\n\n]
    {question}
    A. {choice}
    ...
    Answer:

scored by the log-likelihood of the continuations " A", " B", ... The subject
line is optional (`subject_line=True` adds it, as lm-eval's MMLU does).

Scoring modes (`--scoring`, recorded in the certificate):
- `letter` (default): the prompt above, continuations " A", " B", ... One forward
  pass per item; the model must bind each letter to its choice, so a model can
  score well by memorising letters per prompt (see `consistency`).
- `choice-text`: lm-eval's `multiple_choice` scoring of the choices' texts
  (`acc`), continuations `" " + choice`; the prediction is the argmax of the
  summed log-likelihoods. The context is the item's `cloze` when it has one (a
  statement the right choice completes: "The agent Rankel produces", the cloze
  formulation of OLMES), else `Question: {question}\nAnswer:` (the subject line
  first when on, as lm-eval's `mmlu_continuation`). Choice order cannot matter,
  since the prompt does not list the choices.
- `choice-text-norm`: the same log-likelihoods, predicted by lm-eval's
  `acc_norm`: argmax of log-likelihood / len(choice) (characters of the choice
  string, as lm-eval's `completion_len`).
An item may carry a verbatim lm-eval context (key `context`, with
`target_delimiter`, default " "; written by `convert lm-eval`): its context is
used as is and its choices are scored as text after the delimiter, so such items
take only the choice-text modes.

Chat templates (`--chat-template auto|on|off`): `chat_prompt_fn` wraps the
prompt in the tokenizer's template as one user turn followed by the assistant
generation prompt (lm-eval's `--apply_chat_template` convention); the scored
continuation stays " A", " B", ... The template is rendered once when the
wrapper is built, so a template the Jinja sandbox blocks (or that fails to
render) is one `InputError` line before any evaluation.

`pad_token_id(tokenizer)`: the one padding-id rule (pad, else eos, else 0) for
evaluation, attribution and training batches.
"""
from __future__ import annotations

import hashlib
from typing import Callable

from mansu_audit.data import MCQItem
from mansu_audit.errors import InputError, first_line

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHAT_MODES = ("auto", "on", "off")


def subject_header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def format_prompt(question: str, choices: tuple[str, ...] | list[str], subject: str | None = None) -> str:
    """The context string; the answer continuation is `" " + letter`."""
    header = subject_header(subject) if subject else ""
    body = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{header}{question.strip()}\n{body}\nAnswer:"


def item_prompt(item: MCQItem, subject_line: bool = False, corrupt: bool = False) -> str:
    question = item.corrupt if corrupt else item.question
    if question is None:
        raise ValueError(f"item {item.id} has no corrupt variant")
    return format_prompt(question, item.choices, item.subject if subject_line else None)


def continuations(num_choices: int) -> list[str]:
    return [f" {LETTERS[i]}" for i in range(num_choices)]


SCORING_MODES = ("letter", "choice-text", "choice-text-norm")


def check_scoring(scoring: str) -> str:
    if scoring not in SCORING_MODES:
        raise InputError(f"--scoring must be one of {', '.join(SCORING_MODES)}, not '{scoring}'")
    return scoring


def scoring_key(scoring: str) -> dict:
    """What a cache key or certificate record adds for `scoring`: nothing for `letter` (so records made
    before scoring modes existed stay valid and byte-identical), else `{"scoring": mode}`."""
    return {} if check_scoring(scoring) == "letter" else {"scoring": scoring}


def item_request(item: MCQItem, scoring: str = "letter", subject_line: bool = False) -> tuple[str, list[str]]:
    """The context string and the scored continuation strings of one item under `scoring` (module doc)."""
    context = item.extra.get("context")
    if scoring == "letter":
        if context is not None:
            raise InputError(f"item '{item.id}' carries a verbatim lm-eval context; score it with "
                             f"--scoring choice-text (or choice-text-norm), not letter")
        return item_prompt(item, subject_line=subject_line), continuations(len(item.choices))
    check_scoring(scoring)
    context = context if context is not None else item.extra.get("cloze")
    if context is None:
        header = subject_header(item.subject) if subject_line and item.subject else ""
        context = f"{header}Question: {item.question.strip()}\nAnswer:"
    delimiter = item.extra.get("target_delimiter", " ")
    return context, [f"{delimiter}{c}" for c in item.choices]


def pad_token_id(tokenizer) -> int:
    """Padding id: the tokenizer's pad token, else its eos token, else 0 (padding is masked out anyway)."""
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    return 0


# --------------------------------------------------------------------------- chat templates

def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def use_chat_template(tokenizer, mode: str = "auto") -> bool:
    """auto: on iff the tokenizer ships a template (instruct models); on: required; off: never."""
    if mode not in CHAT_MODES:
        raise InputError(f"--chat-template must be one of {', '.join(CHAT_MODES)}, not '{mode}'")
    if mode == "on" and not has_chat_template(tokenizer):
        raise InputError("--chat-template on, but the tokenizer has no chat template")
    return mode == "on" or (mode == "auto" and has_chat_template(tokenizer))


def chat_mode_for(mode: str, scoring: str) -> str:
    """The chat-template mode to apply under `scoring`: `auto` means off for the choice-text modes (a cloze
    or a verbatim lm-eval context is a continuation, not a user turn; lm-eval applies no template unless
    asked), on/off are kept as given."""
    return "off" if mode == "auto" and scoring != "letter" else mode


def chat_prompt_fn(tokenizer, mode: str = "auto") -> Callable[[str], str] | None:
    """A `prompt_fn` for `evaluate_mcq`: the MCQ prompt as one user turn, then the assistant prompt.

    The scored continuation stays " A", " B", ... after the generation prompt, as
    lm-eval's `--apply_chat_template`. A leading BOS in the rendered text is
    dropped when the tokenizer adds BOS itself, so BOS never appears twice.
    """
    if not use_chat_template(tokenizer, mode):
        return None
    bos = getattr(tokenizer, "bos_token", None)
    adds_bos = bool(bos) and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]

    def wrap(prompt: str) -> str:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        if adds_bos and text.startswith(bos):
            text = text[len(bos):]
        return text

    try:  # render once now: a template the Jinja sandbox blocks fails here, in one line
        wrap("Question?\nA. yes\nB. no\nAnswer:")
    except Exception as exc:  # jinja2 SecurityError / TemplateError, or a template raising its own error
        raise InputError(f"the tokenizer's chat template cannot be rendered ({type(exc).__name__}: "
                         f"{first_line(exc)}); use --chat-template off") from None
    return wrap


def chat_template_record(tokenizer, mode: str = "auto") -> dict:
    """What the certificate records about prompting: mode, whether applied, template hash."""
    applied = use_chat_template(tokenizer, mode)
    template = getattr(tokenizer, "chat_template", None) or ""
    return {"mode": mode, "applied": applied,
            "template_sha256": hashlib.sha256(template.encode()).hexdigest() if applied else None}
