"""The spec's background jobs, with the chains and nodes they talk to simulated.

The spec's cron line runs five methods every ``INDEX_INTERVAL``; three carry job names there
(``btc_transaction_indexing``, ``icy_transaction_indexing``, ``swap_request_processing``:
the critical ones, with timeouts of 10, 10 and 15 minutes). The other two,
``IndexIcySwapTransaction`` and ``ProcessPendingBtcTransactions``, are named here after the
same pattern. Pending counts are reported for the spec's kinds ``btc``, ``icy`` and ``swap``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import jobpulse

from .scheduler import JobFunction
from .settings import DemoSettings

__all__ = [
    "BTC_RPC_URL",
    "CRITICAL_JOBS",
    "JOB_NAMES",
    "STALLING_JOB",
    "IcyBackendJobs",
    "RpcError",
    "create_jobs",
]

# A node URL with its credentials in it, as such URLs often are in configuration: the
# errors that quote it show that jobpulse redacts the password before anything is shown.
BTC_RPC_URL = "http://icy-indexer:b7c-n0de-s3cret@btc-node.internal:8332"
BASE_RPC_URL = "https://base-mainnet.rpc.internal"

JOB_NAMES = (
    "btc_transaction_indexing",
    "icy_transaction_indexing",
    "icy_swap_transaction_indexing",
    "swap_request_processing",
    "pending_btc_transaction_processing",
)
CRITICAL_JOBS = frozenset(
    {"btc_transaction_indexing", "icy_transaction_indexing", "swap_request_processing"}
)
#: The job that hangs now and then (waiting on bitcoind to accept a payout).
STALLING_JOB = "pending_btc_transaction_processing"

_MINUTES = 60.0


class RpcError(Exception):
    """An error answer from a node's JSON-RPC API; `code` is the node's error code."""

    def __init__(self, node: str, method: str, code: int, message: str) -> None:
        super().__init__(f"{node} JSON-RPC API error {code} in {method}: {message}")
        self.method = method
        self.code = code


ErrorFactory = Callable[[], Exception]

_BTC_FAILURES: tuple[ErrorFactory, ...] = (
    lambda: ConnectionRefusedError(
        f"cannot reach bitcoind at {BTC_RPC_URL}: [Errno 111] Connection refused"
    ),
    lambda: TimeoutError("getblock: no answer from bitcoind within 30s"),
    lambda: RpcError("bitcoind", "getblockchaininfo", -28, "Loading block index..."),
)
_ICY_FAILURES: tuple[ErrorFactory, ...] = (
    lambda: RpcError("base", "eth_getLogs", -32005, "query returned more than 10000 results"),
    lambda: TimeoutError(f"eth_getLogs at {BASE_RPC_URL}: timed out after 20s"),
)
_SWAP_INDEX_FAILURES: tuple[ErrorFactory, ...] = (
    lambda: RpcError("base", "eth_getBlockByNumber", -32000, "header not found"),
    lambda: ConnectionResetError(f"{BASE_RPC_URL}: connection reset by peer"),
)
_SWAP_FAILURES: tuple[ErrorFactory, ...] = (
    lambda: RpcError("base", "eth_sendRawTransaction", -32000, "nonce too low"),
    lambda: TimeoutError("swap payout: no transaction receipt after 60s"),
)
_PAYOUT_FAILURES: tuple[ErrorFactory, ...] = (
    lambda: RpcError("bitcoind", "sendrawtransaction", -26, "min relay fee not met"),
    lambda: ConnectionRefusedError(
        f"cannot reach bitcoind at {BTC_RPC_URL}: [Errno 111] Connection refused"
    ),
)


class IcyBackendJobs:
    """The bodies of the spec's jobs, over simulated nodes, chains and queues: a short random
    latency, backlogs of pending items, failures at the failure rate, and a stall now and then.

    Every random draw comes from one ``random.Random(settings.seed)``: the same seed gives
    the same sequence of draws, though which job gets which depends on timing. Pending counts
    are reported to `monitor` as they change. Use from the event loop's thread only.
    """

    def __init__(self, monitor: jobpulse.JobMonitor, settings: DemoSettings) -> None:
        self.monitor = monitor
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.btc_height = 871_230
        self.base_block = 23_456_000
        self._pending = {"btc": 4, "icy": 7, "swap": 2}
        self._calls: dict[str, int] = {}
        for kind, count in self._pending.items():
            monitor.set_pending(kind, count)

    async def index_btc_transactions(self) -> None:
        """Index new transactions to the BTC treasury address."""
        await self._call("btc_transaction_indexing", _BTC_FAILURES)
        self.btc_height += self._found(1)
        jobpulse.set_metadata(indexed=self._found(3), block_height=self.btc_height)

    async def index_icy_transactions(self) -> None:
        """Index ICY token transfers on Base; new ones wait for confirmations."""
        await self._call("icy_transaction_indexing", _ICY_FAILURES)
        self.base_block += self._found(12)
        indexed = self._found(4)
        self._add("icy", indexed)
        confirmed = self._take("icy", self._found(4))
        jobpulse.set_metadata(indexed=indexed, confirmed=confirmed, last_block=self.base_block)

    async def index_icy_swap_transactions(self) -> None:
        """Index ICY -> BTC swap requests on Base: each one is a pending swap."""
        await self._call("icy_swap_transaction_indexing", _SWAP_INDEX_FAILURES)
        new_swaps = self._found(2)
        self._add("swap", new_swaps)
        jobpulse.set_metadata(new_swaps=new_swaps)

    async def process_swap_requests(self) -> None:
        """Settle pending swaps: each settled swap queues a BTC payout."""
        await self._call("swap_request_processing", _SWAP_FAILURES)
        settled = self._take("swap", self._found(2))
        self._add("btc", settled)
        jobpulse.set_metadata(settled=settled)

    async def process_pending_btc_transactions(self) -> None:
        """Broadcast queued BTC payouts; bitcoind sometimes takes its time."""
        await self._call(STALLING_JOB, _PAYOUT_FAILURES)
        jobpulse.set_metadata(broadcast=self._take("btc", self._found(2)))

    async def _call(self, job: str, failures: tuple[ErrorFactory, ...]) -> None:
        """One round of `job`'s work: a short random wait, then maybe one of `failures`.
        Every ``stall_every``-th call of `STALLING_JOB` first hangs for ``stall_seconds``,
        past its ``stall_after``, and then goes on."""
        calls = self._calls[job] = self._calls.get(job, 0) + 1
        every = self.settings.stall_every
        if job == STALLING_JOB and every and calls % every == 0:
            await asyncio.sleep(self.settings.stall_seconds)
        # Well inside the interval, so that a normal run never overlaps the next tick.
        latency = self.rng.uniform(0.02, 0.3) * min(1.0, self.settings.index_interval_seconds)
        await asyncio.sleep(latency)
        if self.rng.random() < self.settings.failure_rate:
            raise self.rng.choice(failures)()

    def _found(self, most: int) -> int:
        return self.rng.randint(0, most)

    def _add(self, kind: str, count: int) -> None:
        self._pending[kind] += count
        self.monitor.set_pending(kind, self._pending[kind])

    def _take(self, kind: str, most: int) -> int:
        taken = min(most, self._pending[kind])
        self._pending[kind] -= taken
        self.monitor.set_pending(kind, self._pending[kind])
        return taken


def create_jobs(monitor: jobpulse.JobMonitor, settings: DemoSettings) -> dict[str, JobFunction]:
    """Register the spec's jobs on `monitor` (criticality, timeout, stall_after, schedule)
    and return their coroutine functions by name, in the spec's order. The functions are
    not decorated: the instrumented scheduler that runs them makes each run a monitored
    run of the job whose name is the scheduler's job id."""
    jobs = IcyBackendJobs(monitor, settings)
    bodies: tuple[tuple[str, JobFunction, float], ...] = (
        ("btc_transaction_indexing", jobs.index_btc_transactions, 10),
        ("icy_transaction_indexing", jobs.index_icy_transactions, 10),
        ("icy_swap_transaction_indexing", jobs.index_icy_swap_transactions, 10),
        ("swap_request_processing", jobs.process_swap_requests, 15),
        ("pending_btc_transaction_processing", jobs.process_pending_btc_transactions, 10),
    )
    for name, _, timeout_minutes in bodies:
        monitor.register(
            name,
            critical=name in CRITICAL_JOBS,
            failure_threshold=3,  # the spec's "more than 2 consecutive failures"
            timeout=timeout_minutes * _MINUTES,
            stall_after=settings.stall_after_seconds,
            schedule=settings.schedule,
        )
    return {name: body for name, body, _ in bodies}
