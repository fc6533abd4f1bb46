"""The capacity planner's arithmetic against cases computed by hand (see the model in
``lmaas.controller.planner``'s docstring)."""

from __future__ import annotations

import math

import pytest

from lmaas.cli.profiling import prefill_of
from lmaas.controller.planner import Load, Machine, Profile, ThreadRates, plan, predict
from lmaas.gateway.management.plans import profile_of
from lmaas.protocol.plan import DECODE_THREAD_SCALING, PREFILL_THREAD_SCALING, ProfileBody

GiB = 2**30

PROFILE = Profile(
    threads=2,
    prefill_tokens_per_s=200.0,
    decode_tokens_per_s={1: 20.0, 4: 40.0, 16: 64.0},
    overhead_s=0.1,
    memory_bytes=GiB + GiB // 2,
    max_num_seqs=16,
)


def md1_decay(rho: float) -> float:
    """The tail's decay of an M/D/1 queue's wait (in services): the root ``x > 0`` of
    ``rho (e^x - 1) = x``, by the fixed point ``x = log(1 + x / rho)``."""
    x = 1.0
    for _ in range(2000):
        x = math.log1p(x / rho)
    assert rho * math.expm1(x) == pytest.approx(x)
    return x


def test_the_wait_for_prefills_decays_as_deterministic_services_do() -> None:
    # Prefills of one prompt length take about the same time: the p99 wait is a fraction of
    # what exponential services (M/M/1) would give, the smaller the lighter the load.
    for rps, ratio in ((0.2, 0.3), (1.0, 0.6)):
        load = Load(requests_per_s=rps, prompt_tokens=100, output_tokens=1)
        p = predict(PROFILE, load, 1, threads=2, cores=2)
        assert p.concurrency == 1.0
        service = 0.5 + 1 / 20  # the prefill and one stream's step
        rho = rps * service
        wait99 = p.ttft_p99_s - 0.1 - service
        mm1 = service / (1 - rho) * math.log(rho / 0.01)
        assert 0 < wait99 < ratio * mm1, (rps, wait99, mm1)
        assert wait99 == pytest.approx(service / md1_decay(rho) * math.log(rho / 0.01))
    assert md1_decay(0.99) == pytest.approx(2 * (1 - 0.99), rel=0.01)  # heavy traffic


def test_decode_rates_are_interpolated_between_measured_batches() -> None:
    assert PROFILE.decode_at(1) == 20.0
    assert PROFILE.decode_at(2) == pytest.approx(20 + 20 / 3)
    assert PROFILE.decode_at(10) == pytest.approx(40 + 24 * 6 / 12)
    assert PROFILE.decode_at(64) == 64.0  # flat past the largest batch measured


def test_a_light_load_on_one_replica() -> None:
    load = Load(requests_per_s=0.1, prompt_tokens=100, output_tokens=20)
    p = predict(PROFILE, load, 1, threads=2, cores=2)
    # P = 100/200 = 0.5 s; one stream decodes at 20 tok/s: itl 0.05 s, stretched by the
    # prefills' share (0.1 x 0.5) to 0.05/0.95; the prefill's service 0.55 s; the engine is
    # busy 0.1 x (0.5 + 1.0) of the time.
    assert not p.saturated
    assert p.concurrency == 1.0  # 0.1 req/s x 1.7 s latency rounds up to one stream
    assert p.utilisation == pytest.approx(0.1 * (0.5 + 20 / 20))
    assert p.ttft_p50_s == pytest.approx(0.1 + 0.55)  # no prompt ahead half the time
    # prompts take 0.1 x 0.55 of the time: the prompt queue's load
    wait99 = 0.55 / md1_decay(0.055) * math.log(0.055 / 0.01)
    assert p.ttft_p99_s == pytest.approx(0.1 + wait99 + 0.55)
    assert p.latency_p50_s == pytest.approx(0.65 + 20 * 0.05 / 0.95)
    assert p.max_requests_per_s == pytest.approx(1 / (0.5 + 20 / 64))
    assert p.requests_per_s == 0.1 and p.output_tokens_per_s == pytest.approx(2.0)


def test_replicas_that_ask_for_more_threads_than_cores_share_them() -> None:
    load = Load(requests_per_s=0.1, prompt_tokens=100, output_tokens=20)
    alone = predict(PROFILE, load, 1, threads=2, cores=2)
    crowded = predict(PROFILE, load, 2, threads=2, cores=2)  # 4 threads on 2 cores
    split = predict(PROFILE, load, 2, threads=1, cores=2)
    # Both run at half speed: each of 2 replicas serves half of twice the engine time.
    assert crowded.max_requests_per_s == pytest.approx(alone.max_requests_per_s)
    assert split.max_requests_per_s == pytest.approx(alone.max_requests_per_s)
    assert crowded.ttft_p50_s == pytest.approx(0.1 + 100 / 100 + 2 / 20)


def test_a_load_beyond_the_maximum_is_saturated() -> None:
    load = Load(requests_per_s=2.0, prompt_tokens=100, output_tokens=20)
    p = predict(PROFILE, load, 1, threads=2, cores=2)
    assert p.saturated
    assert p.requests_per_s == pytest.approx(1 / 0.8125)  # what it serves at most
    assert p.concurrency == 16  # every sequence slot taken


def test_the_plan_is_the_fewest_replicas_that_meet_the_load() -> None:
    load = Load(requests_per_s=0.1, prompt_tokens=100, output_tokens=20, ttft_p99_s=3.0)
    result = plan(PROFILE, load, Machine(cores=2, memory_bytes=16 * GiB))  # TTFT p99 2.4 s
    assert result.choice is not None and result.choice.replicas == 1
    assert result.nodes == 1 and result.choice.threads == 2
    assert result.memory_bytes == PROFILE.memory_bytes


def test_a_tight_ttft_objective_is_refused_when_no_count_of_replicas_meets_it() -> None:
    # The prompt alone takes 0.5 s to prefill: no number of replicas answers within 0.3 s.
    load = Load(requests_per_s=0.1, prompt_tokens=100, output_tokens=20, ttft_p99_s=0.3)
    result = plan(PROFILE, load, Machine(cores=2, memory_bytes=16 * GiB), max_replicas=8)
    assert result.choice is None and "no deployment" in result.reason


def test_a_heavy_load_spreads_over_more_machines() -> None:
    load = Load(requests_per_s=2.0, prompt_tokens=100, output_tokens=20)
    result = plan(PROFILE, load, Machine(cores=2, memory_bytes=16 * GiB))
    assert result.choice is not None
    n = result.choice.replicas
    assert result.nodes == n  # one replica of 2 threads per 2-core machine
    assert result.choice.utilisation <= load.utilisation
    fewer = predict(PROFILE, load, n - 1, threads=2, cores=2 * (n - 1))
    assert not fewer.meets(load)  # and one replica less would not do
    assert result.cores == 2 * n


def test_memory_bounds_the_replicas_of_one_machine() -> None:
    small = Machine(cores=8, memory_bytes=2 * GiB)  # room for one replica of 1.5 GiB
    light = plan(PROFILE, Load(requests_per_s=0.1, prompt_tokens=100, output_tokens=20), small)
    assert light.choice is not None and light.choice.replicas == 1
    assert [c.replicas for c in light.candidates] == [1]  # a second would not fit
    assert light.choice.threads == 8  # one replica takes every core
    heavy = plan(PROFILE, Load(requests_per_s=6.0, prompt_tokens=100, output_tokens=20), small)
    assert heavy.choice is not None and heavy.nodes == heavy.choice.replicas > 1
    # A machine with less memory than one replica takes fits none, on one machine or many.
    tiny = Machine(cores=8, memory_bytes=GiB)
    none = plan(PROFILE, Load(requests_per_s=0.1, prompt_tokens=100, output_tokens=20), tiny)
    assert none.choice is None and none.nodes == 0
    assert "needs 1536 MiB of memory; a machine has 1024 MiB" in none.reason


def test_a_load_beyond_the_most_replicas_says_what_they_serve() -> None:
    load = Load(requests_per_s=1000.0, prompt_tokens=100, output_tokens=20)
    big = plan(PROFILE, load, Machine(cores=2, memory_bytes=64 * GiB), max_replicas=4)
    assert big.choice is None
    most = 4 / (0.5 + 20 / 64)  # four replicas of 2 threads: P + D(16) each
    assert f"serve at most {most:.3g} requests/s" in big.reason


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threads": 0},
        {"prefill_tokens_per_s": 0.0},
        {"decode_tokens_per_s": {}},
        {"decode_tokens_per_s": {0: 1.0}},
    ],
)
def test_a_profile_that_cannot_be_planned_from_is_refused(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "threads": 1,
        "prefill_tokens_per_s": 1.0,
        "decode_tokens_per_s": {1: 1.0},
    }
    with pytest.raises(ValueError):
        Profile(**{**base, **kwargs})  # type: ignore[arg-type]


def test_prefill_times_are_interpolated_less_the_overhead() -> None:
    table = Profile(
        threads=2,
        prefill_tokens_per_s=100.0,
        decode_tokens_per_s={1: 20.0},
        overhead_s=0.1,
        prefill_seconds={100: 0.3, 200: 0.6, 400: 1.5},
    )
    assert table.prefill_time(100) == pytest.approx(0.2)
    assert table.prefill_time(150) == pytest.approx(0.35)  # halfway between 0.2 and 0.5
    assert table.prefill_time(300) == pytest.approx(0.95)
    assert table.prefill_time(800) == pytest.approx(1.4 + 400 * 0.9 / 200)  # the last slope on
    assert table.prefill_time(50) == pytest.approx(0.05)  # the first slope back
    # Without a table, the one rate.
    assert PROFILE.prefill_time(100) == pytest.approx(0.5)


def test_fewer_threads_lose_less_than_their_share_with_sublinear_scaling() -> None:
    sub = Profile(
        threads=2,
        prefill_tokens_per_s=200.0,
        decode_tokens_per_s={1: 20.0, 16: 64.0},
        prefill_thread_scaling=0.75,
        decode_thread_scaling=0.75,
        max_num_seqs=16,
    )
    load = Load(requests_per_s=0.1, prompt_tokens=100, output_tokens=20)
    one = predict(sub, load, 1, threads=2, cores=2).max_requests_per_s
    two = predict(sub, load, 2, threads=1, cores=2).max_requests_per_s
    assert two / one == pytest.approx(2 * 2**-0.75)  # each half-thread replica at 2 ** -0.75


def test_without_other_thread_counts_each_phase_has_its_exponent() -> None:
    p = Profile(
        threads=2,
        prefill_tokens_per_s=200.0,
        decode_tokens_per_s={1: 20.0},
        prefill_thread_scaling=1.0,
        decode_thread_scaling=0.5,
    )
    assert p.prefill_time(100, 1) == pytest.approx(1.0)  # 0.5 s at 2 threads, linear
    assert p.prefill_time(100, 2) == pytest.approx(0.5)
    assert p.decode_at(1, 1) == pytest.approx(20 / math.sqrt(2))
    assert p.decode_at(1, 8) == pytest.approx(40.0)  # 4 x the threads: 2 x the rate


# Measured at 2 threads (engine time 0.5 s at 100 tokens, 1.0 s at 200) and at 1 thread (0.8
# and 1.6 s): prefill is 1.6 x as fast at 2 threads as at 1, decode 1.25 x at one stream and
# 2 x at 16.
TWO_COUNTS = Profile(
    threads=2,
    prefill_tokens_per_s=200.0,
    decode_tokens_per_s={1: 20.0, 16: 64.0},
    overhead_s=0.1,
    prefill_seconds={100: 0.6, 200: 1.1},
    at_threads={1: ThreadRates({100: 0.9, 200: 1.7}, {1: 16.0, 16: 32.0})},
    max_num_seqs=16,
)


def test_measured_thread_counts_give_each_phase_its_own_scaling() -> None:
    p = TWO_COUNTS
    assert p.prefill_time(100, 1) == pytest.approx(0.8)  # what 1 thread measured
    assert p.prefill_time(150, 1) == pytest.approx(1.2)  # interpolated in its own table
    assert p.decode_at(1, 1) == pytest.approx(16.0)
    assert p.decode_at(16, 1) == pytest.approx(32.0)
    assert p.decode_at(8.5, 1) == pytest.approx(24.0)  # halfway in the 1-thread table
    # Past 2 threads the power through 1 and 2 goes on: 4 threads are to 2 what 2 are to 1.
    assert p.prefill_time(100, 4) == pytest.approx(0.5 / 1.6)
    assert p.decode_at(1, 4) == pytest.approx(25.0)
    assert p.decode_at(16, 4) == pytest.approx(128.0)
    assert p.decode_at(16, 8) == pytest.approx(256.0)  # power 1: linear


def test_between_measured_counts_rates_follow_the_power_through_them() -> None:
    p = Profile(
        threads=2,
        prefill_tokens_per_s=200.0,
        decode_tokens_per_s={1: 20.0},
        at_threads={
            1: ThreadRates({100: 2.0}, {1: 5.0}),  # 1 -> 2 threads: 4 x (a power of 2)
            4: ThreadRates({100: 0.25}, {1: 40.0}),  # 2 -> 4: 2 x (a power of 1)
        },
    )
    assert p.decode_at(1, 3) == pytest.approx(20.0 * 1.5)
    assert p.decode_at(1, 8) == pytest.approx(80.0)
    assert p.prefill_time(100, 3) == pytest.approx(0.5 / 1.5)
    # Powers are kept within [0, 1.5]: 1 thread at a quarter of 2 is taken for 2 ** -1.5,
    # and 1 thread faster than 2 (other load on the machine) for as fast.
    odd = Profile(
        threads=2,
        prefill_tokens_per_s=200.0,
        decode_tokens_per_s={1: 20.0},
        at_threads={1: ThreadRates({100: 0.25}, {1: 5.0})},
    )
    assert odd.decode_at(1, 4) == pytest.approx(20.0 * 2**1.5)
    assert odd.decode_at(1, 1) == pytest.approx(20.0 * 2**-1.5)
    assert odd.prefill_time(100, 1) == pytest.approx(0.5)  # not 0.25


def test_replicas_of_fewer_threads_are_predicted_from_the_measured_count() -> None:
    load = Load(requests_per_s=0.1, prompt_tokens=100, output_tokens=20)
    p = predict(TWO_COUNTS, load, 2, threads=1, cores=2)
    # Each replica: 0.05 req/s, P = 0.8 s, one stream at 16 tok/s (D = 1.25 s): busy 10 %.
    assert p.utilisation == pytest.approx(0.05 * (0.8 + 20 / 16))
    assert p.ttft_p50_s == pytest.approx(0.1 + 0.8 + 1 / 16)  # an empty queue at p50
    assert p.max_requests_per_s == pytest.approx(2 / (0.8 + 20 / 32))
    # The profile's own count is what it measured there.
    alone = predict(TWO_COUNTS, load, 1, threads=2, cores=2)
    assert alone.ttft_p50_s == pytest.approx(0.1 + 0.5 + 1 / 20)


def test_profiles_without_other_counts_read_with_the_default_exponents() -> None:
    old = {  # as `lmaas profile` kept them before it measured a second thread count
        "threads": 2,
        "cores": 2,
        "prefill_tokens_per_s": 200.0,
        "decode_tokens_per_s": {"1": 20.0},
        "overhead_s": 0.0,
        "prefill_seconds": {},
        "thread_scaling": 0.75,
        "memory_bytes": GiB,
        "max_num_seqs": 16,
    }
    p = profile_of(ProfileBody.model_validate(old))
    assert p.at_threads == {}
    assert p.prefill_time(100, 1) == pytest.approx(0.5 * 2**PREFILL_THREAD_SCALING)
    assert p.decode_at(1, 1) == pytest.approx(20.0 * 2**-DECODE_THREAD_SCALING)
    new = ProfileBody.model_validate(
        old
        | {"at_threads": {"1": {"prefill_seconds": {"100": 0.8}, "decode_tokens_per_s": {"1": 16}}}}
    )
    again = ProfileBody.model_validate_json(new.model_dump_json())  # as the store keeps it
    assert profile_of(again).decode_at(1, 1) == pytest.approx(16.0)
    assert profile_of(again).prefill_time(100, 1) == pytest.approx(0.8)
    with pytest.raises(ValueError):  # the profile's own count is not another one
        ProfileBody.model_validate(old | {"at_threads": {"2": new.at_threads[1].model_dump()}})


def test_the_calibration_reads_overhead_and_rate_from_its_prefill_times() -> None:
    p = prefill_of({20: 0.15, 120: 0.45, 520: 2.05})
    assert p.overhead_s == pytest.approx(0.15 - 20 * 0.003)  # the two shortest, back to 0
    assert p.tokens_per_s == pytest.approx(520 / (2.05 - 0.09))
    with pytest.raises(RuntimeError):
        prefill_of({20: 0.5, 120: 0.4})  # longer but not slower: nothing to measure


def test_a_mixed_run_slower_than_its_parts_scales_every_engine_cost() -> None:
    base = {
        "threads": 2,
        "prefill_tokens_per_s": 200.0,
        "decode_tokens_per_s": {1: 20.0, 16: 64.0},
        "max_num_seqs": 16,
    }
    # 100 prompt tokens (0.5 s) and 32 output tokens at 16 streams (0.5 s) took 1.5 s each.
    mixed = Profile(
        **base,  # type: ignore[arg-type]
        mixed_prompt_tokens=100,
        mixed_output_tokens=32,
        mixed_streams=16,
        mixed_seconds=1.5,
    )
    assert mixed.interference() == pytest.approx(1.5)
    plain = Profile(**base)  # type: ignore[arg-type]
    assert plain.interference() == 1.0
    load = Load(requests_per_s=0.1, prompt_tokens=100, output_tokens=20)
    a = predict(plain, load, 1, threads=2, cores=2)
    b = predict(mixed, load, 1, threads=2, cores=2)
    assert b.max_requests_per_s == pytest.approx(a.max_requests_per_s / 1.5)
    assert b.utilisation == pytest.approx(a.utilisation * 1.5)
    # A prompt's prefill takes k x P under load too: 1.5 x 0.5 s, and one stream's step.
    assert a.ttft_p50_s == pytest.approx(0.5 + 1 / 20)
    assert b.ttft_p50_s == pytest.approx(1.5 * 0.5 + 1 / 20)


def test_a_prompt_waits_for_the_prompts_ahead_not_for_whole_requests() -> None:
    # 0.2 req/s of 100 prompt tokens (0.5 s) and 100 output tokens: decodes keep the engine
    # busy most of the time, but prompts alone take 0.2 x (0.5 + itl), well under half of it.
    load = Load(requests_per_s=0.2, prompt_tokens=100, output_tokens=100)
    p = predict(PROFILE, load, 1, threads=2, cores=2)
    assert p.utilisation > 0.9 and not p.saturated
    itl = p.concurrency / PROFILE.decode_at(p.concurrency)
    service = 0.5 + itl
    assert p.ttft_p50_s == pytest.approx(0.1 + service)  # no prompt ahead half the time
    rho_p = 0.2 * service
    wait99 = service / md1_decay(rho_p) * math.log(rho_p / 0.01)
    assert p.ttft_p99_s == pytest.approx(0.1 + wait99 + service)


def test_a_request_waits_for_a_slot_when_every_slot_is_taken() -> None:
    # One sequence slot: requests are served one after the other, a queue of whole requests.
    one = Profile(
        threads=2, prefill_tokens_per_s=200.0, decode_tokens_per_s={1: 20.0}, max_num_seqs=1
    )
    load = Load(requests_per_s=0.1, prompt_tokens=100, output_tokens=20)
    p = predict(one, load, 1, threads=2, cores=2)
    # P 0.5 s, 20 tokens at 20 tok/s 1 s: the engine busy 0.15; a prompt's service 0.55 s.
    assert p.ttft_p50_s == pytest.approx(0.55)  # neither queue holds anyone half the time
    prompt_wait = 0.55 / md1_decay(0.055) * math.log(0.055 / 0.01)
    slot_wait = 1.5 / (1 - 0.15) * math.log(0.15 / 0.01)
    assert p.ttft_p99_s == pytest.approx(prompt_wait + slot_wait + 0.55)


def test_a_clamped_power_goes_on_past_the_outermost_count_without_a_jump() -> None:
    # Measured at 1 thread, and at 2 (4 x as fast: a power of 2, taken for 1.5): from the
    # profile's own count the rate goes as threads ** 1.5 inside the two and past them alike.
    p = Profile(
        threads=1,
        prefill_tokens_per_s=100.0,
        decode_tokens_per_s={1: 10.0},
        at_threads={2: ThreadRates({100: 0.25}, {1: 40.0})},
    )
    assert p.decode_at(1, 2) == pytest.approx(10.0 * 2**1.5)
    assert p.decode_at(1, 3) == pytest.approx(10.0 * 3**1.5)
    assert p.decode_at(1, 4) / p.decode_at(1, 2) == pytest.approx(2**1.5)
