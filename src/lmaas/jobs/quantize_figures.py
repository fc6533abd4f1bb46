"""The figures of a GGUF model that a quantization job puts side by side: held-out perplexity,
generation speed and file size, measured with llama.cpp (through llama-cpp-python) in a child
process, so that a crash in native code fails the measurement and never the job runner::

    python -m lmaas.jobs.quantize_figures MODEL TEXT

Perplexity is ``exp`` of the mean negative log-likelihood of each token of the text given the
tokens before it, read in windows of :data:`WINDOW` tokens (each starting again after the
model's BOS token when it uses one), on at most :data:`MAX_EVAL_TOKENS` tokens. Speed is greedy
decoding of :data:`GENERATED_TOKENS` tokens after a fixed prompt on one thread, the faster of
:data:`SPEED_RUNS` runs (the machine is shared: the faster run is the one less disturbed).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import numpy as np

WINDOW: Final = 512
MAX_EVAL_TOKENS: Final = 4096
GENERATED_TOKENS: Final = 32
SPEED_RUNS: Final = 2
SPEED_PROMPT: Final = "Write a short paragraph about the history of the printing press."
_ERROR_TAIL_LINES: Final = 3


class FiguresError(RuntimeError):
    """The model could not be measured (llama.cpp refused it, crashed or ran too long)."""


@dataclass(frozen=True, slots=True)
class Figures:
    perplexity: float
    eval_tokens: int  # tokens whose likelihood the perplexity averages
    tokens_per_second: float
    generated_tokens: int
    size_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def builtin_text() -> str:
    """A few paragraphs of English written for this package: the held-out text when a job
    names no file."""
    return (resources.files("lmaas.jobs") / "data" / "heldout_en.txt").read_text("utf-8")


def measure(model: Path, text: Path, *, timeout: float | None = None) -> Figures:
    """The figures of the GGUF file ``model`` on the text in the file ``text``, measured in a
    child process; ``FiguresError`` when it fails or runs past ``timeout`` seconds."""
    command = [sys.executable, "-m", "lmaas.jobs.quantize_figures", str(model), str(text)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FiguresError(f"measuring {model.name} took longer than {timeout:g} s") from exc
    if done.returncode != 0:
        said = [line for line in done.stderr.strip().splitlines() if line.strip()]
        tail = " | ".join(said[-_ERROR_TAIL_LINES:]) or f"exit status {done.returncode}"
        for path in (model, text):
            tail = tail.replace(str(path), path.name)
        raise FiguresError(f"measuring {model.name} failed: {tail}")
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
        return Figures(**found)
    except (ValueError, IndexError, TypeError) as exc:
        raise FiguresError(f"measuring {model.name} gave no figures") from exc


# -- the child's side ---------------------------------------------------------------------------


def negative_log_likelihood(logits: np.ndarray, targets: Sequence[int]) -> float:
    """The summed ``-log softmax(logits[i])[targets[i]]`` over the rows (in float64)."""
    rows = np.asarray(logits, dtype=np.float64)
    top = rows.max(axis=1)
    log_norm = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))
    picked = rows[np.arange(len(targets)), np.asarray(targets)]
    return float((log_norm - picked).sum())


def windows(ids: Sequence[int], prefix: Sequence[int], size: int) -> list[list[int]]:
    """``ids`` cut into windows of at most ``size`` tokens in which every token but the first
    of ``ids`` is predicted once: each window starts with ``prefix`` (the BOS token), or
    without one, with the last token of the window before (as context only)."""
    if prefix:
        step = size - len(prefix)
        cut = [[*prefix, *ids[start : start + step]] for start in range(0, len(ids), step)]
    else:
        cut = [list(ids[start : start + size]) for start in range(0, len(ids) - 1, size - 1)]
    return [w for w in cut if len(w) >= 2]


def perplexity(llm: Any, text: str) -> tuple[float, int]:
    """(perplexity, tokens scored) of ``text`` under the llama-cpp-python model ``llm``."""
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[:MAX_EVAL_TOKENS]
    prefix = llm.tokenize(b"", add_bos=True, special=False)  # [BOS] when the model uses it
    total, count = 0.0, 0
    for window in windows(ids, prefix, WINDOW):
        llm.reset()
        llm.eval(window)
        total += negative_log_likelihood(llm.scores[: len(window) - 1], window[1:])
        count += len(window) - 1
    if count == 0:
        raise FiguresError("the held-out text has too few tokens to measure perplexity")
    return math.exp(total / count), count


def tokens_per_second(llm: Any) -> float:
    """Greedy decoding speed after :data:`SPEED_PROMPT`, the faster of :data:`SPEED_RUNS`."""
    prompt = llm.tokenize(SPEED_PROMPT.encode("utf-8"), add_bos=True, special=False)
    best = 0.0
    for _ in range(SPEED_RUNS):
        llm.reset()
        stamps: list[float] = []
        for _token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            stamps.append(time.perf_counter())  # the first comes after the prompt's eval
            if len(stamps) > GENERATED_TOKENS:
                break
        best = max(best, GENERATED_TOKENS / (stamps[-1] - stamps[0]))
    return best


def _measure_here(model: str, text_path: str) -> Figures:
    from llama_cpp import Llama

    llm = Llama(
        model_path=model,
        n_ctx=WINDOW,
        n_batch=WINDOW,
        n_threads=1,
        n_threads_batch=1,
        logits_all=True,
        verbose=False,
    )
    ppl, count = perplexity(llm, Path(text_path).read_text("utf-8"))
    rate = tokens_per_second(llm)
    return Figures(
        perplexity=round(ppl, 4),
        eval_tokens=count,
        tokens_per_second=round(rate, 2),
        generated_tokens=GENERATED_TOKENS,
        size_bytes=os.path.getsize(model),
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m lmaas.jobs.quantize_figures MODEL TEXT", file=sys.stderr)
        return 2
    try:
        figures = _measure_here(argv[0], argv[1])
    except (FiguresError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
