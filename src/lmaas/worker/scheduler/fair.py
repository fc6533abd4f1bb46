"""The waiting queue: priority classes first, then weighted fair sharing across tenants.

Pure (no clock: the scheduler passes its step count). Which waiting request is admitted next:

1. a preempted request (it was running; it goes back to the front, as before fair sharing);
2. otherwise, among the oldest waiting request of every (tenant, class) queue, the one of the
   highest *effective* class (``rank`` 0 is interactive, 1 batch, 2 background; a request
   gains one class for every ``aging_steps`` steps it has waited, so a lower class cannot
   starve forever);
3. within that class, the tenant that has been served least for its weight: start-time fair
   queuing over tokens. Every tenant has a virtual time; admitting a request adds its cost
   (prompt tokens + the tokens it may generate, times its slots) divided by its weight. A
   tenant that starts waiting again begins at the virtual time of the latest admission, so
   idle time is not banked as credit. With weights 2:1 and both backlogged, admitted tokens
   go about 2:1;
4. ties go to the earlier arrival.

A tenant's own requests of one class stay first-come first-served. A request the scheduler
took out of the running set to make room for another tenant (``push_tenant_front``) goes back to
the front of its own tenant's queue, and is not charged again when readmitted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Queued(Protocol):
    """What the queue reads of a waiting sequence."""

    tenant: str | None
    weight: float
    rank: int
    arrival: int  # order of arrival (a counter)
    enqueued_step: int

    @property
    def admission_cost(self) -> int: ...


_Key = tuple[str | None, int]
S = TypeVar("S", bound=Queued)


class FairQueue(Generic[S]):
    def __init__(self, aging_steps: int) -> None:
        if aging_steps < 1:
            raise ValueError("aging_steps must be >= 1")
        self.aging_steps = aging_steps
        self._front: deque[S] = deque()  # preempted, readmitted first
        self._queues: dict[_Key, deque[S]] = {}
        self._waiting_per_tenant: dict[str | None, int] = {}
        self._vtime: dict[str | None, float] = {}
        self._vclock = 0.0
        # Requests taken out of the running set for another tenant's fair share: readmitted
        # from the front of their own tenant's queue and not charged a second time.
        self._uncharged: set[int] = set()

    def __len__(self) -> int:
        return len(self._front) + sum(self._waiting_per_tenant.values())

    def __bool__(self) -> bool:
        return bool(self._front or self._queues)

    def __iter__(self) -> Iterator[S]:
        yield from self._front
        for q in self._queues.values():
            yield from q

    def virtual_time(self, tenant: str | None) -> float:
        """How much ``tenant`` has been served, per unit of weight (for tests and metrics)."""
        return self._vtime.get(tenant, self._vclock)

    def push(self, seq: S) -> None:
        """A new request joins the back of its tenant's queue for its class."""
        self._push(seq, front=False)

    def _push(self, seq: S, *, front: bool) -> None:
        tenant = seq.tenant
        if not self._waiting_per_tenant.get(tenant):
            self._vtime[tenant] = max(self._vtime.get(tenant, 0.0), self._vclock)
        self._waiting_per_tenant[tenant] = self._waiting_per_tenant.get(tenant, 0) + 1
        q = self._queues.setdefault((tenant, seq.rank), deque())
        if front:
            q.appendleft(seq)
        else:
            q.append(seq)

    def push_front(self, seq: S) -> None:
        """A preempted request: next in line, and not charged again."""
        self._front.appendleft(seq)

    def push_tenant_front(self, seq: S) -> None:
        """A request preempted for fairness: first of its own tenant's queue, not charged again
        when it is readmitted (it was charged when first admitted)."""
        self._push(seq, front=True)
        self._uncharged.add(id(seq))

    def is_front(self, seq: S) -> bool:
        """Whether ``seq`` was preempted for room and is readmitted ahead of everyone."""
        return any(s is seq for s in self._front)

    def peek(self, step: int) -> S | None:
        """The request to admit next at scheduler step ``step``."""
        if self._front:
            return self._front[0]
        best: S | None = None
        best_key: tuple[int, float, int] | None = None
        for (tenant, _), q in self._queues.items():
            head = q[0]
            aged = (step - head.enqueued_step) // self.aging_steps
            key = (max(head.rank - aged, 0), self._vtime[tenant], head.arrival)
            if best_key is None or key < best_key:
                best, best_key = head, key
        return best

    def pop(self, seq: S) -> None:
        """Take ``seq`` (what ``peek`` returned) out to admit it, charging its tenant."""
        if self._front and self._front[0] is seq:
            self._front.popleft()
            return
        self._take(seq)
        if id(seq) in self._uncharged:
            self._uncharged.discard(id(seq))
            return
        start = self._vtime[seq.tenant]
        self._vclock = max(self._vclock, start)
        self._vtime[seq.tenant] = start + seq.admission_cost / seq.weight
        self._forget_idle()

    def remove(self, seq: S) -> None:
        """Drop a waiting request (aborted) without charging anyone."""
        if seq in self._front:
            self._front.remove(seq)
            return
        self._uncharged.discard(id(seq))
        self._take(seq)

    def _take(self, seq: S) -> None:
        key = (seq.tenant, seq.rank)
        q = self._queues[key]
        q.remove(seq)
        if not q:
            del self._queues[key]
        left = self._waiting_per_tenant[seq.tenant] - 1
        if left:
            self._waiting_per_tenant[seq.tenant] = left
        else:
            del self._waiting_per_tenant[seq.tenant]

    def _forget_idle(self) -> None:
        """Drop the virtual times that a returning tenant would be raised to anyway."""
        if len(self._vtime) <= 2 * len(self._waiting_per_tenant) + 64:
            return
        for tenant in [t for t, v in self._vtime.items() if v <= self._vclock]:
            if tenant not in self._waiting_per_tenant:
                del self._vtime[tenant]
