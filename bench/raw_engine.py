"""The ceiling: llama.cpp's low-level API, one context, N sequences in one batch, no server.

    python bench/raw_engine.py MODEL.gguf --concurrency 1 4 16 32 --max-tokens 128

Each level prefills N prompts (chunked to n_batch) and decodes until every sequence has
``max-tokens`` tokens; greedy sampling with the end-of-sequence token banned (so every
sequence produces exactly max-tokens tokens). Context settings match lmaas's defaults.
Prints one JSON object per level.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import PROMPTS


def tokenize(vocab: object, text: str) -> list[int]:
    data = text.encode()
    buf = (llama_cpp.llama_token * (len(data) + 8))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(data) + 8, True, False)
    return list(buf[:n])


def make_sampler(vocab: object, n_vocab: int) -> object:
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    eog = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    bias = (llama_cpp.llama_logit_bias * len(eog))()
    for i, t in enumerate(eog):
        bias[i].token = t
        bias[i].bias = -float("inf")
    llama_cpp.llama_sampler_chain_add(
        chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(eog), bias)
    )
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    return chain


def run_level(
    model: object,
    vocab: object,
    n_vocab: int,
    n: int,
    max_tokens: int,
    n_batch: int,
    n_ctx: int,
    threads: int,
    unified: bool = True,
) -> dict[str, float]:
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_batch
    cparams.n_ubatch = n_batch
    cparams.n_seq_max = max(n, 1)
    cparams.kv_unified = unified
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
    samplers = [make_sampler(vocab, n_vocab) for _ in range(n)]
    prompts = [tokenize(vocab, PROMPTS[i % len(PROMPTS)]) for i in range(n)]

    def decode(entries: list[tuple[int, int, int, bool]]) -> None:
        for i, (tok, pos, seq, logits) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    start = time.perf_counter()
    pending = [
        (t, p, s, p == len(prompts[s]) - 1) for s in range(n) for p, t in enumerate(prompts[s])
    ]
    last_index: dict[int, int] = {}
    while pending:
        chunk, pending = pending[:n_batch], pending[n_batch:]
        decode(chunk)
        for i, (_, _, s, want) in enumerate(chunk):
            if want:
                last_index[s] = i
    tokens = [llama_cpp.llama_sampler_sample(samplers[s], ctx, last_index[s]) for s in range(n)]
    ttft = time.perf_counter() - start
    positions = [len(p) for p in prompts]
    produced = 1
    while produced < max_tokens:
        decode([(tokens[s], positions[s], s, True) for s in range(n)])
        tokens = [llama_cpp.llama_sampler_sample(samplers[s], ctx, s) for s in range(n)]
        positions = [p + 1 for p in positions]
        produced += 1
    wall = time.perf_counter() - start
    for s in samplers:
        llama_cpp.llama_sampler_free(s)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    decode_time = wall - ttft
    return {
        "concurrency": n,
        "output_tokens": n * max_tokens,
        "wall_s": wall,
        "output_tok_s": n * max_tokens / wall,
        "ttft_p50": ttft,
        "ttft_p99": ttft,
        "tpot_p50": decode_time / (max_tokens - 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--n-ctx", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--split-kv", action="store_true", help="kv_unified = false")
    args = ap.parse_args()

    @llama_cpp.llama_log_callback
    def quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        pass

    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(
        args.model.encode(), llama_cpp.llama_model_default_params()
    )
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    run_level(model, vocab, n_vocab, 1, 8, args.n_batch, args.n_ctx, args.threads)  # warm-up
    for n in args.concurrency:
        result = run_level(
            model,
            vocab,
            n_vocab,
            n,
            args.max_tokens,
            args.n_batch,
            args.n_ctx,
            args.threads,
            not args.split_kv,
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
