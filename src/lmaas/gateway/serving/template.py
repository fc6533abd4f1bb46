"""Chat prompts rendered from the model's own template (GGUF metadata), in a Jinja sandbox."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import ModelInfo
from lmaas.protocol.openai import ChatMessage

# Used only when a model file carries no template.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(source)


def render_chat(info: ModelInfo, messages: list[ChatMessage]) -> str:
    """The prompt text for ``messages`` followed by the assistant's turn opener."""
    template = _compile(info.chat_template or CHATML_TEMPLATE)
    plain = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for m in messages
    ]
    try:
        return str(
            template.render(
                messages=plain,
                add_generation_prompt=True,
                bos_token=info.bos_token,
                eos_token=info.eos_token,
            )
        )
    except TemplateError as exc:
        raise InvalidRequestError(
            f"the messages do not fit this model's chat template: {exc}", param="messages"
        ) from exc
