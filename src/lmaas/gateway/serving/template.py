"""Chat prompts from the model's own template, rendered where a runaway template cannot hurt.

Two guarantees:

* **No freeze.** A chat template is code that came with the model file. ``TemplatePool``
  renders it in child processes (``template_sandbox``: a Jinja sandbox under a memory limit,
  its output counted), each with a time limit; a child that overruns is killed and replaced.
  The gateway's event loop only waits on a pipe, so ``/health`` and every other model keep
  answering while a bad template runs, and the request gets a 500 naming the limit.
* **No turn forgery.** Message content is text: ``<|im_end|>`` typed by a client must not end
  its turn. Before rendering, ``ChatRenderer.render`` replaces every special-token text in the
  content (``ModelInfo.special_tokens``) by a random placeholder, then puts the text back
  in the rendered prompt and reports where (``ChatPrompt.text_spans``); the worker tokenizes
  those spans as text and parses special tokens only elsewhere, in the template's markup.
  Content without special-token text renders and tokenizes exactly as it always did.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from lmaas.engine.ipc import FrameError, encode_frame, read_frame
from lmaas.errors import InternalError, InvalidRequestError, LmaasError
from lmaas.gateway.serving.tools import (
    ToolPlan,
    template_handles_tools,
    template_messages,
    template_tools,
)
from lmaas.protocol.engine import ModelInfo
from lmaas.protocol.openai import ChatMessage

# Used only when a model file carries no template.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

STARTUP_TIMEOUT = 60.0  # a child's interpreter start, apart from the render's own time limit
_LIMIT_CODE = "chat_template_limit"
_FAILED_CODE = "chat_template_error"

Child = asyncio.subprocess.Process


class TemplatePool:
    """Child processes that render chat templates, one render per child at a time.

    Children start on first use, up to ``processes``; a render waits for a free one. A render
    that takes longer than ``timeout`` seconds has its child killed (the next render starts a
    new one). ``close`` stops them all.
    """

    def __init__(self, *, processes: int, timeout: float, max_chars: int) -> None:
        self.timeout = timeout
        self.max_chars = max_chars
        self._slots = asyncio.Semaphore(processes)
        self._idle: list[Child] = []
        self._children: set[Child] = set()

    async def render(self, template: str, variables: dict[str, Any]) -> str:
        """The template's output for ``variables``; an ``LmaasError`` if it fails or overruns.

        ``InvalidRequestError`` (400) when the template refuses the messages, else
        ``InternalError`` (500): the model's template is at fault, not the request.
        """
        async with self._slots:
            child = self._idle.pop() if self._idle else await self._start()
            reply: dict[str, Any] | None = None
            try:
                reply = await self._ask(child, {"template": template, "variables": variables})
            finally:
                if reply is None or reply.get("error") == "memory":
                    await self._stop(child)
                else:
                    self._idle.append(child)
        return self._text(reply)

    async def close(self) -> None:
        """Stop every child, busy or idle."""
        for child in list(self._children):
            await self._stop(child)
        self._idle.clear()

    async def _start(self) -> Child:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lmaas.gateway.serving.template_sandbox",
            str(self.max_chars),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._children.add(child)
        try:
            ready = await asyncio.wait_for(self._read(child), STARTUP_TIMEOUT)
        except BaseException:
            await self._stop(child)
            raise
        if ready.get("ready") is not True:
            await self._stop(child)
            raise InternalError("the chat template renderer did not start", code=_FAILED_CODE)
        return child

    async def _ask(self, child: Child, request: dict[str, Any]) -> dict[str, Any]:
        assert child.stdin is not None
        try:
            child.stdin.write(encode_frame(request))
            await child.stdin.drain()
            return await asyncio.wait_for(self._read(child), self.timeout)
        except TimeoutError:
            raise InternalError(
                f"this model's chat template did not finish within {self.timeout:g} s "
                "(limits.chat_template_timeout) and was stopped; the model's template is at "
                "fault, not the request",
                code=_LIMIT_CODE,
            ) from None
        except (OSError, FrameError) as exc:
            raise _renderer_stopped() from exc

    @staticmethod
    async def _read(child: Child) -> dict[str, Any]:
        assert child.stdout is not None
        frame = await read_frame(child.stdout)
        if frame is None:
            raise _renderer_stopped()
        return frame

    async def _stop(self, child: Child) -> None:
        self._children.discard(child)
        if child.returncode is None:
            child.kill()
        await child.wait()

    def _text(self, reply: dict[str, Any]) -> str:
        kind, message = reply.get("error"), str(reply.get("message", ""))
        if kind is None:
            return str(reply["text"])
        if kind == "template":
            raise InvalidRequestError(
                f"the messages do not fit this model's chat template: {message}", param="messages"
            )
        if kind == "output":
            raise InternalError(
                f"this model's chat template produced more than {self.max_chars} characters "
                "(limits.chat_template_max_chars); the model's template is at fault",
                code=_LIMIT_CODE,
            )
        if kind == "memory":
            raise InternalError(
                "this model's chat template ran out of memory while rendering; the model's "
                "template is at fault",
                code=_LIMIT_CODE,
            )
        what = "is not valid Jinja" if kind == "compile" else "failed"
        raise InternalError(f"this model's chat template {what}: {message}", code=_FAILED_CODE)


def _renderer_stopped() -> LmaasError:
    return InternalError("the chat template renderer stopped unexpectedly", code=_FAILED_CODE)


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """A rendered chat prompt and the character spans of it that are only text.

    ``text_spans`` (sorted, disjoint ``(start, end)``) cover special-token text that came from
    message content; special tokens anywhere else in ``text`` are the template's markup.
    """

    text: str
    text_spans: tuple[tuple[int, int], ...] = ()


class ChatRenderer:
    """Chat prompts for any model: its template rendered by a ``TemplatePool``, its special
    tokens kept out of message content."""

    def __init__(self, pool: TemplatePool) -> None:
        self.pool = pool
        # id(info) -> (info, pattern): a model's ModelInfo lives as long as its worker does.
        self._patterns: dict[int, tuple[ModelInfo, re.Pattern[str] | None]] = {}

    async def render(
        self, info: ModelInfo, messages: list[ChatMessage], tools: ToolPlan | None = None
    ) -> ChatPrompt:
        """The prompt for ``messages`` (and the tools, if any: ``tools.py`` says how)
        followed by the assistant's turn opener."""
        hidden = _Placeholders(await self._pattern(info))
        template = info.chat_template or CHATML_TEMPLATE
        native = template_handles_tools(template)
        variables: dict[str, Any] = {
            "messages": template_messages(messages, hidden.hide, native=native, plan=tools),
            "add_generation_prompt": True,
            "bos_token": info.bos_token,
            "eos_token": info.eos_token,
        }
        if native and (shown := template_tools(tools, hidden.hide)) is not None:
            variables["tools"] = shown
        rendered = await self.pool.render(template, variables)
        return hidden.restore(rendered)

    async def close(self) -> None:
        await self.pool.close()

    async def _pattern(self, info: ModelInfo) -> re.Pattern[str] | None:
        if not info.special_tokens:
            return None
        cached = self._patterns.get(id(info))
        if cached is not None and cached[0] is info:
            return cached[1]
        # Thousands of tokens take a moment to compile: not on the event loop.
        pattern = await asyncio.to_thread(special_token_pattern, info.special_tokens)
        if len(self._patterns) >= _MAX_PATTERNS:
            self._patterns.pop(next(iter(self._patterns)))
        self._patterns[id(info)] = (info, pattern)
        return pattern


_MAX_PATTERNS = 64


def special_token_pattern(texts: list[str]) -> re.Pattern[str] | None:
    """A regex matching any of ``texts``, the longest where several start at one place.

    Built as a trie, so a scan costs about the same for 10 or 10,000 tokens (an alternation
    of 10,000 literals would try each at every ``<``). The worker bounds each text's length
    (``lmaas.worker.prompt``), which bounds the nesting.
    """
    trie: dict[str, Any] = {}
    for text in texts:
        if text:
            node = trie
            for ch in text:
                node = node.setdefault(ch, {})
            node[""] = {}  # a token ends here
    return re.compile(_trie_regex(trie)) if trie else None


def _trie_regex(node: dict[str, Any]) -> str:
    branches = [re.escape(ch) + _trie_regex(child) for ch, child in sorted(node.items()) if ch]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
    # A token that ends here and longer ones that go on: the greedy ``?`` tries longer first.
    return f"(?:{body})?" if "" in node else body


class _Placeholders:
    """Special-token text of message content swapped for placeholders and back.

    A placeholder is a random 20-digit number and a fixed-width index: digits, so no template
    filter (escaping, JSON, trimming) changes it, and unguessable, so content cannot forge one.
    """

    WIDTH = 7  # digits of the index: more special tokens than a 2 MiB body can hold

    def __init__(self, pattern: re.Pattern[str] | None) -> None:
        self.pattern = pattern
        self.nonce = f"{secrets.randbelow(10**20):020d}"
        self.texts: list[str] = []

    def hide(self, content: str) -> str:
        """``content`` with each special-token text replaced by a placeholder."""
        return content if self.pattern is None else self.pattern.sub(self._placeholder, content)

    def _placeholder(self, match: re.Match[str]) -> str:
        self.texts.append(match.group())
        return f"{self.nonce}{len(self.texts) - 1:0{self.WIDTH}d}"

    def restore(self, rendered: str) -> ChatPrompt:
        """``rendered`` with the texts back in place of the placeholders, and where they are."""
        if not self.texts:
            return ChatPrompt(rendered)
        pieces: list[str] = []
        spans: list[tuple[int, int]] = []
        pos = size = 0
        for match in re.finditer(f"{self.nonce}(\\d{{{self.WIDTH}}})", rendered):
            index = int(match.group(1))
            if index >= len(self.texts):
                continue
            pieces.append(rendered[pos : match.start()])
            size += match.start() - pos
            text = self.texts[index]
            pieces.append(text)
            if spans and spans[-1][1] == size:  # adjacent: one span
                spans[-1] = (spans[-1][0], size + len(text))
            else:
                spans.append((size, size + len(text)))
            size += len(text)
            pos = match.end()
        pieces.append(rendered[pos:])
        return ChatPrompt("".join(pieces), tuple(spans))
