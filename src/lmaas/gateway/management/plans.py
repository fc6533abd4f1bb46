"""Capacity planning as the admin API offers it: a version's measured profile, kept with the
version, and plans for a load computed from it (:mod:`lmaas.controller.planner`)."""

from __future__ import annotations

import asyncio

from lmaas.controller.cluster.machine import machine_cores, machine_memory
from lmaas.controller.planner import Load, Machine, Prediction, Profile, ThreadRates, plan
from lmaas.errors import InvalidRequestError, LmaasError, NotFoundError
from lmaas.protocol.deploy import DeploymentControl
from lmaas.protocol.plan import PlanOut, PredictionOut, ProfileBody
from lmaas.store.catalog import VersionInfo, parse_reference
from lmaas.store.model_store import ModelStore


def prediction_out(p: Prediction) -> PredictionOut:
    return PredictionOut(**{k: getattr(p, k) for k in PredictionOut.model_fields})


def profile_of(body: ProfileBody) -> Profile:
    return Profile(
        threads=body.threads,
        prefill_tokens_per_s=body.prefill_tokens_per_s,
        decode_tokens_per_s=dict(body.decode_tokens_per_s),
        overhead_s=body.overhead_s,
        memory_bytes=body.memory_bytes,
        prefill_seconds=dict(body.prefill_seconds),
        at_threads={
            threads: ThreadRates(dict(r.prefill_seconds), dict(r.decode_tokens_per_s))
            for threads, r in body.at_threads.items()
        },
        prefill_thread_scaling=body.prefill_thread_scaling,
        decode_thread_scaling=body.decode_thread_scaling,
        mixed_prompt_tokens=body.mixed_prompt_tokens,
        mixed_output_tokens=body.mixed_output_tokens,
        mixed_streams=body.mixed_streams,
        mixed_seconds=body.mixed_seconds,
        max_num_seqs=body.max_num_seqs,
    )


class PlanManagement:
    """``/admin/models/{name}/versions/{ref}/profile`` and ``/admin/plan``."""

    def __init__(self, store: ModelStore, deployments: DeploymentControl | None) -> None:
        self._store = store
        self._deployments = deployments

    async def version(self, reference: str) -> VersionInfo:
        """A store reference (``name[:alias|number]``), or the name of a deployment."""
        if self._deployments is not None:
            try:
                served = self._deployments.get(reference)
            except LmaasError:
                served = None
            if served is not None and served.model is not None and served.version is not None:
                reference = f"{served.model}:{served.version}"
        name, ref = parse_reference(reference)
        return await asyncio.to_thread(self._store.catalog.get_version, name, ref)

    async def set_profile(self, name: str, ref: str, body: ProfileBody) -> ProfileBody:
        version = await self.version(f"{name}:{ref}")
        text = body.model_dump_json()
        await asyncio.to_thread(
            self._store.catalog.set_profile, version.model, version.number, text
        )
        return body

    async def profile(self, name: str, ref: str) -> ProfileBody:
        return self._profile(await self.version(f"{name}:{ref}"))

    def _profile(self, version: VersionInfo) -> ProfileBody:
        if version.profile_json is None:
            raise NotFoundError(
                f"{version.model} version {version.number} has no profile yet; measure one "
                f"with `lmaas profile {version.model}:{version.number}`",
                param="model",
                code="profile_not_found",
            )
        return ProfileBody.model_validate_json(version.profile_json)

    def machine(self, cores: int | None, memory_bytes: int | None) -> Machine:
        """The machine to plan for: what is asked, else this cluster's pool, else this host."""
        pool = self._deployments.pool_usage() if self._deployments is not None else None
        found_cores = pool.cores if pool is not None else machine_cores()
        found_memory = pool.memory_bytes if pool is not None else machine_memory()
        return Machine(cores=cores or found_cores, memory_bytes=memory_bytes or found_memory)

    async def plan(self, reference: str, load: Load, machine: Machine) -> PlanOut:
        version = await self.version(reference)
        body = self._profile(version)
        try:
            result = plan(profile_of(body), load, machine)
        except (ValueError, ArithmeticError) as exc:  # a profile no plan can come from
            raise InvalidRequestError(
                f"no plan can be made from this version's profile: {exc}", param="model"
            ) from exc
        choice = result.choice
        return PlanOut(
            model=version.model,
            version=version.number,
            feasible=choice is not None,
            reason=result.reason,
            replicas=choice.replicas if choice else None,
            threads_per_replica=choice.threads if choice else None,
            nodes=result.nodes,
            cores=result.cores,
            memory_bytes=result.memory_bytes,
            expected=prediction_out(choice) if choice else None,
            candidates=[prediction_out(c) for c in result.candidates],
            machine={"cores": machine.cores, "memory_bytes": machine.memory_bytes},
            profile=body,
        )
