"""What OpenAI's chat API has that this server does not serve, refused by name, and the
metadata it accepts and ignores.

A field a client sets expecting an effect (audio output, predicted outputs, web search, ...)
is refused with a 400 naming it (``code: unsupported_parameter``; a value, such as an image
content part or ``modalities: ["audio"]``, ``unsupported_value``) rather than answered as if
it had worked. A field that asks for nothing the answer depends on (``metadata``, ``store``,
``service_tier``, ...) is accepted and ignored. Any other unknown field is ignored too, as
clients send vendor extras; ``null`` counts as left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr
from pydantic_core import PydanticCustomError

# Content part types of OpenAI's chat messages that carry no text, and what each would be.
_PART_KINDS = {
    "image_url": "images",
    "input_image": "images",
    "input_audio": "audio input",
    "audio": "audio input",
    "file": "files",
    "input_file": "files",
    "refusal": "refusal parts",
}


def text_part_type(value: str) -> str:
    """A content part's ``type``: ``text``, else a refusal naming what the part would be."""
    if value == "text":
        return value
    kind = _PART_KINDS.get(value)
    shown = value if len(value) <= 40 else f"{value[:40]}..."
    why = f"the served models do not read {kind}" if kind else "only text parts are read"
    raise PydanticCustomError(
        "unsupported_value",
        f"content parts of type {shown!r} are not supported: {why}; send the content as a "
        'string or as {"type": "text", "text": ...} parts',
    )


PartType = Annotated[StrictStr, AfterValidator(text_part_type)]

_AUDIO = "audio output; the served models generate text only"
_PREDICTION = "predicted outputs (speculative decoding from given text)"
_SEARCH = "web search; the served models answer from their weights"
_REASONING = "reasoning effort; the served models have no reasoning mode"
_VERBOSITY = "verbosity; bound the answer with max_tokens or the prompt"


def _refused(why: str) -> Callable[[Any], None]:
    def refuse(value: Any) -> None:
        if value is None:
            return None
        raise PydanticCustomError("unsupported_parameter", "not supported: {why}", {"why": why})

    return refuse


def _text_modalities(value: Any) -> Any:
    if value is None or value == ["text"]:
        return value
    raise PydanticCustomError(
        "unsupported_value",
        'only ["text"] is supported: the served models generate text, not audio',
    )


def _refused_field(why: str) -> Any:
    """An optional field of any type refused when set (``why``: what it would ask for)."""
    return Field(default=None, description=f"Refused (400): {why}")


class UnsupportedChatFields(BaseModel):
    """Chat fields of OpenAI's API this server refuses when set (mixed into the request)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    audio: Annotated[Any, AfterValidator(_refused(_AUDIO))] = _refused_field(_AUDIO)
    modalities: Annotated[Any, AfterValidator(_text_modalities)] = None
    prediction: Annotated[Any, AfterValidator(_refused(_PREDICTION))] = _refused_field(_PREDICTION)
    web_search_options: Annotated[Any, AfterValidator(_refused(_SEARCH))] = _refused_field(_SEARCH)
    reasoning_effort: Annotated[Any, AfterValidator(_refused(_REASONING))] = _refused_field(
        _REASONING
    )
    verbosity: Annotated[Any, AfterValidator(_refused(_VERBOSITY))] = _refused_field(_VERBOSITY)


class IgnoredMetadata(BaseModel):
    """OpenAI's fields that change nothing in the answer: accepted (typed loosely) and ignored.
    ``user`` is in the sampling fields, also ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    metadata: Annotated[
        dict[str, Any] | None, Field(description="Accepted and ignored (not stored)")
    ] = None
    store: Annotated[
        StrictBool | None, Field(description="Accepted and ignored: completions are not stored")
    ] = None
    service_tier: Annotated[StrictStr | None, Field(description="Accepted and ignored")] = None
    prompt_cache_key: Annotated[
        StrictStr | None,
        Field(description="Accepted and ignored: prefix caching is automatic"),
    ] = None
    safety_identifier: Annotated[StrictStr | None, Field(description="Accepted and ignored")] = None
