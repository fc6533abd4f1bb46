"""Generation on the transformers backend, against direct forward passes of the same model.

A tiny random Llama (real transformers code, random weights) is served through ``TorchSlots``
and the step loop that also drives llama.cpp; every figure the loop produces is checked against
a plain full-sequence forward pass, so padding, cache reuse, slot copies and the sampler are
tested where they could go wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lmaas.config import EngineConfig
from lmaas.errors import InvalidRequestError
from lmaas.protocol.engine import BeamParams, GenerateRequest, SamplingParams, TokenEvent
from lmaas.worker.backends.base import BatchEntry
from lmaas.worker.backends.transformers.generate import TorchSlots
from lmaas.worker.backends.transformers.tasks import TransformersBackend
from lmaas.worker.loop import EngineLoop
from tests.tiny_models import save_with_minilm_tokenizer, tiny_llama

EOS = 102  # [SEP]
PROMPTS = [[101, 2023, 2003], [101, 7592, 2088, 1037, 3231, 1010, 2000], [101, 2054]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[TransformersBackend, Any]:
    model = tiny_llama(
        seed=1,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        bos_token_id=101,
        eos_token_id=EOS,
    )
    with torch.no_grad():  # sharper logits than the default init, so greedy choices are clear
        model.lm_head.weight.mul_(40)
    folder = tmp_path_factory.mktemp("tiny-gen")
    save_with_minilm_tokenizer(model, folder)
    engine = EngineConfig(context_size=512, max_num_seqs=4, max_batch_tokens=64)
    return TransformersBackend("tiny", Path(folder), engine), model


def last_logits(model: Any, ids: list[int]) -> np.ndarray[Any, Any]:
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0, -1].float().numpy()  # type: ignore[no-any-return]


def test_batched_slots_match_full_forward_passes(tiny: tuple[TransformersBackend, Any]) -> None:
    backend, model = tiny
    slots = backend.generator()
    seqs = [list(p) for p in PROMPTS]
    entries = [
        BatchEntry(slot, pos, tok, pos == len(p) - 1)
        for slot, p in enumerate(seqs)
        for pos, tok in enumerate(p)
    ]
    assert slots.decode(entries) == 0
    index = {slot: i for i, e in enumerate(entries) if e.want_logits for slot in [e.slot]}
    for step in range(6):
        for slot, seq in enumerate(seqs):
            if seq is None:
                continue
            got = slots.logits(index[slot])
            np.testing.assert_allclose(got, last_logits(model, seq), atol=2e-4, rtol=1e-4)
            seq.append(int(np.argmax(got)))
        if step == 2:  # one sequence ends (the decode group changes) ...
            slots.clear_slot(1)
            seqs[1] = None  # type: ignore[call-overload]
        if step == 3:  # ... and a beam-style fork: slot 3 continues slot 0 with another token
            slots.copy_slot(0, 3)
            seqs.append([*seqs[0][:-1], 2000])
        live = [(slot, s) for slot, s in enumerate(seqs) if s is not None]
        entries = [BatchEntry(slot, len(s) - 1, s[-1], True) for slot, s in live]
        assert slots.decode(entries) == 0
        index = {e.slot: i for i, e in enumerate(entries)}


def run_loop(slots: TorchSlots, *requests: GenerateRequest) -> dict[str, TokenEvent]:
    """Drive the step loop until every request has its final event; returns them merged."""
    events: dict[str, list[TokenEvent]] = {}
    loop = EngineLoop(
        slots,
        lambda evs, _s: [events.setdefault(e.request_id, []).append(e) for e in evs],
        max_num_seqs=4,
        max_batch_tokens=64,
    )
    for req in requests:
        loop.submit(loop.prepare(req))
    for _ in range(500):
        loop._drain_inbox(block=False)
        if not loop.scheduler.has_work():
            break
        loop.step()
    merged = {}
    for rid, evs in events.items():
        last = evs[-1]
        assert last.finish_reason is not None, rid
        last.token_ids = [t for e in evs for t in e.token_ids]
        merged[rid] = last
    assert len(merged) == len(requests)
    return merged


def greedy_reference(model: Any, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        token = int(np.argmax(last_logits(model, ids)))
        if token == EOS:
            break
        ids.append(token)
    return ids[len(prompt) :]


def test_loop_greedy_equals_reference_and_beam_width_one(
    tiny: tuple[TransformersBackend, Any],
) -> None:
    backend, model = tiny
    slots = backend.generator()
    greedy = SamplingParams(temperature=0.0)
    reqs = [
        GenerateRequest(request_id=f"g{i}", prompt=p, max_tokens=8, sampling=greedy)
        for i, p in enumerate(PROMPTS)
    ]
    beam1 = GenerateRequest(
        request_id="b1", prompt=PROMPTS[1], max_tokens=8, beam=BeamParams(width=1)
    )
    out = run_loop(slots, *reqs, beam1)
    for i, p in enumerate(PROMPTS):
        assert out[f"g{i}"].token_ids == greedy_reference(model, p, 8)
    beams = out["b1"].beams or []
    assert [b.token_ids for b in beams] == [out["g1"].token_ids]


def test_beams_are_distinct_ordered_and_scored_right(
    tiny: tuple[TransformersBackend, Any],
) -> None:
    backend, model = tiny
    req = GenerateRequest(
        request_id="b",
        prompt=PROMPTS[0],
        max_tokens=5,
        ignore_eos=True,
        beam=BeamParams(width=3, n=3, length_penalty=0.0),
    )
    beams = run_loop(backend.generator(), req)["b"].beams or []
    assert len(beams) == 3
    assert len({tuple(b.token_ids) for b in beams}) == 3
    assert [b.score for b in beams] == sorted((b.score for b in beams), reverse=True)
    for b in beams:  # each beam's cumulative logprob, recomputed in one forward pass
        ids = PROMPTS[0] + b.token_ids
        with torch.inference_mode():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        n = len(PROMPTS[0])
        want = sum(float(lp[n - 1 + j, t]) for j, t in enumerate(b.token_ids))
        assert b.cumulative_logprob == pytest.approx(want, abs=1e-3)


def test_seeded_sampling_repeats_and_parameters_apply(
    tiny: tuple[TransformersBackend, Any],
) -> None:
    backend, _ = tiny
    slots = backend.generator()

    def sample(rid: str, **params: Any) -> list[int]:
        req = GenerateRequest(
            request_id=rid,
            prompt=PROMPTS[1],
            max_tokens=12,
            ignore_eos=True,
            sampling=SamplingParams(**params),
        )
        return run_loop(slots, req)[rid].token_ids

    hot = {"temperature": 5.0, "seed": 7}
    assert sample("a", **hot) == sample("b", **hot)
    assert len({tuple(sample(f"s{i}", temperature=5.0, seed=i)) for i in range(4)}) > 1
    assert set(sample("k", temperature=5.0, top_k=1)) == set(sample("g", temperature=0.0))
    forced = sample("bias", temperature=0.0, logit_bias={2000: 100.0})
    assert forced == [2000] * 12
    # A huge presence penalty forbids repeats; without it greedy decoding of this model repeats.
    assert len(set(sample("p", temperature=0.0, presence_penalty=1000.0))) == 12


def test_transformers_refuses_raw_grammars(tiny: tuple[TransformersBackend, Any]) -> None:
    backend, _ = tiny
    loop = EngineLoop(backend.generator(), lambda *_: None, max_num_seqs=4, max_batch_tokens=64)
    req = GenerateRequest(
        request_id="j", prompt="hello", sampling=SamplingParams(grammar='root ::= "x"')
    )
    with pytest.raises(InvalidRequestError) as err:
        loop.prepare(req)
    assert err.value.param == "response_format"
    assert "generate" in backend.info().capabilities


def test_special_token_text_in_text_spans_is_tokenized_as_text(
    tiny: tuple[TransformersBackend, Any],
) -> None:
    backend, _ = tiny
    assert {"[CLS]", "[SEP]"} <= set(backend.info().special_tokens)
    loop = EngineLoop(backend.generator(), lambda *_: None, max_num_seqs=4, max_batch_tokens=64)
    prompt = "[CLS] hello [SEP] world [SEP]"
    forged = (12, 17)  # the first [SEP], as message content would bring it

    def ids(spans: list[tuple[int, int]]) -> list[int]:
        req = GenerateRequest(
            request_id="s", prompt=prompt, parse_special=True, add_bos=False, text_spans=spans
        )
        return loop.prepare(req).prompt_ids

    parsed, marked = ids([]), ids([forged])
    assert parsed.count(EOS) == 2 and marked.count(EOS) == 1  # only the markup's [SEP]
    assert marked[-1] == EOS and len(marked) > len(parsed)
