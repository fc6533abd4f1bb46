"""Worker process entry: load one model, then serve frames on an inherited socket.

    python -m lmaas.worker --fd N --name NAME --model-path FILE --engine-json '{...}'

Frames are length-prefixed msgpack maps (see ``lmaas.engine.ipc``). A reader thread answers
pings and validates new requests at once; the step loop runs on the main thread.
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
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lmaas.config import EngineConfig
from lmaas.engine.ipc import FrameError, encode_frame, read_frame_blocking
from lmaas.protocol.engine import GenerateRequest, TokenEvent
from lmaas.worker.backends.llamacpp import LlamaCppBackend
from lmaas.worker.loop import EngineLoop, RequestRejected

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
    def __init__(self, sock: socket.socket, loop: EngineLoop, info: dict[str, Any]) -> None:
        self.sock = sock
        self.loop = loop
        self.info = info
        self._send_lock = threading.Lock()
        loop.emit = self.emit_events

    def send(self, frame: dict[str, Any]) -> None:
        data = encode_frame(frame)
        with self._send_lock:
            self.sock.sendall(data)

    def emit_events(self, events: list[TokenEvent], stats: dict[str, int]) -> None:
        if events:
            self.send({"k": "ev", "evs": [e.to_wire() for e in events], "s": stats})

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
            self.loop.stop()

    def handle(self, frame: dict[str, Any]) -> None:
        kind = frame.get("k")
        if kind == "gen":
            self._handle_generate(frame.get("req"))
        elif kind == "abort":
            self.loop.abort(str(frame.get("r")))
        elif kind == "ping":
            self.send(
                {"k": "pong", "n": frame.get("n"), "s": self.loop.stats(), "steps": self.loop.steps}
            )
        elif kind == "shutdown":
            self.loop.stop()

    def _handle_generate(self, raw: Any) -> None:
        rid = raw.get("request_id") if isinstance(raw, dict) else None
        try:
            req = GenerateRequest.model_validate(raw)
            active = self.loop.prepare(req)
        except ValidationError as exc:
            self.send(
                {
                    "k": "rejected",
                    "r": rid,
                    "e": {
                        "status": 400,
                        "message": f"invalid engine request: {exc.errors()[0]['msg']}",
                        "param": None,
                        "code": None,
                    },
                }
            )
            return
        except RequestRejected as exc:
            self.send({"k": "rejected", "r": rid, "e": exc.error})
            return
        # Accept before queueing so the gateway never sees events ahead of the acceptance.
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
    try:
        backend = LlamaCppBackend(args.name, Path(args.model_path), config)
    except Exception as exc:
        sock.sendall(encode_frame({"k": "fatal", "message": f"cannot load model: {exc}"}))
        return 1
    loop = EngineLoop(
        backend,
        lambda e, s: None,
        max_num_seqs=config.max_num_seqs,
        max_batch_tokens=config.max_batch_tokens,
    )
    server = WorkerServer(sock, loop, backend.info().model_dump())
    server.send({"k": "ready", "info": server.info, "pid": os.getpid()})
    reader = threading.Thread(target=server.read_forever, name="ipc-reader", daemon=True)
    reader.start()
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
