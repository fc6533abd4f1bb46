"""A stand-in for ``python -m lmaas.worker`` with the same command line and frames but no model:
it says ``ready`` (with the first bytes of the model file it was given as the model's
architecture), answers pings, and answers every generation request with the single token
"ok". Run as a script by the tests of cluster kinds."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from lmaas.engine.ipc import encode_frame, read_frame_blocking
from lmaas.protocol.engine import FinishReason, ModelInfo, TokenEvent


def fake_info(name: str, path: Path) -> ModelInfo:
    return ModelInfo(
        name=name,
        path=str(path),
        n_vocab=1000,
        n_ctx_train=1024,
        max_model_len=1024,
        context_size=1024,
        max_num_seqs=4,
        chat_template=None,
        bos_token="<s>",
        eos_token="</s>",
        add_bos=False,
        # the model file's first bytes: what the tests check arrived
        architecture=path.read_bytes()[:16].decode(errors="replace") if path.is_file() else "",
        n_params=1,
        size_bytes=1,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--engine-json", required=True)
    args = parser.parse_args()
    sock = socket.socket(fileno=args.fd)
    path = Path(args.model_path)
    info = fake_info(args.name, path).model_dump()
    sock.sendall(encode_frame({"k": "ready", "info": info}))
    reader = sock.makefile("rb")
    while (frame := read_frame_blocking(reader)) is not None:
        kind = frame.get("k")
        if kind == "ping":
            sock.sendall(encode_frame({"k": "pong", "n": frame.get("n"), "s": {}}))
        elif kind == "gen":
            rid = frame["req"]["request_id"]
            sock.sendall(encode_frame({"k": "accepted", "r": rid, "pt": 1, "mt": 1}))
            event = TokenEvent(
                rid, text="ok", token_ids=[1], finish_reason=FinishReason.STOP, completion_tokens=1
            )
            sock.sendall(encode_frame({"k": "ev", "evs": [event.to_wire()], "s": {}}))
        elif kind == "shutdown":
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
