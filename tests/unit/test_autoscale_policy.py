"""The autoscaling policy tick by tick, on a fake clock (one tick a second): a step load, a
burst shorter than the delay, idle, a load flapping around a boundary, scale-to-zero and back,
the bounds, the waiting-time signal and a pool without room."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from lmaas.config_autoscaling import AutoscalingConfig
from lmaas.controller.autoscale import (
    AutoscalingContext,
    PolicyState,
    Signals,
    autoscaling_policy,
)


def config(**overrides: object) -> AutoscalingConfig:
    base: dict[str, object] = {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 3,
        "downscale_delay_s": 5,
        "look_back_period_s": 2,
    }
    return AutoscalingConfig.model_validate(base | overrides)


@dataclass
class Sim:
    """A deployment that becomes what the policy decides at once; ``tick`` is one second."""

    cfg: AutoscalingConfig
    replicas: int
    now: float = 0.0
    state: PolicyState = field(default_factory=PolicyState)
    history: list[int] = field(default_factory=list)
    pending: int = 0
    starting: int = 0

    def tick(self, ongoing: int, **signals: object) -> int:
        ctx = AutoscalingContext(
            config=self.cfg,
            now=self.now,
            current_replicas=self.replicas,
            signals=Signals(ongoing=ongoing, **signals),  # type: ignore[arg-type]
            state=self.state,
            pending_replicas=self.pending,
            starting_replicas=self.starting,
        )
        self.replicas, self.state = autoscaling_policy(ctx)
        self.history.append(self.replicas)
        self.now += 1.0
        return self.replicas

    def run(self, loads: list[int]) -> list[int]:
        start = len(self.history)
        for load in loads:
            self.tick(load)
        return self.history[start:]


def test_a_step_load_scales_up_after_the_upscale_delay_and_down_after_the_downscale_delay() -> None:
    sim = Sim(config(), replicas=1)
    assert sim.run([1, 1, 2]) == [1, 1, 1]  # at the target: nothing to do
    # Step to 8 ongoing (2 per replica on 4): the average over 2 s reaches it on the 2nd tick.
    assert sim.run([8, 8, 8, 8]) == [1, 1, 1, 4]
    assert "upscale_delay_s" in sim.state.reason
    assert sim.run([8] * 5) == [4] * 5  # at the target with 4: stays
    # Idle: one replica at least (min_replicas), after the downscale delay.
    assert sim.run([0] * 6) == [4, 4, 4, 4, 4, 1]
    assert "(downscale_delay_s 5 s)" in sim.state.reason
    assert sim.run([0] * 3) == [1, 1, 1]


def test_the_reason_of_a_tick_that_waits_says_for_what() -> None:
    sim = Sim(config(look_back_period_s=0.5), replicas=1)
    sim.tick(6)
    assert sim.replicas == 1
    assert sim.state.wanted == 3
    assert sim.state.reason.startswith("wants 3 for 0.0 of 3 s (upscale_delay_s)")


def test_a_burst_shorter_than_the_upscale_delay_adds_nothing() -> None:
    sim = Sim(config(look_back_period_s=1), replicas=1)
    assert sim.run([10, 10, 1, 1, 10, 10, 1]) == [1] * 7


def test_a_load_flapping_around_a_boundary_is_held_by_the_delays() -> None:
    sim = Sim(config(look_back_period_s=1), replicas=2)
    # 5 ongoing wants 3 replicas, 2 wants 1: each lasts less than either delay.
    assert sim.run([5, 5, 2, 2, 5, 5, 2, 2, 2, 2, 5, 5]) == [2] * 12
    assert sim.state.up_since is not None and sim.state.down_since is None


def test_rounding_up_keeps_a_replica_until_the_others_can_take_its_share() -> None:
    sim = Sim(config(downscale_delay_s=0, look_back_period_s=1), replicas=3)
    assert sim.run([5, 5]) == [3, 3]  # 5 / 2 per replica = 2.5: three still needed
    assert sim.run([4]) == [2]


def test_the_look_back_average_smooths_a_single_spike() -> None:
    sim = Sim(config(upscale_delay_s=0, look_back_period_s=4), replicas=1)
    assert sim.run([2, 2, 2]) == [1, 1, 1]
    # One tick of 6: the average over the last 4 s is (2+2+2+6)/4 = 3, so 2 replicas, not 3.
    assert sim.tick(6) == 2
    assert sim.state.average == pytest.approx(3.0)


def test_scale_to_zero_when_idle_and_back_at_once_when_a_request_arrives() -> None:
    sim = Sim(config(min_replicas=0, downscale_delay_s=5, downscale_to_zero_delay_s=2), replicas=1)
    # Idle: the look-back period (2 s) must be all zeros, then downscale_to_zero_delay_s.
    assert sim.run([1, 0, 0, 0, 0]) == [1, 1, 1, 1, 0]
    assert "downscale_to_zero_delay_s" in sim.state.reason
    assert sim.run([0, 0]) == [0, 0]
    assert sim.state.reason == "idle"
    # A request arrives and is held: one replica at once, no upscale delay.
    assert sim.tick(1, held=1, queued=1) == 1
    assert "arrived at zero replicas (1 held)" in sim.state.reason
    # Many held requests at once ask for as many replicas as they need.
    sim = Sim(config(min_replicas=0), replicas=0)
    assert sim.tick(7, held=7) == 4


def test_the_last_replica_stays_while_anything_is_ongoing() -> None:
    sim = Sim(
        config(min_replicas=0, downscale_delay_s=0, downscaling_factor=5, look_back_period_s=1),
        replicas=1,
    )
    assert sim.run([1, 1, 1]) == [1, 1, 1]
    assert sim.run([0, 0]) == [0, 0]


def test_bounds_apply_at_once_and_clamp_what_the_load_asks() -> None:
    sim = Sim(config(min_replicas=2, max_replicas=3, upscale_delay_s=0), replicas=1)
    assert sim.tick(0) == 2
    assert "min_replicas is 2" in sim.state.reason
    assert sim.run([100, 100]) == [3, 3]
    sim = Sim(config(max_replicas=2), replicas=5)
    assert sim.tick(100) == 2
    assert "max_replicas is 2" in sim.state.reason


def test_upscaling_factor_takes_smaller_steps() -> None:
    sim = Sim(config(upscale_delay_s=0, upscaling_factor=0.5, look_back_period_s=0.5), replicas=1)
    # 8 ongoing wants 4 replicas at factor 1; at 0.5: ceil(1 * (1 + (4 - 1) * 0.5)) = 3.
    assert sim.tick(8) == 3


def test_a_long_wait_for_the_first_token_adds_a_replica_and_forbids_downscaling() -> None:
    sim = Sim(config(max_queue_wait_s=2, upscale_delay_s=1, downscale_delay_s=0), replicas=2)
    # 2 ongoing on 2 replicas is below the target, but the oldest has waited 3 s.
    assert sim.tick(2, queued=1, oldest_wait_s=3.0) == 2
    assert sim.state.wanted == 3
    assert sim.tick(2, queued=1, oldest_wait_s=4.0) == 3
    assert "waited 4.0 s for its first token" in sim.state.reason
    # While a replica starts, the wait adds no other one, and still forbids fewer.
    sim.starting = 1
    assert sim.tick(2, queued=1, oldest_wait_s=5.0) == 3
    assert sim.state.wanted == 3
    sim.starting = 0
    assert sim.tick(2) == 1


def test_no_more_replicas_are_asked_for_while_some_wait_for_room() -> None:
    sim = Sim(config(upscale_delay_s=0, look_back_period_s=0.5), replicas=2, pending=1)
    assert sim.tick(20) == 2
    assert "1 replicas wait for room" in sim.state.reason
    sim.pending = 0
    assert sim.tick(20) == 4


def test_the_config_refuses_bounds_that_contradict() -> None:
    with pytest.raises(ValidationError, match="min_replicas"):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError, match="initial_replicas"):
        AutoscalingConfig(min_replicas=1, max_replicas=2, initial_replicas=5)
    with pytest.raises(ValidationError):
        AutoscalingConfig(target_ongoing_requests=0)
    with pytest.raises(ValidationError):
        AutoscalingConfig.model_validate({"min_replica": 1})  # a misspelt name is refused
    assert AutoscalingConfig(min_replicas=0, max_replicas=3).start_replicas == 0
    assert AutoscalingConfig(max_replicas=3, initial_replicas=2).start_replicas == 2
