"""The export's shape: single-turn JSON insights (LexyBrain, the default) or chat logs.

`ExportShape` says, once, what a product's logs look like:

- `conversation_keys`: the request-context keys that carry a conversation or session id
  (the first one present wins). Empty (or "none") means every request stands alone, as
  LexyBrain's insights do; otherwise the rated requests of one conversation export as one
  brightrun-lora-v4 conversation, each turn with the turns before it as its history.
- `output_text_field`: None keeps today's JSON mode (an output must be a JSON object or
  array, and the target is its canonical JSON). A field name switches to free text: the
  target is that field of an output object, or the output itself when it is a JSON string.
- `system_prompt_key`: a request-context key whose text is that request's system prompt;
  where it is missing, the configured prompt (per insight type, then the default) is used.
- `context_in_user_turn`: whether the rest of the context is appended to the user turn
  (LexyBrain's insights need it; a chat whose context is bookkeeping does not).

The keys the shape consumes (conversation id, system prompt) are removed from the context
before it is rendered into the user turn: they are bookkeeping, not what the user asked.
Pure logic; the settings (`BRIGHTRUN_EXPORT_*`) reach it through `from_settings`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationError, field_validator

if TYPE_CHECKING:
    from brightrun.settings import Settings

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
NO_KEYS = frozenset({"", "none", "-"})


class ExportShape(BaseModel):
    """How one product's logs become conversations. Validated once at the boundary."""

    conversation_keys: list[str] = Field(
        default_factory=list,
        description="Request-context keys holding a conversation/session id; empty: each request alone",
    )
    output_text_field: str | None = Field(
        default=None,
        description="Output field holding the free-text answer; None: JSON mode (LexyBrain insights)",
    )
    system_prompt_key: str | None = Field(
        default=None, description="Request-context key holding the request's own system prompt"
    )
    context_in_user_turn: bool = Field(
        default=True,
        description="Append the request context (less the consumed keys) to the user turn, as LexyBrain's "
        "insights need; a chat whose context is only bookkeeping turns it off",
    )

    @field_validator("conversation_keys", mode="before")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, str):
            value = [] if value.strip().lower() in NO_KEYS else value.split(",")
        if isinstance(value, list):
            value = [str(v).strip() for v in value if str(v).strip().lower() not in NO_KEYS]
            bad = [v for v in value if not _KEY.match(v)]
            if bad:
                raise ValueError(
                    f"conversation_keys: {', '.join(repr(b) for b in bad)} is not a context key name "
                    "(letters, digits, '_', '.', '-'; e.g. conversation_id,session_id; or none)"
                )
        return value

    @field_validator("output_text_field", "system_prompt_key", mode="before")
    @classmethod
    def _optional_name(cls, value: Any, info: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in NO_KEYS | {"json"}):
            return None
        if not isinstance(value, str) or not _KEY.match(value.strip()):
            raise ValueError(
                f"{info.field_name}: {value!r} is not a field name (letters, digits, '_', '.', '-'; or none)"
            )
        return value.strip()

    @property
    def grouped(self) -> bool:
        return bool(self.conversation_keys)

    @property
    def free_text(self) -> bool:
        return self.output_text_field is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportShape:
        return shape_with_overrides(settings, where="settings")

    def conversation_id(self, context: Any) -> str | None:
        """The first configured key present in the context with a non-empty scalar value."""
        if not self.grouped or not isinstance(context, dict):
            return None
        for key in self.conversation_keys:
            value = context.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
                return f"{key}={str(value).strip()}"
        return None

    def context_system_prompt(self, context: Any) -> str | None:
        if self.system_prompt_key is None or not isinstance(context, dict):
            return None
        value = context.get(self.system_prompt_key)
        return value if isinstance(value, str) and value.strip() else None

    def rendered_context(self, context: Any) -> Any:
        """The context without the keys this shape consumed (None: none rendered)."""
        if not self.context_in_user_turn:
            return None
        if not isinstance(context, dict):
            return context
        consumed = {*self.conversation_keys, self.system_prompt_key}
        if not consumed & context.keys():
            return context
        return {k: v for k, v in context.items() if k not in consumed}

    def output_text(self, output: Any) -> str | None:
        """The free-text answer in an output (free-text mode), or None when it has none."""
        if isinstance(output, str):
            return output if output.strip() else None
        if isinstance(output, dict):
            value = output.get(self.output_text_field or "")
            return value if isinstance(value, str) and value.strip() else None
        return None


def shape_with_overrides(
    settings: Settings,
    *,
    conversation_keys: str | list[str] | None = None,
    output_text_field: str | None = None,
    system_prompt_key: str | None = None,
    context_in_user_turn: bool | None = None,
    where: str = "the export",
) -> ExportShape:
    """The settings' shape (BRIGHTRUN_EXPORT_*) with what a CLI flag or flow parameter gave
    (None: the setting), validated once; a bad value is an InputError naming it."""
    from brightrun.errors import InputError

    values: dict[str, Any] = {
        "conversation_keys": settings.export_conversation_keys,
        "output_text_field": settings.export_output_text_field,
        "system_prompt_key": settings.export_system_prompt_key,
        "context_in_user_turn": settings.export_context_in_user_turn,
    }
    given = {
        "conversation_keys": conversation_keys,
        "output_text_field": output_text_field,
        "system_prompt_key": system_prompt_key,
        "context_in_user_turn": context_in_user_turn,
    }
    values.update({k: v for k, v in given.items() if v is not None})
    try:
        return ExportShape(**values)
    except ValidationError as error:
        problems = [str(e["msg"]).removeprefix("Value error, ") for e in error.errors()]
        raise InputError(
            f"{where}: the export shape is invalid (flags, flow parameters or BRIGHTRUN_EXPORT_* settings): "
            + "; ".join(problems)
        ) from error
