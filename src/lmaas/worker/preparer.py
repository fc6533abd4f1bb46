"""Preparing requests that are slow to prepare, away from the IPC reader thread.

A request with a grammar or a JSON schema needs it compiled before it can be accepted: tens of
milliseconds usually, but seconds for a large schema. A very long prompt, or a chat of many
messages (each tokenized as a span of its own), takes the tokenizer a while too. The reader
thread must keep answering health pings meanwhile (a worker that misses them is killed as
hung), so such requests are prepared here, one at a time, on a thread of this class's own.

A build cannot be interrupted (llama.cpp compiles in C), so the time limit is kept by waiting
for it on a thread apart from the build's: a build that runs over ``timeout_s`` gets its request
refused with a 400 at once, and finishes in the background, where what it built is freed. While
such a build is still running, newer grammar requests are refused with a 503 rather than
stacked behind it.

An abort that arrives while its request is queued or building is kept, and the request is
dropped (nothing is sent for it) once its build ends.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lmaas.errors import InternalError, InvalidRequestError, LmaasError, ServiceUnavailableError
from lmaas.protocol.engine import GenerateRequest

if TYPE_CHECKING:
    from lmaas.worker.intake import ActiveRequest

log = logging.getLogger(__name__)


# A prompt this long (characters, or token ids), or made of this many spans, may take the
# tokenizer a noticeable time (2,000 chat messages: ~0.6 s): it is prepared here too.
LONG_PROMPT = 32_768
MANY_SPANS = 256


def needs_slow_prepare(req: GenerateRequest) -> bool:
    """Whether ``req`` may take long to prepare: a sampler with a grammar to build, or a
    prompt long enough that tokenizing it would hold up the reader thread."""
    if req.sampling.constrained:
        return True
    return len(req.prompt) > LONG_PROMPT or len(req.text_spans) > MANY_SPANS


@dataclass(slots=True, eq=False)
class _Build:
    req: GenerateRequest
    done: threading.Event = field(default_factory=threading.Event)
    active: ActiveRequest | None = None
    error: LmaasError | None = None
    overran: bool = False  # its request was refused for taking too long


class SlowPreparer:
    """Runs ``prepare`` for requests that ``needs_slow_prepare`` picks, under a deadline.

    Then exactly one of: ``accept(active)`` (the request is ready to run), ``reject(request_id,
    error)``, or, for a request aborted meanwhile, ``release(active)`` if anything was built.
    ``accept`` and ``abort_or`` run under one lock, so an abort is never lost between a
    request leaving this class and reaching the step loop.
    """

    def __init__(
        self,
        prepare: Callable[[GenerateRequest], ActiveRequest],
        accept: Callable[[ActiveRequest], None],
        reject: Callable[[str, LmaasError], None],
        release: Callable[[ActiveRequest], None],
        *,
        timeout_s: float,
    ) -> None:
        self._prepare = prepare
        self._accept = accept
        self._reject = reject
        self._release = release
        self.timeout_s = timeout_s
        self._jobs: queue.SimpleQueue[GenerateRequest | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._aborted: set[str] = set()
        self._overrunning = 0
        self._thread = threading.Thread(target=self._run, name="grammar-prepare", daemon=True)
        self._thread.start()

    def submit(self, req: GenerateRequest) -> None:
        with self._lock:
            self._pending.add(req.request_id)
        self._jobs.put(req)

    def abort_or(self, request_id: str, otherwise: Callable[[str], None]) -> None:
        """Drop ``request_id`` if it is still being prepared here, else call ``otherwise``."""
        with self._lock:
            if request_id in self._pending:
                self._aborted.add(request_id)
                return
            otherwise(request_id)

    def stop(self) -> None:
        self._jobs.put(None)

    @property
    def overrunning(self) -> int:
        """Builds still running after their request was refused for taking too long."""
        with self._lock:
            return self._overrunning

    def _run(self) -> None:
        while (req := self._jobs.get()) is not None:
            try:
                self._one(req)
            except Exception:  # never let one request end this thread
                log.exception("preparing %s failed", req.request_id)
                self._finish(_Build(req, error=InternalError("the request could not be prepared")))

    def _one(self, req: GenerateRequest) -> None:
        rid = req.request_id
        with self._lock:
            if rid in self._aborted:
                self._pending.discard(rid)
                self._aborted.discard(rid)
                return
            busy = self._overrunning > 0
        if busy:
            self._finish(
                _Build(
                    req,
                    error=ServiceUnavailableError(
                        "this model's worker is still busy with a grammar that ran over its "
                        "time limit; retry shortly"
                    ),
                )
            )
            return
        build = _Build(req)
        threading.Thread(target=self._build, args=(build,), name="grammar", daemon=True).start()
        build.done.wait(self.timeout_s)
        with self._lock:
            if not build.done.is_set():
                build.overran = True
                self._overrunning += 1
        if build.overran:
            log.warning("request %s: grammar build ran over %.1f s", rid, self.timeout_s)
            what = "response_format" if req.sampling.tool_calls is None else "tools"
            self._finish(
                _Build(
                    req,
                    error=InvalidRequestError(
                        f"the {what} took longer than {self.timeout_s:g} s to turn into a "
                        "grammar; simplify the schema",
                        param=what,
                        code="grammar_timeout",
                    ),
                )
            )
            return
        self._finish(build)

    def _build(self, build: _Build) -> None:
        try:
            build.active = self._prepare(build.req)
        except LmaasError as exc:
            build.error = exc
        except Exception:
            log.exception("building the sampler of %s failed", build.req.request_id)
            build.error = InternalError("the request could not be prepared")
        with self._lock:
            build.done.set()
            overran = build.overran
            if overran:
                self._overrunning -= 1
        if overran and build.active is not None:
            self._release(build.active)

    def _finish(self, build: _Build) -> None:
        """Hand one request on: to the step loop, back as refused, or (aborted) nowhere."""
        rid = build.req.request_id
        with self._lock:
            self._pending.discard(rid)
            aborted = rid in self._aborted
            self._aborted.discard(rid)
            if not aborted and build.active is not None:
                self._accept(build.active)
                return
        if build.active is not None:
            self._release(build.active)
        elif not aborted:
            self._reject(rid, build.error or InternalError("the request could not be prepared"))
