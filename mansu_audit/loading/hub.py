"""Hugging Face hub ids (`owner/name`, optionally `owner/name@revision`) -> a local snapshot folder.

The local HF cache is tried first; the hub only when it is reachable and
`HF_HUB_OFFLINE` is unset. Only config, tokenizer and safetensors files are
fetched (pickle `*.bin` files only with `allow_pickle`). The snapshot folder is
then loaded by `mansu_audit.loading.local` under the same safety rules as any
local folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from mansu_audit.errors import InputError, first_line

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_./-]+)?$")
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "merges.txt", "vocab.txt", "*.jinja"]


def is_hub_id(spec: str | Path) -> bool:
    """`owner/name` that is not a local path: neither it nor its first component exists here
    (so a mistyped `outputs/model` is reported as a missing folder, not looked up on the hub)."""
    text = str(spec)
    if not HUB_ID.match(text):
        return False
    local = Path(text.split("@")[0])
    return not local.exists() and not Path(text.split("/")[0]).exists()


def fetch_hub_model(spec: str, allow_pickle: bool = False) -> Path:
    """Local snapshot folder of a hub model: the cache first, the hub only when reachable."""
    repo_id, _, revision = spec.partition("@")
    from huggingface_hub import snapshot_download

    patterns = HUB_PATTERNS + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns,
                                      local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise InputError(f"'{spec}' is no local folder, and as a hub model it is not in the local cache "
                         "and HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=patterns))
    except Exception as exc:
        raise InputError(f"'{spec}' is no local folder, and as a hub model it is not cached and could not be "
                         f"fetched: {first_line(exc)}") from None
