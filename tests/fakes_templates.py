"""A chat template pool that renders in the test's own process: for tests of what happens
around a rendering (prompts, placeholders, formats), not of the child processes."""

from __future__ import annotations

from typing import Any

from lmaas.gateway.serving.template import ChatRenderer, TemplatePool
from lmaas.gateway.serving.template_sandbox import answer


class InlineTemplatePool(TemplatePool):
    """The sandbox's own ``answer`` and the pool's error mapping, without a child process
    (and so without a time limit)."""

    def __init__(self, *, max_chars: int = 1 << 20) -> None:
        super().__init__(processes=1, timeout=1.0, max_chars=max_chars)

    async def render(self, template: str, variables: dict[str, Any]) -> str:
        return self._text(answer({"template": template, "variables": variables}, self.max_chars))


def inline_renderer() -> ChatRenderer:
    return ChatRenderer(InlineTemplatePool())
