"""Worker process entry: load one model, then serve frames on an inherited socket.

    python -m lmaas.worker --fd N --name NAME --model-path FILE --engine-json '{...}'

Frames are length-prefixed msgpack maps (see ``lmaas.engine.ipc``). A reader thread answers
pings and validates new requests at once; a request with a grammar is prepared on a thread of
its own (``worker/preparer.py``), so that building it never delays a ping; the step loop runs
on the main thread.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from lmaas.config import EngineConfig
from lmaas.engine.ipc import FrameError, encode_frame, read_frame_blocking
from lmaas.errors import InternalError, InvalidRequestError, LmaasError
from lmaas.protocol.engine import GenerateRequest, TokenEvent
from lmaas.protocol.tasks import TaskRequest, TaskResult
from lmaas.worker.preparer import SlowPreparer, needs_slow_prepare
from lmaas.worker.resources import hf_kv_bytes_per_token, llama_kv_bytes_per_token, measurement
from lmaas.worker.tasks import TaskLoop

if TYPE_CHECKING:
    from lmaas.worker.intake import ActiveRequest
    from lmaas.worker.loop import EngineLoop
log = logging.getLogger("lmaas.worker")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker if the gateway dies, even by ``kill -9``."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class WorkerServer:
    """Serves one worker's frames. A llama.cpp worker has a generation ``loop`` and answers
    tokenize/detokenize tasks inline (they only read the vocabulary); a transformers worker has
    a ``tasks`` loop that batches every task."""

    def __init__(
        self,
        sock: socket.socket,
        loop: EngineLoop | None,
        info: dict[str, Any],
        *,
        tasks: TaskLoop | None = None,
        inline_task: Callable[[TaskRequest], TaskResult | None] | None = None,
        grammar_timeout_s: float = 20.0,
    ) -> None:
        self.sock = sock
        self.loop = loop
        self.tasks = tasks
        self.inline_task = inline_task
        self.info = info
        self._send_lock = threading.Lock()
        self.preparer: SlowPreparer | None = None
        if loop is not None:
            loop.emit = self.emit_events
            self.preparer = SlowPreparer(
                loop.prepare, self._accept, self.reject, loop.discard, timeout_s=grammar_timeout_s
            )
        if tasks is not None:
            tasks.emit = self.emit_task_result

    def send(self, frame: dict[str, Any]) -> None:
        data = encode_frame(frame)
        with self._send_lock:
            self.sock.sendall(data)

    def emit_events(self, events: list[TokenEvent], stats: dict[str, int]) -> None:
        if events:
            self.send({"k": "ev", "evs": [e.to_wire() for e in events], "s": stats})

    def emit_task_result(
        self, request_id: str, result: TaskResult | None, error: LmaasError | None
    ) -> None:
        frame: dict[str, Any] = {"k": "task_result", "r": request_id, "s": self.stats()}
        if result is not None:
            frame["res"] = result.model_dump()
        else:
            frame["e"] = (error or InternalError("the task produced no result")).to_wire()
        self.send(frame)

    def reject(self, request_id: Any, error: LmaasError) -> None:
        """Refuse a generation request before it is queued."""
        self.send({"k": "rejected", "r": request_id, "e": error.to_wire()})

    def stats(self) -> dict[str, int]:
        if self.loop is not None:
            return self.loop.stats()
        return self.tasks.stats() if self.tasks is not None else {}

    def _stop_loops(self) -> None:
        if self.preparer is not None:
            self.preparer.stop()
        if self.loop is not None:
            self.loop.stop()
        if self.tasks is not None:
            self.tasks.stop()

    def _handle_task(self, raw: Any) -> None:
        rid = str(raw.get("request_id")) if isinstance(raw, dict) else ""
        try:
            req = TaskRequest.model_validate(raw)
        except ValidationError as exc:
            message = f"invalid task: {exc.errors()[0]['msg']}"
            self.emit_task_result(rid, None, InvalidRequestError(message))
            return
        if self.tasks is not None:
            self.tasks.submit(req)
            return
        if self.inline_task is None:
            error = InvalidRequestError("this worker runs no tasks", param="model")
            self.emit_task_result(rid, None, error)
            return
        try:
            result = self.inline_task(req)
        except LmaasError as exc:
            self.emit_task_result(rid, None, exc)
            return
        except Exception:  # never let one request kill the reader thread
            log.exception("task %s failed", rid)
            self.emit_task_result(rid, None, InternalError("the model failed to run this request"))
            return
        if result is not None:  # None: it runs elsewhere and emits its own result
            self.emit_task_result(rid, result, None)

    def read_forever(self) -> None:
        reader = self.sock.makefile("rb")
        try:
            while True:
                frame = read_frame_blocking(reader)
                if frame is None:
                    break
                self.handle(frame)
        except (OSError, FrameError) as exc:
            log.error("worker channel closed: %s", exc)
        finally:
            self._stop_loops()

    def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("k")
        if kind == "gen":
            self._handle_generate(frame.get("req"))
        elif kind == "task":
            self._handle_task(frame.get("req"))
        elif kind == "abort" and self.loop is not None:
            if self.preparer is not None:
                self.preparer.abort_or(str(frame.get("r")), self.loop.abort)
            else:
                self.loop.abort(str(frame.get("r")))
        elif kind == "ping":
            steps = self.loop.steps if self.loop is not None else getattr(self.tasks, "steps", 0)
            self.send({"k": "pong", "n": frame.get("n"), "s": self.stats(), "steps": steps})
        elif kind == "shutdown":
            self._stop_loops()

    def _handle_generate(self, raw: Any) -> None:
        rid = raw.get("request_id") if isinstance(raw, dict) else None
        if self.loop is None:
            error = InvalidRequestError("this model does not generate text", param="model")
            self.reject(rid, error)
            return
        try:
            req = GenerateRequest.model_validate(raw)
        except ValidationError as exc:
            message = f"invalid engine request: {exc.errors()[0]['msg']}"
            self.reject(rid, InvalidRequestError(message))
            return
        if self.preparer is not None and needs_slow_prepare(req):
            self.preparer.submit(req)
            return
        try:
            active = self.loop.prepare(req)
        except LmaasError as exc:
            self.reject(rid, exc)
            return
        except Exception:  # never let one request kill the reader thread
            log.exception("preparing %s failed", rid)
            self.reject(rid, InternalError("the request could not be prepared"))
            return
        self._accept(active)

    def _accept(self, active: ActiveRequest) -> None:
        assert self.loop is not None
        # Accept before queueing so the gateway never sees events ahead of the acceptance.
        rid = active.req.request_id
        self.send(
            {"k": "accepted", "r": rid, "pt": len(active.prompt_ids), "mt": active.max_new_tokens}
        )
        self.loop.submit(active)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmaas-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--engine-json", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("LMAAS_WORKER_LOG_LEVEL", "WARNING").upper(),
        format=f"%(asctime)s worker[{args.name}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sock = socket.socket(fileno=args.fd)
    config = EngineConfig.model_validate_json(args.engine_json)
    path = Path(args.model_path)
    try:
        server, run = _build(sock, args.name, path, config)
    except Exception as exc:
        sock.sendall(encode_frame({"k": "fatal", "message": f"cannot load model: {exc}"}))
        return 1
    server.send({"k": "ready", "info": server.info, "pid": os.getpid()})
    reader = threading.Thread(target=server.read_forever, name="ipc-reader", daemon=True)
    reader.start()
    run()
    return 0


def _build(
    sock: socket.socket, name: str, path: Path, config: EngineConfig
) -> tuple[WorkerServer, Callable[[], None]]:
    """Load the model with the backend its config (or its path) calls for."""
    from lmaas.worker.loop import EngineLoop

    if config.backend_for(path) == "transformers":
        from lmaas.worker.backends.transformers.guides import schema_regex
        from lmaas.worker.backends.transformers.tasks import TransformersBackend

        hf = TransformersBackend(name, path, config)
        tasks = TaskLoop(
            hf,
            lambda *_: None,
            max_batch=config.max_task_batch,
            window_s=config.task_batch_window_ms / 1000,
        )
        if hf.kind != "causal":
            info = {**hf.info().model_dump(), **measurement(0, 0)}
            return WorkerServer(sock, None, info, tasks=tasks), tasks.run
        # A causal model generates through the step loop on this thread, while scoring and
        # embedding keep their batching task loop on a thread of its own.
        slots = hf.generator()
        # json_object's automaton takes seconds to compile: start on it now, off every loop.
        slots.guides.prefetch(schema_regex({}))
        loop = EngineLoop(
            slots,
            lambda e, s: None,
            max_num_seqs=config.max_num_seqs,
            max_batch_tokens=config.max_batch_tokens,
            target_tpot_ms=config.target_tpot_ms,
            prefix_max_cells=config.prefix_cache_cells,
        )
        server = WorkerServer(
            sock,
            loop,
            {**hf.info().model_dump(), **measurement(hf_kv_bytes_per_token(hf.hf_config, 4), 0)},
            tasks=tasks,
            grammar_timeout_s=config.grammar_timeout_s,
        )

        def run_both() -> None:
            threading.Thread(target=tasks.run, name="tasks", daemon=True).start()
            loop.run()

        return server, run_both

    from lmaas.worker.backends.llamacpp.generate import LlamaCppBackend
    from lmaas.worker.backends.llamacpp.tasks import LlamaCppTasks

    backend = LlamaCppBackend(name, path, config)
    loop = EngineLoop(
        backend,
        lambda e, s: None,
        max_num_seqs=config.max_num_seqs,
        max_batch_tokens=config.max_batch_tokens,
        target_tpot_ms=config.target_tpot_ms,
        prefix_max_cells=config.prefix_cache_cells,
    )
    inline = LlamaCppTasks(backend, config)
    kv = llama_kv_bytes_per_token(backend.model)
    server = WorkerServer(
        sock,
        loop,
        {**inline.info().model_dump(), **measurement(kv, backend.context_size)},
        inline_task=inline.run,
        grammar_timeout_s=config.grammar_timeout_s,
    )
    inline.emit = server.emit_task_result
    return server, loop.run


if __name__ == "__main__":
    sys.exit(main())
