"""The calibration behind `lmaas profile`: timed requests to one served replica, over the same
public API every client uses (so the per-request overhead it measures is a client's).

* **Prefill**: prompts of several lengths, uncached (``cache_prompt: false``), one output
  token, a few times each in turn: the fastest time per length (the planner interpolates in
  it), the overhead (the two shortest extrapolated to no prompt) and the longest's rate.
* **Decode**: ``b`` streams at once for each batch size ``b`` (``ignore_eos``, so each makes
  all its tokens; prompts of about 128 words, as a stream attends to its prompt); the rate is
  the tokens every stream made in the window where all ``b`` were decoding, over that window.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

WORDS = [
    "river",
    "stone",
    "lamp",
    "winter",
    "garden",
    "copper",
    "letter",
    "harbour",
    "violin",
    "meadow",
    "orbit",
    "candle",
    "thunder",
    "pepper",
    "canvas",
    "marble",
    "lantern",
    "saddle",
    "comet",
    "willow",
]


def text_of(words: int, seed: int) -> str:
    """A prompt of about ``words`` distinct-looking words (about as many tokens)."""
    return " ".join(WORDS[(i * 7 + seed * 13 + i // len(WORDS)) % len(WORDS)] for i in range(words))


@dataclass(frozen=True, slots=True)
class Prefill:
    tokens_per_s: float  # the longest prompt's tokens over its time less the overhead
    overhead_s: float  # the time a request of no prompt would take (extrapolated)
    seconds: dict[int, float]  # prompt tokens -> median time of a 1-token request


def prefill_of(times: dict[int, float]) -> Prefill:
    """The overhead (the two shortest prompts' times extrapolated to no prompt, within [0,
    the shortest's time]) and the longest prompt's rate, from prompt tokens -> seconds."""
    points = sorted(times.items())
    if len(points) < 2:
        raise RuntimeError("the prefill needs prompts of two lengths or more")
    (n0, t0), (n1, t1) = points[0], points[1]
    if n1 <= n0 or t1 <= t0:
        raise RuntimeError("the longer prompts were not slower than the shorter ones")
    overhead = min(max(0.0, t0 - n0 * (t1 - t0) / (n1 - n0)), t0)
    n_max, t_max = points[-1]
    return Prefill(tokens_per_s=n_max / (t_max - overhead), overhead_s=overhead, seconds=times)


class Calibration:
    """Timed requests to the deployment ``model`` at ``url`` with ``headers``."""

    def __init__(self, url: str, model: str, headers: dict[str, str], timeout: float) -> None:
        self.model = model
        self.decode_prompt_words = 128  # decode streams attend to a prompt of about this
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _timed(self, prompt: str) -> tuple[int, float]:
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0,
            "cache_prompt": False,
        }
        start = time.perf_counter()
        r = self._http.post("/v1/completions", json=body)
        took = time.perf_counter() - start
        r.raise_for_status()
        return int(r.json()["usage"]["prompt_tokens"]), took

    def prefill(self, lengths: list[int], reps: int) -> Prefill:
        """The fastest of ``reps`` one-token requests for prompts of each of ``lengths`` words,
        the lengths taken in turn (so a passing load on the machine touches them alike)."""
        self._timed(text_of(lengths[0], 99))  # warm up
        runs: dict[int, list[tuple[int, float]]] = {words: [] for words in lengths}
        for i in range(reps):
            for words in lengths:
                runs[words].append(self._timed(text_of(words, i)))
        times = {
            int(statistics.median(n for n, _ in found)): min(t for _, t in found)
            for found in runs.values()
        }
        return prefill_of(times)

    def _stream(self, seed: int, tokens: int) -> list[float]:
        """When each streamed chunk of one completion arrived."""
        body = {
            "model": self.model,
            "prompt": f"{seed}: " + text_of(self.decode_prompt_words, seed),
            "cache_prompt": False,
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        times: list[float] = []
        with self._http.stream("POST", "/v1/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if any(c.get("text") for c in chunk.get("choices", [])):
                    times.append(time.perf_counter())
        return times

    def decode(self, batch: int, tokens: int) -> float:
        """Aggregate output tokens/s of ``batch`` streams decoding together."""
        with ThreadPoolExecutor(batch) as pool:
            streams = list(pool.map(lambda i: self._stream(1000 + i, tokens), range(batch)))
        if any(len(s) < 2 for s in streams):
            raise RuntimeError("a calibration stream made fewer than 2 tokens")
        start = max(s[0] for s in streams)  # every stream is decoding from here ...
        end = min(s[-1] for s in streams)  # ... to here
        if end <= start:  # the streams did not overlap: count each on its own
            return batch / statistics.mean((s[-1] - s[0]) / (len(s) - 1) for s in streams)
        made = sum(sum(1 for t in s if start < t <= end) for s in streams)
        return made / (end - start)

    def _complete(self, seed: int, words: int, tokens: int) -> int:
        body = {
            "model": self.model,
            "prompt": f"{seed}: " + text_of(words, seed),
            "max_tokens": tokens,
            "temperature": 0,
            "ignore_eos": True,
            "cache_prompt": False,
        }
        r = self._http.post("/v1/completions", json=body)
        r.raise_for_status()
        return int(r.json()["usage"]["prompt_tokens"])

    def mixed(self, streams: int, words: int, tokens: int, requests: int) -> tuple[int, float]:
        """(prompt tokens, seconds per request) of ``requests`` requests sent back to back by
        ``streams`` clients: a saturated mix of prefills and decodes."""
        with ThreadPoolExecutor(streams) as pool:
            start = time.perf_counter()
            prompts = list(
                pool.map(lambda i: self._complete(2000 + i, words, tokens), range(requests))
            )
            wall = time.perf_counter() - start
        return int(statistics.median(prompts)), wall / requests

    def decode_rates(
        self, batches: list[int], tokens: int, done: Callable[[int, float], None]
    ) -> dict[int, float]:
        rates: dict[int, float] = {}
        for b in batches:
            rates[b] = self.decode(b, tokens)
            done(b, rates[b])
        return rates
