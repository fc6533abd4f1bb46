"""The calibration behind `lmaas profile`: timed requests to one served replica, over the same
public API every client uses (so the per-request overhead it measures is a client's).

* **Prefill**: a short and a long prompt, uncached (``cache_prompt: false``), one output token,
  a few times each; the rate is the extra tokens over the extra time, and the overhead what is
  left of the short request's time.
* **Decode**: ``b`` streams at once for each batch size ``b`` (``ignore_eos``, so each makes
  all its tokens); the rate is the tokens every stream made in the window where all ``b`` were
  decoding, over that window.
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
    tokens_per_s: float
    overhead_s: float


class Calibration:
    """Timed requests to the deployment ``model`` at ``url`` with ``headers``."""

    def __init__(self, url: str, model: str, headers: dict[str, str], timeout: float) -> None:
        self.model = model
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

    def prefill(self, short: int, long: int, reps: int) -> Prefill:
        """Prefill rate and per-request overhead from prompts of ``short`` and ``long`` words."""
        self._timed(text_of(short, 99))  # warm up
        shorts = [self._timed(text_of(short, i)) for i in range(reps)]
        longs = [self._timed(text_of(long, i)) for i in range(reps)]
        n_short = statistics.median(n for n, _ in shorts)
        n_long = statistics.median(n for n, _ in longs)
        t_short = statistics.median(t for _, t in shorts)
        t_long = statistics.median(t for _, t in longs)
        if n_long <= n_short or t_long <= t_short:
            raise RuntimeError("the long prompts were not slower than the short ones")
        rate = (n_long - n_short) / (t_long - t_short)
        return Prefill(tokens_per_s=rate, overhead_s=max(0.0, t_short - n_short / rate))

    def _stream(self, seed: int, tokens: int) -> list[float]:
        """When each streamed chunk of one completion arrived."""
        body = {
            "model": self.model,
            "prompt": text_of(12, seed),
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

    def decode_rates(
        self, batches: list[int], tokens: int, done: Callable[[int, float], None]
    ) -> dict[int, float]:
        rates: dict[int, float] = {}
        for b in batches:
            rates[b] = self.decode(b, tokens)
            done(b, rates[b])
        return rates
