"""A lease lock in a small DynamoDB table, so two KPI runs never overlap.

The KPI job reads the curated store, merges its batch, writes KPIs and replaces curated
partitions. Two runs doing that at once would each merge into the store as it was before the
other, and the later writer would drop the earlier one's rows (a lost update). So the job holds
the lease item ``LOCK_CURATED_STORE`` of ``LOCK_TABLE`` from before it reads until after it has
written:

- acquire: a conditional ``PutItem`` that succeeds only if no item exists or the one there has
  expired (``attribute_not_exists(lock_id) OR expires_at < :now``); otherwise wait with
  exponential backoff and full jitter, up to ``wait_s``, then :class:`LockTimeoutError`
  (exit code 4: the state machine retries the task later);
- renew: a thread pushes ``expires_at`` forward every ``lease_s / 3`` with a conditional
  ``UpdateItem`` on our owner id; a lease taken over meanwhile (we were stalled past the
  expiry) is noticed there and :meth:`Lease.ensure_held` raises :class:`LockLostError` before
  the next step, and the KPI writers' :class:`LeaseGuard` before their next write request;
- release: a conditional ``DeleteItem`` on our owner id, in ``finally``. A run that dies without
  releasing leaves an item that expires after ``lease_s``: the next run takes it over (and the
  table's TTL removes it eventually).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from botocore.exceptions import ClientError

from ecom_pipeline.core.aws_errors import error_code
from ecom_pipeline.core.contract import LOCK_EXPIRY_ATTRIBUTE, LOCK_TABLE, LOCK_TABLE_KEY
from ecom_pipeline.core.settings import DEFAULT_LOCK_LEASE_S, DEFAULT_LOCK_WAIT_S

log = logging.getLogger(__name__)

# Defaults of the KPI job's lock (config.py: KPI_LOCK_LEASE_S, KPI_LOCK_WAIT_S override them).
DEFAULT_LEASE_S = DEFAULT_LOCK_LEASE_S
DEFAULT_WAIT_S = DEFAULT_LOCK_WAIT_S


class LockTimeoutError(RuntimeError):
    """Someone else held the lock for longer than we may wait: retry later (exit code 4)."""


class LockLostError(RuntimeError):
    """Our lease expired and was taken over: stop before writing anything more (exit code 4)."""


@dataclass(frozen=True)
class LeaseGuard:
    """A picklable check, run by the KPI writers on the executors before each write request,
    that the lease is still ours and unexpired (one consistent ``GetItem`` of the lock item).

    It narrows the window of a run stalled past its lease to one request in flight, where
    :meth:`Lease.ensure_held` between the job's steps leaves a whole step."""

    table: str
    lock_id: str
    owner: str

    def __call__(self, client: Any) -> None:
        """Raises LockLostError unless the lease is ours and unexpired."""
        item = client.get_item(
            TableName=self.table, Key={LOCK_TABLE_KEY[0]: {"S": self.lock_id}}, ConsistentRead=True
        ).get("Item", {})
        owner = item.get("owner", {}).get("S")
        expires = float(item.get(LOCK_EXPIRY_ATTRIBUTE, {}).get("N", "0"))
        if owner != self.owner or expires <= time.time():
            holder = {name: next(iter(value.values())) for name, value in item.items()}
            raise LockLostError(
                f"lease on {self.lock_id!r} is no longer ours (held by {_describe(holder)}); "
                "stopping before the next write"
            )


def lock_table_definition(table: str = LOCK_TABLE) -> dict[str, Any]:
    """CreateTable keyword arguments for the lock table (``infra/template.yaml`` matches)."""
    (key,) = LOCK_TABLE_KEY
    return {
        "TableName": table,
        "KeySchema": [{"AttributeName": key, "KeyType": "HASH"}],
        "AttributeDefinitions": [{"AttributeName": key, "AttributeType": "S"}],
        "BillingMode": "PAY_PER_REQUEST",
    }


def _is_condition_failure(error: ClientError) -> bool:
    return error_code(error) == "ConditionalCheckFailedException"


@dataclass
class Lease:
    """``with Lease(client, "curated-store", holder={...}):`` holds the lock for the block.

    ``holder`` (e.g. batch_id and execution_id) is stored on the item, so a waiting run can say
    whom it waits for. ``clock`` is wall-clock seconds (leases are compared across machines).
    """

    client: Any
    lock_id: str
    holder: Mapping[str, str] = field(default_factory=dict)
    table: str = LOCK_TABLE
    lease_s: float = DEFAULT_LEASE_S
    wait_s: float = DEFAULT_WAIT_S
    base_delay_s: float = 0.5
    max_delay_s: float = 15.0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Any] = time.sleep
    rng: Callable[[], float] = random.random
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    waited_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _renewer: threading.Thread | None = field(default=None, repr=False)
    _lost: str | None = field(default=None, repr=False)
    _held: bool = field(default=False, repr=False)

    # -- acquire / release --

    def try_acquire(self) -> bool:
        """One conditional PutItem: True if the lock is now ours."""
        now = self.clock()
        item = {
            LOCK_TABLE_KEY[0]: {"S": self.lock_id},
            "owner": {"S": self.owner},
            LOCK_EXPIRY_ATTRIBUTE: {"N": str(int(now + self.lease_s))},
            "acquired_at": {"N": str(int(now))},
            **{name: {"S": str(value)} for name, value in self.holder.items() if value},
        }
        try:
            self.client.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(#key) OR #expires < :now",
                ExpressionAttributeNames={
                    "#key": LOCK_TABLE_KEY[0],
                    "#expires": LOCK_EXPIRY_ATTRIBUTE,
                },
                ExpressionAttributeValues={":now": {"N": str(int(now))}},
            )
        except ClientError as error:
            if _is_condition_failure(error):
                return False
            raise
        self._held = True
        return True

    def guard(self) -> LeaseGuard:
        """The check the executors run before each write request (see LeaseGuard)."""
        return LeaseGuard(self.table, self.lock_id, self.owner)

    def current_holder(self) -> dict[str, str]:
        """The lock item as it is now (strings), or {} if free."""
        item = self.client.get_item(
            TableName=self.table, Key={LOCK_TABLE_KEY[0]: {"S": self.lock_id}}, ConsistentRead=True
        ).get("Item", {})
        return {name: next(iter(value.values())) for name, value in item.items()}

    def acquire(self) -> None:
        """Take the lock, waiting with backoff up to ``wait_s``; raises LockTimeoutError."""
        started = self.clock()
        attempt = 0
        while not self.try_acquire():
            holder = self.current_holder()
            elapsed = self.clock() - started
            if elapsed >= self.wait_s:
                raise LockTimeoutError(
                    f"lock {self.lock_id!r} in table {self.table!r} still held after "
                    f"{elapsed:.0f}s by {_describe(holder)}; retry later"
                )
            delay = min(self.max_delay_s, self.base_delay_s * 2**attempt) * (0.5 + self.rng() / 2)
            delay = min(delay, max(0.0, self.wait_s - elapsed))
            log.info(
                "waiting %.1fs for lock %s held by %s",
                delay,
                self.lock_id,
                _describe(holder),
                extra={
                    "event": "lock_wait",
                    "lock_id": self.lock_id,
                    "held_by_batch": holder.get("batch_id"),
                    "held_by_execution": holder.get("execution_id"),
                    "waited_s": round(elapsed, 3),
                },
            )
            self.sleep(delay)
            attempt += 1
        self.waited_s = round(self.clock() - started, 3)
        log.info(
            "lock %s acquired",
            self.lock_id,
            extra={"event": "lock_acquired", "lock_id": self.lock_id, "waited_s": self.waited_s},
        )

    def renew(self) -> bool:
        """Push the expiry forward if we still own the lease; False (and remembered) if not."""
        try:
            self.client.update_item(
                TableName=self.table,
                Key={LOCK_TABLE_KEY[0]: {"S": self.lock_id}},
                UpdateExpression="SET #expires = :expires",
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#expires": LOCK_EXPIRY_ATTRIBUTE, "#owner": "owner"},
                ExpressionAttributeValues={
                    ":expires": {"N": str(int(self.clock() + self.lease_s))},
                    ":owner": {"S": self.owner},
                },
            )
        except ClientError as error:
            if not _is_condition_failure(error):
                raise
            lost = f"lease on {self.lock_id!r} was taken over by {_describe(self.current_holder())}"
        else:
            return True
        self._lost = lost
        log.error(lost, extra={"event": "lock_lost", "lock_id": self.lock_id})
        return False

    def release(self) -> None:
        """Delete the item if it is still ours (a taken-over lease is left to its new owner)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if not self._held:
            return
        self._held = False
        try:
            self.client.delete_item(
                TableName=self.table,
                Key={LOCK_TABLE_KEY[0]: {"S": self.lock_id}},
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": self.owner}},
            )
        except ClientError as error:
            if not _is_condition_failure(error):
                raise
        log.info(
            "lock %s released",
            self.lock_id,
            extra={"event": "lock_released", "lock_id": self.lock_id},
        )

    def ensure_held(self) -> None:
        """Raise LockLostError if a renewal found the lease taken over."""
        if self._lost is not None:
            raise LockLostError(self._lost)

    def fence(self) -> None:
        """Raise LockLostError unless the lease is ours and unexpired now (one consistent read):
        the check before each change to the curated store, so a run stalled past its lease
        cannot write over a takeover's recovery."""
        self.ensure_held()
        self.guard()(self.client)

    # -- renewing --

    def _renew_loop(self) -> None:
        interval = self.lease_s / 3
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    return
            except Exception:  # a failed renewal is retried at the next interval
                log.warning(
                    "lock renewal failed", exc_info=True, extra={"event": "lock_renew_failed"}
                )

    def __enter__(self) -> Lease:
        self.acquire()
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="lease-renewer", daemon=True)
        self._renewer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _describe(holder: Mapping[str, str]) -> str:
    if not holder:
        return "nobody (just released)"
    parts = [f"batch {holder.get('batch_id', '?')}"]
    if holder.get("execution_id"):
        parts.append(f"execution {holder['execution_id']}")
    if holder.get(LOCK_EXPIRY_ATTRIBUTE):
        parts.append(f"lease until {holder[LOCK_EXPIRY_ATTRIBUTE]}")
    return ", ".join(parts)
