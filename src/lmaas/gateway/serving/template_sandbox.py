"""The child process that renders chat templates: untrusted code, kept out of the gateway.

    python -m lmaas.gateway.serving.template_sandbox MAX_CHARS

A chat template comes with the model file, so whoever made the file wrote it. It runs here, in
a Jinja sandbox (no attribute or method that changes state, no access to Python internals),
under a memory limit, its output counted as it is produced; the gateway
(``template.TemplatePool``) gives it a time limit and kills this process when it runs over.
A template that loops forever or builds a huge string can so only stop this child, never
the gateway's event loop.

Frames are ``lmaas.engine.ipc`` msgpack frames on stdin and stdout: ``{"ready": true}`` once
started, then one answer per request: ``{"template", "variables"}`` in, ``{"text"}`` or
``{"error", "message"}`` out, where ``error`` is one of ``ERROR_KINDS``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import resource
import signal
import sys
from functools import lru_cache
from typing import Any, BinaryIO

from jinja2 import Template, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmaas.engine.ipc import encode_frame, read_frame_blocking

MEMORY_LIMIT = 512 << 20  # address space of this child; an allocation beyond raises MemoryError

# ``template``: the template refused these messages (``raise_exception``, a bad operation);
# ``compile``: the template is not valid Jinja; ``output``: it produced more than MAX_CHARS;
# ``memory``: it ran out of memory; ``failed``: any other exception while rendering.
ERROR_KINDS = ("template", "compile", "output", "memory", "failed")


class OutputTooLarge(Exception):
    """The template produced more characters than the limit."""


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=32)
def compile_template(source: str) -> Template:
    """The template compiled once per source; ``TemplateSyntaxError`` if it is not Jinja."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = _tojson
    return env.from_string(source)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """JSON as Hugging Face's template renderer writes it (tool-calling templates show tools
    with it): keys in their order and no HTML escaping, unlike Jinja's own ``tojson``."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def render(source: str, variables: dict[str, Any], max_chars: int) -> str:
    """The template's output; ``OutputTooLarge`` as soon as it passes ``max_chars``."""
    template = compile_template(source)
    parts: list[str] = []
    size = 0
    for part in template.generate(**variables):
        size += len(part)
        if size > max_chars:
            raise OutputTooLarge(f"the output passed {max_chars} characters")
        parts.append(part)
    return "".join(parts)


def answer(request: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """The reply frame for one request frame."""
    try:
        return {"text": render(str(request["template"]), dict(request["variables"]), max_chars)}
    except TemplateSyntaxError as exc:
        return _error("compile", exc)
    except TemplateError as exc:
        return _error("template", exc)
    except OutputTooLarge as exc:
        return _error("output", exc)
    except MemoryError as exc:
        return _error("memory", exc)
    except Exception as exc:  # the template's own bug, whatever it is
        return _error("failed", exc)


def _error(kind: str, exc: BaseException) -> dict[str, Any]:
    detail = str(exc)[:500]
    if kind != "template":  # a template's own message (raise_exception) stands alone
        detail = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return {"error": kind, "message": detail}


def _limit_self() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    with contextlib.suppress(OSError):  # die with the gateway, even after its kill -9
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def serve(stdin: BinaryIO, stdout: BinaryIO, max_chars: int) -> None:
    """Say ``{"ready": true}``, then answer frames until stdin ends."""
    stdout.write(encode_frame({"ready": True}))
    stdout.flush()
    while (request := read_frame_blocking(stdin)) is not None:
        stdout.write(encode_frame(answer(request, max_chars)))
        stdout.flush()


def main(argv: list[str]) -> int:
    _limit_self()
    serve(sys.stdin.buffer, sys.stdout.buffer, int(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
