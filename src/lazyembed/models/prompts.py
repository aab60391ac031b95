"""A model's prompts, as sentence-transformers reads and applies them.

``config_sentence_transformers.json`` may hold ``prompts`` (name → text prepended to each
input, e.g. ``{"query": "query: "}``) and ``default_prompt_name`` (applied when a call
names no prompt). The rules follow sentence-transformers' ``encode``: an explicit
``prompt`` wins over ``prompt_name`` (with a warning when both are given); queries use
the ``query`` prompt and documents the first of ``document``/``passage``/``corpus``
that the model defines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from lazyembed.errors import InputTypeError, ModelConversionError, PromptNotFoundError

log = logging.getLogger("lazyembed")

CONFIG_FILE = "config_sentence_transformers.json"
QUERY_NAMES = ("query",)
DOCUMENT_NAMES = ("document", "passage", "corpus")


@dataclass(frozen=True)
class Prompts:
    """The prompts one model defines, and how a call's arguments pick one."""

    prompts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    default_name: str | None = None

    @property
    def default_text(self) -> str:
        """What a call that names no prompt prepends ("" for most models)."""
        return self.prompts.get(self.default_name, "") if self.default_name else ""

    def text_for(self, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The text to prepend for a call's ``prompt_name``/``prompt`` arguments."""
        if prompt is not None:
            if not isinstance(prompt, str):
                raise InputTypeError(f"prompt must be a str, not {type(prompt).__name__}")
            if prompt_name is not None:
                log.warning(
                    "both prompt and prompt_name given; using prompt, as sentence-transformers does"
                )
            return prompt
        if prompt_name is None:
            return self.default_text
        if not isinstance(prompt_name, str):
            raise InputTypeError(f"prompt_name must be a str, not {type(prompt_name).__name__}")
        try:
            return self.prompts[prompt_name]
        except KeyError:
            known = ", ".join(repr(name) for name in self.prompts) or "none"
            raise PromptNotFoundError(
                f"this model has no prompt named {prompt_name[:100]!r}; its prompts: {known}"
            ) from None

    def name_for(self, role: str) -> str | None:
        """The model's prompt name for a role ("query" or "document"), if it has one."""
        candidates = QUERY_NAMES if role == "query" else DOCUMENT_NAMES
        return next((name for name in candidates if name in self.prompts), None)


def read_prompts(directory: Path) -> Prompts:
    """Read ``config_sentence_transformers.json`` (absent → no prompts)."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        return Prompts()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelConversionError(f"cannot read {path}: {exc}") from exc
    raw = data.get("prompts") if isinstance(data, dict) else None
    prompts = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
    default = data.get("default_prompt_name") if isinstance(data, dict) else None
    if default is not None and default not in prompts:
        raise ModelConversionError(
            f"{path}: default_prompt_name {default!r} is not one of its prompts {list(prompts)}"
        )
    return Prompts(MappingProxyType(prompts), default)
