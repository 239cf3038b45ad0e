"""MCQ prompts in the convention of lm-eval's MMLU/WMDP tasks (SPEC §5).

    [The following are multiple choice questions (with answers) about {subject}.\n\n]
    {question}
    A. {choice}
    ...
    Answer:

scored by the log-likelihood of the continuations " A", " B", ... The subject
line is optional (`subject_line=True` adds it, as lm-eval's MMLU does).
"""
from __future__ import annotations

from mansu_audit.data import MCQItem

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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
