"""Prefix caching (issue 16): time to first token when requests share a long prompt prefix.

    python bench/prefix.py                    # the full run: lmaas, llama-server, raw engine
    python bench/prefix.py --quick            # a smoke run: short prompt, 4 streams, 1 rep

Chat completions on the shipped default model, streamed, temperature 0, end of text banned
through logit_bias (every answer has exactly its max_tokens). The system prompt is ~1,000 tokens
of CPython's own documentation (``pydoc_data.topics``, shipped with every CPython), cut to
``--prompt-tokens`` with the model's tokenizer. Every measurement gets a system prompt of its
own (its first words name a session), so no measurement finds what another left in a cache.

- sequential: one system prompt, ``--questions`` different short questions sent one after
  another (``--max-tokens`` each): TTFT of request 1 and of the requests after it;
- concurrent: ``--streams`` questions sharing one system prompt, all sent at once
  (``--stream-tokens`` each): output tok/s, TTFT p50/p95; "cold" when nobody sent that system
  prompt before, "warm" after one request with it has finished;
- conversation: ``--turns`` turns, each resending the earlier turns with their answers
  (``--answer-tokens``) plus a new question: TTFT per turn.

Systems:

- ``lmaas``: one server (``engine.context_size`` = ``--context``), with its prefix cache as
  configured by default, and without it: per request (``"cache_prompt": false`` on the same
  server, ``--lmaas-off request``) and/or a second server started with
  ``engine.prefix_cache: false`` (``--lmaas-off server``);
- ``llama-server``: llama.cpp's C++ server (``bench/llama_server.py``), its prompt cache as by
  default: ``-np 4 -c 8192`` for sequential and conversation, ``-np <streams> -c <--context>``
  for concurrent (each slot holds its own copy of the prompt);
- ``raw``: llama-cpp-python's high-level ``Llama`` in this process (sequential and conversation
  only), which reuses the longest common prefix of consecutive calls itself.

Servers alternate within each repetition; tables show medians over ``--reps``. Prints a
markdown table per measurement and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import aiohttp
import llama_cpp
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import llama_server  # noqa: E402
from loadgen import RequestResult, one_request, percentile, summarize  # noqa: E402
from run import MODEL, Server, eog_bias, free_port, model_path, start_lmaas  # noqa: E402

Messages = list[dict[str, str]]
Send = Callable[[Messages, int], Awaitable[RequestResult]]

TOPICS = ["if", "while", "for", "try", "with", "function", "class", "assignment", "import"]
QUESTIONS = [
    "What does the else clause of a for loop do?",
    "When does a finally clause run?",
    "What is a context manager used for?",
    "How do I define a function with default arguments?",
    "What does the global statement change?",
    "What happens when break runs inside a while loop?",
    "How is an elif chain evaluated?",
    "What does a decorator do to a function?",
    "Can a class have more than one base class?",
    "What does import do the first time a module is loaded?",
    "What is the difference between a list and a tuple?",
    "What does augmented assignment like += do?",
    "How does a try statement pick an except clause?",
    "What does the with statement call on entry and exit?",
    "What is a keyword-only parameter?",
    "What does a return statement without a value return?",
]
FOLLOW_UPS = [
    "What is the if statement for?",
    "And how does a while loop differ from it?",
    "Show a for loop that stops early.",
    "What would a try statement add to that loop?",
    "Summarise our conversation in one sentence.",
    "Which of these statements is used most often?",
    "What should a beginner learn next?",
]
QUICK = {
    "prompt_tokens": 200,
    "questions": 3,
    "streams": 4,
    "turns": 3,
    "stream_tokens": 16,
    "answer_tokens": 16,
    "max_tokens": 8,
    "reps": 1,
}


class Prompts:
    """Deterministic system prompts of about ``n_tokens`` tokens, each opening a new session."""

    def __init__(self, path: str, n_tokens: int) -> None:
        vocab = llama_cpp.Llama(path, vocab_only=True, verbose=False)
        tokens = vocab.tokenize("\n\n".join(topics[t] for t in TOPICS).encode(), add_bos=False)
        if len(tokens) < n_tokens:
            raise SystemExit(f"--prompt-tokens can be at most {len(tokens)}")
        self.reference = vocab.detokenize(tokens[:n_tokens]).decode(errors="ignore")
        self.sessions = 0
        # What one system prompt holds, without the chat template's few tokens around it.
        self.n_tokens = len(vocab.tokenize(self.text(1).encode(), add_bos=False))

    def text(self, session: int) -> str:
        return (
            f"Session {session}. You are a concise assistant for Python programmers. "
            f"Answer from this reference:\n\n{self.reference}"
        )

    def fresh(self) -> str:
        self.sessions += 1
        return self.text(self.sessions)


@dataclass
class Row:
    """One system of the tables (a server and what its requests add) and its figures."""

    name: str
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


Pair = tuple[Row, Send]


def http_sender(
    session: aiohttp.ClientSession, url: str, bias: dict[str, float], extra: dict[str, Any]
) -> Send:
    async def send(messages: Messages, max_tokens: int) -> RequestResult:
        payload = {
            "model": MODEL,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "logit_bias": bias,
            "stream": True,
            "stream_options": {"include_usage": True},
            **extra,
        }
        return await one_request(session, f"{url}/v1/chat/completions", payload)

    return send


def raw_sender(llm: Any, bias: dict[str, float]) -> Send:
    """llama-cpp-python's ``create_chat_completion``, timed like a streaming client."""
    int_bias = {int(k): v for k, v in bias.items()}

    async def send(messages: Messages, max_tokens: int) -> RequestResult:
        start = time.perf_counter()
        stamps: list[float] = []
        pieces: list[str] = []
        for chunk in llm.create_chat_completion(
            messages=messages,
            max_tokens=max_tokens,
            temperature=0,
            logit_bias=int_bias,
            stream=True,
        ):
            piece = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if piece:
                stamps.append(time.perf_counter())
                pieces.append(piece)
        if not stamps:
            return RequestResult(ok=False, error="no output")
        return RequestResult(
            ok=True,
            ttft=stamps[0] - start,
            e2e=stamps[-1] - start,
            output_tokens=len(stamps),
            text="".join(pieces),
        )

    return send


def checked(result: RequestResult) -> RequestResult:
    if not result.ok:
        raise RuntimeError(f"request failed: {result.error}")
    return result


def chat(system: str, question: str) -> Messages:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


async def sequential(send: Send, system: str, n: int, max_tokens: int) -> dict[str, Any]:
    """``n`` different questions after one system prompt, one after another."""
    out = [checked(await send(chat(system, q), max_tokens)) for q in QUESTIONS[:n]]
    return {"ttft": [r.ttft for r in out], "cached": [r.cached_tokens for r in out]}


async def conversation(send: Send, system: str, turns: int, max_tokens: int) -> dict[str, Any]:
    """Each turn resends the conversation so far, the last answer included, and a question."""
    msgs: Messages = [{"role": "system", "content": system}]
    ttft, cached = [], []
    for question in FOLLOW_UPS[:turns]:
        msgs.append({"role": "user", "content": question})
        r = checked(await send(msgs, max_tokens))
        msgs.append({"role": "assistant", "content": r.text})
        ttft.append(r.ttft)
        cached.append(r.cached_tokens)
    return {"ttft": ttft, "cached": cached}


async def concurrent(
    send: Send, system: str, streams: int, max_tokens: int, warm: bool
) -> dict[str, Any]:
    """``streams`` questions sharing ``system``, sent at once; after a first request if warm."""
    if warm:
        checked(await send(chat(system, "Hello."), 4))
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(streams)]
    start = time.perf_counter()
    results = await asyncio.gather(*(send(chat(system, q), max_tokens) for q in questions))
    out = summarize(list(results), time.perf_counter() - start, streams)
    out["ttft_p95"] = percentile([r.ttft for r in results if r.ok], 95)
    out["cached"] = [r.cached_tokens for r in results]
    return out


async def measure(
    pairs: list[Pair], prompts: Prompts, args: argparse.Namespace, which: set[str]
) -> None:
    """The measurements in ``which``, on each system in turn (they share one machine)."""
    for _, send in pairs:
        checked(await send([{"role": "user", "content": "Hi."}], 4))  # warm-up: nothing timed
    for name, run, size, tokens in (
        ("sequential", sequential, args.questions, args.max_tokens),
        ("conversation", conversation, args.turns, args.answer_tokens),
    ):
        if name in which:
            for row, send in pairs:
                res = await run(send, prompts.fresh(), size, tokens)
                row.runs.setdefault(name, []).append(res)
                print(f"  {row.name} {name}: TTFT {fmt(res['ttft'])}", flush=True)
    if "concurrent" not in which:
        return
    for row, send in pairs:
        for warm in (False, True):
            res = await concurrent(send, prompts.fresh(), args.streams, args.stream_tokens, warm)
            row.runs.setdefault("concurrent " + ("warm" if warm else "cold"), []).append(res)
            print(
                f"  {row.name} {args.streams} streams {'warm' if warm else 'cold'}: "
                f"{res['output_tok_s']:.1f} tok/s, TTFT p50 {res['ttft_p50']:.2f}s "
                f"p95 {res['ttft_p95']:.2f}s, failed {res['failed']}",
                flush=True,
            )


def fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


@contextlib.asynccontextmanager
async def client(server: Server) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """A session to ``server``; the server stops when the block ends."""
    try:
        # A connection per request: llama-server closes a connection after a stream, and a
        # reused one fails to send the next request ("Can not write request body").
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=1800)
        ) as session:
            yield server.url, session
    finally:
        server.stop()


def start_llama_server(path: str, parallel: int, ctx_size: int) -> Server:
    port = free_port()
    argv = llama_server.server_argv(
        llama_server.binary_path(), path, MODEL, port, os.cpu_count() or 1, parallel, ctx_size
    )
    return Server(argv, port, "/health")


def conversation_ctx(args: argparse.Namespace) -> int:
    """Context one sequential run or conversation needs, with room for the chat template."""
    return max(2048, args.prompt_tokens + args.turns * (args.answer_tokens + 64) + 256)


async def rep_llama_server(
    rows: dict[str, Row], path: str, prompts: Prompts, bias: dict[str, float], args: Any
) -> None:
    row = rows.setdefault("llama-server", Row("llama-server"))
    which = {"sequential", "conversation"} & set(args.measure)
    if which:
        server = start_llama_server(path, 4, 4 * conversation_ctx(args))
        async with client(server) as (url, s):
            await measure([(row, http_sender(s, url, bias, {}))], prompts, args, which)
    if "concurrent" in args.measure:
        server = start_llama_server(path, args.streams, args.context)
        async with client(server) as (url, s):
            await measure([(row, http_sender(s, url, bias, {}))], prompts, args, {"concurrent"})


def lmaas_config(context: int, prefix_cache: bool | None) -> dict[str, Any]:
    engine: dict[str, Any] = {"context_size": context}
    if prefix_cache is not None:
        engine["prefix_cache"] = prefix_cache
    return {"models": [{"name": MODEL, "engine": engine}]}


async def rep_lmaas(
    rows: dict[str, Row], path: str, prompts: Prompts, bias: dict[str, float], args: Any
) -> None:
    which = set(args.measure)
    async with client(start_lmaas(lmaas_config(args.context, None))) as (url, s):
        pairs = [(rows.setdefault("lmaas", Row("lmaas")), http_sender(s, url, bias, {}))]
        if "request" in args.lmaas_off:
            name = "lmaas cache_prompt=false"
            off = http_sender(s, url, bias, {"cache_prompt": False})
            pairs.append((rows.setdefault(name, Row(name)), off))
        await measure(pairs, prompts, args, which)
    if "server" in args.lmaas_off:
        name = "lmaas prefix_cache=false"
        async with client(start_lmaas(lmaas_config(args.context, False))) as (url, s):
            pair = (rows.setdefault(name, Row(name)), http_sender(s, url, bias, {}))
            await measure([pair], prompts, args, which)


async def rep_raw(
    rows: dict[str, Row], path: str, prompts: Prompts, bias: dict[str, float], args: Any
) -> None:
    which = {"sequential", "conversation"} & set(args.measure)
    if not which:
        return
    threads = os.cpu_count() or 1
    llm = llama_cpp.Llama(
        path, n_ctx=conversation_ctx(args), n_batch=512, n_threads=threads, verbose=False
    )
    try:
        await measure(
            [(rows.setdefault("raw", Row("raw")), raw_sender(llm, bias))], prompts, args, which
        )
    finally:
        llm.close()


LMAAS_VS_PEER = ("lmaas", "llama-server")
REPS = {"lmaas": rep_lmaas, "llama-server": rep_llama_server, "raw": rep_raw}


def median(values: list[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def cached_cell(values: list[int | None]) -> str:
    """The prompt tokens servers said they reused: one figure, or the range when they differ."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{min(known)}" if min(known) == max(known) else f"{min(known)}-{max(known)}"


def sequential_table(rows: list[Row], n: int) -> str:
    lines = [
        f"| system | TTFT request 1 (s) | TTFT requests 2-{n}, median (s) | min-max (s) |"
        f" cached prompt tokens, requests 2-{n} |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        runs = row.runs.get("sequential") or []
        if not runs:
            continue
        later = [v for r in runs for v in r["ttft"][1:]]
        lines.append(
            f"| {row.name} | {median([r['ttft'][0] for r in runs]):.2f} | {median(later):.2f} | "
            f"{min(later, default=float('nan')):.2f}-{max(later, default=float('nan')):.2f} | "
            f"{cached_cell([c for r in runs for c in r['cached'][1:]])} |"
        )
    return "\n".join(lines)


def conversation_table(rows: list[Row], turns: int) -> str:
    lines = [
        "| system | " + " | ".join(f"turn {i + 1}" for i in range(turns)) + " |",
        "|---|" + "---:|" * turns,
    ]
    for row in rows:
        runs = row.runs.get("conversation") or []
        if not runs:
            continue
        cells = []
        for i in range(turns):
            cached = cached_cell([r["cached"][i] for r in runs])
            ttft = median([r["ttft"][i] for r in runs])
            cells.append(f"{ttft:.2f} s" + ("" if cached == "-" else f" ({cached} cached)"))
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def concurrent_table(rows: list[Row], streams: int) -> str:
    lines = [
        "| system | system prompt | streams | output tok/s | TTFT p50 (s) | TTFT p95 (s) |"
        " cached prompt tokens per request | failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for state in ("cold", "warm"):
            runs = row.runs.get(f"concurrent {state}") or []
            if not runs:
                continue

            def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
                return median([r[key] for r in runs])

            lines.append(
                f"| {row.name} | {state} | {streams} | {med('output_tok_s'):.1f} | "
                f"{med('ttft_p50'):.2f} | {med('ttft_p95'):.2f} | "
                f"{cached_cell([c for r in runs for c in r['cached']])} | "
                f"{sum(r['failed'] for r in runs)} |"
            )
    return "\n".join(lines)


def target(rows: dict[str, Row], n: int) -> str | None:
    """Issue 16: lmaas's TTFT for requests 2-n no worse than llama-server's."""
    runs = [rows[name].runs.get("sequential") if name in rows else None for name in LMAAS_VS_PEER]
    if not all(runs):
        return None
    ours, theirs = (median([v for r in rs or [] for v in r["ttft"][1:]]) for rs in runs)
    return (
        f"TTFT of requests 2-{n}, median: lmaas {ours:.2f}s vs llama-server {theirs:.2f}s "
        f"(target: no worse) {'PASS' if ours <= theirs else 'FAIL'}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    systems = list(REPS)
    measures = ["sequential", "concurrent", "conversation"]
    ap.add_argument("--systems", nargs="+", choices=systems, default=systems)
    ap.add_argument("--measure", nargs="+", choices=measures, default=measures)
    ap.add_argument(
        "--lmaas-off",
        nargs="*",
        choices=["request", "server"],
        default=["request"],
        help="how lmaas runs without its prefix cache: the request field cache_prompt: false "
        "on the same server, a second server with engine.prefix_cache: false, or both",
    )
    ap.add_argument("--prompt-tokens", type=int, default=1000, help="system prompt length")
    ap.add_argument("--questions", type=int, default=6, help="sequential requests")
    ap.add_argument("--max-tokens", type=int, default=16, help="answer length, sequential")
    ap.add_argument("--streams", type=int, default=16, help="concurrent streams")
    ap.add_argument("--stream-tokens", type=int, default=64, help="answer length, concurrent")
    ap.add_argument("--turns", type=int, default=5, help="conversation turns")
    ap.add_argument("--answer-tokens", type=int, default=48, help="answer length, conversation")
    ap.add_argument(
        "--context",
        type=int,
        help="KV cells of lmaas's worker (engine.context_size) and of llama-server's "
        "concurrent run (default: room for every stream's prompt and answer, at least 8192)",
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    args = ap.parse_args(argv)
    if args.quick:  # the quick values, unless given explicitly
        ap.set_defaults(**QUICK)
        args = ap.parse_args(argv)
    if args.questions > len(QUESTIONS) or args.turns > len(FOLLOW_UPS):
        ap.error(f"at most {len(QUESTIONS)} questions and {len(FOLLOW_UPS)} turns")
    if args.context is None:
        per_stream = -(-(args.prompt_tokens + args.stream_tokens + 128) // 256) * 256
        args.context = max(8192, args.streams * per_stream)
    return args


def main() -> None:
    args = parse_args()
    path = model_path()
    bias = eog_bias(path)
    prompts = Prompts(path, args.prompt_tokens)
    if "llama-server" in args.systems:
        llama_server.ensure_binary()  # before any timing: the first build takes minutes
    machine = f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM"
    print(f"machine: {machine}; model {Path(path).name}; system prompt {prompts.n_tokens} tokens")
    rows: dict[str, Row] = {}
    for rep in range(args.reps):
        for system in args.systems:
            print(f"== rep {rep + 1}/{args.reps}: {system}", flush=True)
            asyncio.run(REPS[system](rows, path, prompts, bias, args))
    ordered = list(rows.values())
    tables = {
        "sequential": sequential_table(ordered, args.questions),
        "concurrent": concurrent_table(ordered, args.streams),
        "conversation": conversation_table(ordered, args.turns),
    }
    for name in args.measure:
        print(f"\n### {name}\n\n{tables[name]}")
    if check := target(rows, args.questions):
        print(f"\n{check}")
    print(
        json.dumps(
            {
                "bench": "prefix",
                "machine": machine,
                "model": Path(path).name,
                "system_prompt_tokens": prompts.n_tokens,
                "args": vars(args),
                "results": {row.name: row.runs for row in ordered},
            }
        )
    )


if __name__ == "__main__":
    main()
