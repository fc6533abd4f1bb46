"""The transformers backend's sampler, on hand-made logits (llama.cpp's chain order)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import SamplingParams
from lmaas.worker.backends.transformers.guides import Guides
from lmaas.worker.backends.transformers.sampler import make_sampler, sample

# softmax of these is 0.5, 0.3, 0.15, 0.05
LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))


def draws(n: int = 400, **params: object) -> Counter[int]:
    sampler = make_sampler(SamplingParams(**params), len(LOGITS))  # type: ignore[arg-type]
    return Counter(sample(sampler, LOGITS) for _ in range(n))


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass() -> None:
    assert set(draws(top_p=0.7, seed=1)) == {0, 1}
    assert set(draws(top_p=0.5, seed=1)) == {0}
    assert set(draws(seed=1)) == {0, 1, 2, 3}


def test_min_p_and_top_k() -> None:
    assert set(draws(min_p=0.5, seed=2)) == {0, 1}  # p >= 0.25
    assert set(draws(top_k=3, seed=2)) == {0, 1, 2}


def test_temperature_sharpens_and_seed_repeats() -> None:
    cold = draws(temperature=0.2, seed=3)
    warm = draws(temperature=1.0, seed=3)
    assert cold[0] > warm[0]
    assert draws(temperature=1.0, seed=9) == draws(temperature=1.0, seed=9)
    assert set(draws(20, temperature=0.0, seed=1)) == {0}


def test_penalties_count_what_was_generated() -> None:
    logits = np.array([2.0, 1.9, -1.0], dtype=np.float32)
    s = make_sampler(SamplingParams(temperature=0.0, repetition_penalty=2.0), 3)
    assert [sample(s, logits) for _ in range(2)] == [0, 1]  # 2.0 / 2 = 1.0 < 1.9
    f = make_sampler(SamplingParams(temperature=0.0, frequency_penalty=0.06), 3)
    # 2.0 - 0.06 * count falls below 1.9 after two picks; then 1.88 beats 1.9 - 0.06
    assert [sample(f, logits) for _ in range(4)] == [0, 0, 1, 0]
    p = make_sampler(SamplingParams(temperature=0.0, presence_penalty=0.5), 3)
    assert [sample(p, logits) for _ in range(3)] == [0, 1, 0]  # 1.5 < 1.9, then 1.5 > 1.4


def test_logit_bias_and_its_bounds() -> None:
    s = make_sampler(SamplingParams(temperature=0.0, logit_bias={3: 10.0}), 4)
    assert sample(s, LOGITS) == 3
    with pytest.raises(InvalidRequestError) as err:
        make_sampler(SamplingParams(logit_bias={4: 1.0}), 4)
    assert err.value.param == "logit_bias"


def test_a_json_schema_guide_forces_valid_output() -> None:
    """Random logits over a toy vocabulary: whatever they favour, only a document the schema
    accepts can come out, then the end token."""
    pieces = {b"{": [0], b"}": [1], b'"': [2], b"a": [3], b":": [4], b"1": [5], b" ": [6]}
    eos = 7
    guides = Guides(lambda: pieces, eos)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    text = {token: piece for piece, ids in pieces.items() for token in ids}
    rng = np.random.default_rng(0)
    for seed in range(5):
        s = make_sampler(SamplingParams(seed=seed, temperature=1.0, json_schema=schema), 8, guides)
        out = b""
        for _ in range(40):
            token = sample(s, rng.normal(size=8).astype(np.float32) * 3)
            if token == eos:
                break
            out += text[token]
        else:
            raise AssertionError(f"no end token after {out!r}")
        assert isinstance(json.loads(out)["a"], int), out


def test_guides_refuse_grammars_and_bad_schemas() -> None:
    guides = Guides(lambda: {b"{": [0]}, 1)
    with pytest.raises(InvalidRequestError) as err:
        make_sampler(SamplingParams(grammar='root ::= "x"'), 2, guides)
    assert err.value.param == "response_format"
    with pytest.raises(InvalidRequestError) as err:
        make_sampler(SamplingParams(json_schema={"type": "no-such-type"}), 2, guides)
    assert err.value.param == "response_format.json_schema.schema"
