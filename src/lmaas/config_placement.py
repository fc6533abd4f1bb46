"""Where a deployment's replicas may run on a Ray cluster: custom Ray resources each replica's
actor asks for, and the node labels it must land on (Ray's ``label_selector``). The same types
check the cluster-wide ``cluster.ray_resources`` and ``cluster.ray_label_selector``, which a
deployment's ``placement`` extends (its keys win).

The names follow Ray's rules, checked here so a bad one is a 400 at deploy time rather than a
Ray error when the actor is made: a resource is any custom name (``node:10.0.0.5`` pins to a
node) except those lmaas asks for itself (``CPU`` from ``engine.threads``, ``memory`` from the
resource pool) or cannot use (``GPU``); a quantity is positive, to 1/10000. A label key is a
Kubernetes-style key (an optional DNS prefix and ``/``, then a name of up to 63 characters), a
selector value a label value, ``!value``, ``in(a, b)`` or ``!in(a, b)``; the spaces of a list
are dropped (Ray 2.60 accepts ``in(a, b)`` but then looks for a label `` b``, which no node has).
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

_NAME: Final = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_LABEL_KEY: Final = re.compile(rf"(?:[a-z0-9](?:[a-z0-9.-]{{0,251}}[a-z0-9])?/)?{_NAME}")
_SELECTOR: Final = re.compile(rf"!?(?:{_NAME}|(?:in)?\({_NAME}(?:,{_NAME})*\))")
_RESOURCE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}")
# lmaas asks for these itself (num_cpus, memory), or cannot use them (a CPU-only worker).
_RESERVED: Final = {
    "CPU": "CPUs come from the engine's threads (engine.threads over cluster.cpu_overcommit)",
    "memory": "memory comes from the resource pool's count of a replica",
    "object_store_memory": "replicas do not use Ray's object store",
    "GPU": "replicas run on CPUs",
}


def _resources(value: dict[str, float]) -> dict[str, float]:
    for name, quantity in value.items():
        if name in _RESERVED:
            raise ValueError(f"resource {name!r} cannot be asked for: {_RESERVED[name]}")
        if not _RESOURCE.fullmatch(name):
            raise ValueError(
                f"resource name {name!r}: letters, digits and _ . : / - (up to 128), not "
                "starting with . : / or -"
            )
        if not 0 < quantity <= 1_000_000 or round(quantity, 4) != quantity:
            raise ValueError(
                f"resource {name!r}: a quantity above 0, up to 1000000, to 4 decimal places"
            )
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    value = {k: re.sub(r",\s+", ",", v) for k, v in value.items()}
    for key, selector in value.items():
        if not _LABEL_KEY.fullmatch(key):
            raise ValueError(
                f"label key {key!r}: an optional DNS prefix and '/', then 1-63 letters, "
                "digits and - _ . beginning and ending with a letter or digit"
            )
        if not _SELECTOR.fullmatch(selector):
            raise ValueError(
                f"label {key!r}: {selector!r} is not a value (1-63 letters, digits and - _ . "
                "beginning and ending with a letter or digit), !value, in(a, b) or !in(a, b)"
            )
    return value


RayResources = Annotated[dict[str, float], AfterValidator(_resources)]
LabelSelector = Annotated[dict[str, str], AfterValidator(_labels)]


class PlacementConfig(BaseModel):
    """Where a deployment's replicas may run (a Ray cluster; the local kind refuses it)."""

    model_config = ConfigDict(extra="forbid")

    resources: Annotated[
        RayResources,
        Field(
            max_length=16,
            description="Custom Ray resources each replica's actor asks for, besides its CPUs "
            "and memory (e.g. {lmaas_large: 1} for nodes started with --resources "
            "'{\"lmaas_large\": 4}'); added to cluster.ray_resources",
        ),
    ] = Field(default_factory=dict)
    label_selector: Annotated[
        LabelSelector,
        Field(
            max_length=16,
            description="Node labels each replica's node must have (Ray's label_selector: "
            "value, !value, in(a, b), !in(a, b)); added to cluster.ray_label_selector",
        ),
    ] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.resources and not self.label_selector

    def describe(self) -> str:
        asked = [f"{k}={v:g}" for k, v in self.resources.items()]
        asked += [f"{k}={v}" for k, v in self.label_selector.items()]
        return ", ".join(asked)
