"""The pure continuous-batching scheduler (no I/O, no model)."""

from lmaas.worker.scheduler.core import (
    Scheduler,
    SchedulerConfig,
    SeqStatus,
    SeqUpdate,
    SeqWork,
    StepPlan,
)

__all__ = ["Scheduler", "SchedulerConfig", "SeqStatus", "SeqUpdate", "SeqWork", "StepPlan"]
