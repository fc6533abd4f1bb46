"""Load for the autoscaling tests (local and Ray): streaming chats that count as ok only when
they ran to their end, kept coming from threads until told to stop, and the deployment and
metric reads the tests wait on."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.e2e.admin import Env


def deployment(env: Env, name: str) -> dict[str, Any]:
    r = env.get(f"/admin/deployments/{name}", env.admin)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def settled(env: Env, name: str, replicas: int) -> dict[str, Any] | None:
    """The deployment once it has exactly ``replicas`` replicas, all ready, none draining."""
    d = deployment(env, name)
    states = [r["state"] for r in d["replica_status"]]
    return d if d["replicas"] == replicas and states == ["ready"] * replicas else None


def metric(env: Env, name: str, **labels: str) -> float:
    text = env.get("/metrics", env.admin).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            got = ",".join(sorted(head[len(name) + 1 : -1].split(",")))
            if got == want:
                return float(value)
    return 0.0


@dataclass
class Outcomes:
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def stream_chat(env: Env, model: str, outcomes: Outcomes, max_tokens: int = 24) -> None:
    """One streaming chat request; it counts as ok only when it ran to its end."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Count from one to thirty in words."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {env.admin}"}
    error = None
    try:
        with httpx.stream(
            "POST", env.server.url + "/v1/chat/completions", json=body, headers=headers, timeout=120
        ) as r:
            if r.status_code != 200:
                error = f"{r.status_code}: {r.read().decode()[:200]}"
            else:
                lines = [line for line in r.iter_lines() if line.startswith("data: ")]
                finished = [
                    c
                    for line in lines[:-1]
                    for c in json.loads(line[6:]).get("choices", [])
                    if c.get("finish_reason")
                ]
                if lines[-1:] != ["data: [DONE]"] or not finished:
                    error = f"stream did not end: {lines[-3:]}"
    except httpx.HTTPError as exc:
        error = repr(exc)
    with outcomes.lock:
        if error is None:
            outcomes.ok += 1
        else:
            outcomes.failed.append(error)


def keep_streaming(env: Env, model: str, outcomes: Outcomes, stop: threading.Event) -> None:
    while not stop.is_set():
        stream_chat(env, model, outcomes)
