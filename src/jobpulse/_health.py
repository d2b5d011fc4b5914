"""Health policy (the spec's rules, per-job settings instead of a hard-coded list) and the
health document served at ``GET /api/v1/health/jobs``."""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import operator
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, NamedTuple

from jobpulse._guard import Guard
from jobpulse._job import HealthRow
from jobpulse._model import (
    JobsSummary,
    JobState,
    JobStatus,
    dump_json,
    encode_json_str,
    rfc3339,
)

__all__ = [
    "FULL",
    "PROCESS_VIEW",
    "HealthDocument",
    "HealthReport",
    "HealthSnapshot",
    "HealthStatus",
    "JobsPart",
    "Selection",
    "Variant",
    "evaluate",
]

#: `HealthReport.view` without a store.
PROCESS_VIEW: Mapping[str, Any] = MappingProxyType({"scope": "process"})
_STATE_VALUES = tuple(state.value for state in JobState)

# Generations of jobs parts and views, unique in a process (next() on a count is atomic
# under the GIL), and the process's own token: the entity tags of two processes never
# match, even when they count alike (a child forked from a parent that had counted, two
# workers of one server).
_GENERATIONS = itertools.count(1)
_process = [secrets.token_hex(6)]


def _new_process_token() -> None:  # pragma: no cover - runs in a forked child only
    _process[0] = secrets.token_hex(6)


if hasattr(os, "register_at_fork"):  # pragma: no branch - not on Windows
    os.register_at_fork(after_in_child=_new_process_token)


class HealthStatus(str, enum.Enum):
    """Overall health, with the HTTP status the endpoint answers it with."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self]

    def __str__(self) -> str:
        return self.value


_HTTP_STATUS = {HealthStatus.HEALTHY: 200, HealthStatus.DEGRADED: 206, HealthStatus.UNHEALTHY: 503}


def evaluate(statuses: Mapping[str, JobStatus]) -> HealthStatus:
    """The spec's rules, with criticality and the failure threshold set per job.

    - unhealthy: any job stalled; a critical job with at least ``failure_threshold``
      consecutive failures; a critical job that missed its schedule;
    - degraded: any other job whose last run failed, or that missed its schedule;
    - healthy: otherwise (jobs that never ran are healthy).
    """
    return _judge(
        [
            (job.state.value, job.critical, job.consecutive_failures, job.failure_threshold, b"", 0)
            for job in statuses.values()
        ]
    )


def _judge(rows: Iterable[HealthRow]) -> HealthStatus:
    """`evaluate`'s rules over health rows."""
    result = HealthStatus.HEALTHY
    for state, critical, failures, threshold, _, _ in rows:
        if state == "stalled":
            return HealthStatus.UNHEALTHY
        missed = state == "missed"
        if critical and (missed or failures >= threshold):
            return HealthStatus.UNHEALTHY
        if missed or failures > 0:
            result = HealthStatus.DEGRADED
    return result


# A row's part in `_judge`'s verdict: the status it alone would give, as an index here.
_SEVERITIES = (HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY)


def _severity(row: HealthRow) -> int:
    state, critical, failures, threshold, _, _ = row
    missed = state == "missed"
    if state == "stalled" or (critical and (missed or failures >= threshold)):
        return 2
    return 1 if missed or failures > 0 else 0


class _Tally(NamedTuple):
    """How many rows are in each state (by `JobState` value) and of each severity."""

    states: dict[str, int]
    severities: list[int]

    @classmethod
    def of(cls, rows: Iterable[HealthRow]) -> _Tally:
        tally = cls(dict.fromkeys(_STATE_VALUES, 0), [0, 0, 0])
        tally.add(rows)
        return tally

    def add(self, rows: Iterable[HealthRow]) -> None:
        states, severities = self.states, self.severities
        for row in rows:
            states[row[0]] += 1
            severities[_severity(row)] += 1

    def replace(self, old: list[HealthRow], new: list[HealthRow], changed: Iterable[int]) -> None:
        """Count ``new[index]`` instead of ``old[index]`` for each index `changed`."""
        states, severities = self.states, self.severities
        for index in changed:
            was, now = old[index], new[index]
            # Mostly a run ended as the one before: the same state and health fields.
            if was[0] != now[0] or was[1] != now[1] or was[2] != now[2] or was[3] != now[3]:
                states[was[0]] -= 1
                severities[_severity(was)] -= 1
                states[now[0]] += 1
                severities[_severity(now)] += 1

    def status(self) -> HealthStatus:
        severities = self.severities
        return _SEVERITIES[2 if severities[2] else 1 if severities[1] else 0]


@dataclass(frozen=True)
class HealthReport:
    """The health of every job at one moment. `to_dict` is the endpoint's JSON document."""

    status: HealthStatus
    timestamp: datetime
    jobs: Mapping[str, JobStatus]
    summary: JobsSummary
    duration_ms: float
    #: Whose view this is: ``{"scope": "process"}``, or with a store ``{"scope": "fleet",
    #: "store": "ok", "instances": [...]}`` (``"store": "degraded"`` and ``store_error``
    #: when this process's writes fail; ``"scope": "process"``, ``"store": "unavailable"``
    #: and ``store_error`` when the store could not be read: the process's own view).
    view: Mapping[str, Any] = dataclasses.field(default_factory=lambda: PROCESS_VIEW)

    @property
    def http_status(self) -> int:
        """200 healthy, 206 degraded, 503 unhealthy."""
        return self.status.http_status

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "timestamp": rfc3339(self.timestamp),
            **self.view,
            "jobs": {name: job.to_dict() for name, job in self.jobs.items()},
            "summary": self.summary.to_dict(),
            "duration_ms": round(self.duration_ms, 3),
        }

    def to_json(self) -> bytes:
        """`to_dict` as compact UTF-8 JSON, assembled from each job's cached member."""
        jobs = b",".join([job.json_member for job in self.jobs.values()])
        head, tail = _frame(self.status, self.timestamp, self.summary, self.duration_ms, self.view)
        return b"".join((head, jobs, tail))


class Selection(NamedTuple):
    """Which jobs of the view the ``jobs`` object of a document shows: those in one of
    `states` (`JobState` values), whose ``critical`` is `critical`, named in `names`; None
    selects on nothing. The document's status, code and summary stay those of every job."""

    states: frozenset[str] | None = None
    critical: bool | None = None
    names: frozenset[str] | None = None

    def key(self) -> tuple[Any, ...]:
        """A value equal for equal selections, in a stable order (for the ETag)."""
        return (
            None if self.states is None else sorted(self.states),
            self.critical,
            None if self.names is None else sorted(self.names),
        )

    def select(self, rows: Sequence[HealthRow]) -> list[int]:
        """The indexes of the rows selected."""
        states, critical, names = self
        keys = None if names is None else {encode_json_str(name).encode() for name in names}
        chosen = []
        for index, (state, is_critical, _, _, member, _) in enumerate(rows):
            if states is not None and state not in states:
                continue
            if critical is not None and is_critical is not critical:
                continue
            if keys is not None and _member_key(member) not in keys:
                continue
            chosen.append(index)
        return chosen


#: What ``jobs`` holds of each job: everything (``full``), or without its error text and
#: metadata (``open``), each compact or indented (``pretty``).
class Variant(NamedTuple):
    open: bool = False
    pretty: bool = False


FULL = Variant()

# Where a member's error text and metadata are (see `member_json`: the fields and their
# order). A '"' inside a JSON string is always escaped, so ',"' never occurs in one: the
# first ',"last_error":' is the field, and the value ends where ',"last_error_category":'
# begins. The metadata object may hold any key, "created_at" too: its end is the last
# ',"created_at":', after which come only the two times.
_NAME_END = b':{"job_name":'
_LAST_ERROR = b',"last_error":'
_AFTER_LAST_ERROR = b',"last_error_category":'
_METADATA = b',"metadata":'
_AFTER_METADATA = b',"created_at":'
_CACHED_TEXTS = 64
_MEMBER = operator.itemgetter(4)
_VARIANT_GUARD = Guard("health document variant")


def _member_key(member: bytes) -> bytes:
    """The JSON string of the job's name that starts its member."""
    return member[: member.find(_NAME_END)]


def _variant_member(row: HealthRow, variant: Variant) -> bytes:
    member = _open_member(row) if variant.open else row[4]
    return _pretty_member(member) if variant.pretty else member


def _open_member(row: HealthRow) -> bytes:
    """The row's member with ``"last_error": null`` and ``"metadata": {}``."""
    member = row[4]
    error = member.find(_LAST_ERROR)
    if error < 0:
        return _marked_member(row)  # an unavailable row: neither text nor metadata
    error += len(_LAST_ERROR)
    category = member.find(_AFTER_LAST_ERROR, error)
    metadata = member.find(_METADATA, category)
    created = member.rfind(_AFTER_METADATA)
    if category < 0 or metadata < 0 or created < metadata:  # pragma: no cover - see tests
        return _marked_member(row)
    metadata += len(_METADATA)
    return b"".join((member[:error], b"null", member[category:metadata], b"{}", member[created:]))


def _marked_member(row: HealthRow) -> bytes:
    """The member `unavailable_row` serves: the name, the health fields, an error marker."""
    state, critical, failures, threshold, member, _ = row
    name = _member_key(member).decode()
    return (
        f'{name}:{{"job_name":{name},"status":"{state}",'
        f'"critical":{"true" if critical else "false"},'
        f'"consecutive_failures":{failures},"failure_threshold":{threshold},'
        '"error":"this job\'s status could not be shown"}'
    ).encode()


def _pretty_member(member: bytes) -> bytes:
    """`member` indented by two spaces a level, at the depth of ``jobs``' members."""
    text = json.dumps(json.loads(b"{" + member + b"}"), indent=2, ensure_ascii=False)
    # '{\n  "name": {\n    ...\n  }\n}' -> '    "name": {\n      ...\n    }'; a JSON string
    # holds no raw newline, so every "\n" starts a line.
    return ("  " + text[2:-2].replace("\n", "\n  ")).encode("utf-8", "backslashreplace")


class JobsPart:
    """The ``jobs`` object of one state of the view: its rows, its health and counts, and
    its members as served, each variant and selection built once and kept while the view
    stays in that state (`generation` names the state: no two parts share one in a
    process). Thread-safe: what it caches is only ever added whole.
    """

    __slots__ = (
        "_inherited",
        "_kept",
        "_members",
        "_tally",
        "_texts",
        "counts",
        "generation",
        "rows",
        "status",
    )

    _tally: _Tally

    def __init__(
        self,
        rows: list[HealthRow],
        now: datetime,
        before: JobsPart | None,
        changed: Sequence[int] | None = None,
    ) -> None:
        """`changed`: the indexes of the rows that are not those of `before` (of as many
        rows), if known: only those are judged and counted again."""
        self.rows = rows
        if before is None or changed is None:
            tally = _Tally.of(rows)
        else:
            tally = _Tally(dict(before._tally.states), list(before._tally.severities))
            tally.replace(before.rows, rows, changed)
        self._tally = tally
        self.status = tally.status()
        self.counts = JobsSummary.of_counts(tally.states, len(rows), now)
        self.generation = next(_GENERATIONS)
        self._texts: dict[tuple[Variant, Selection | None], bytes] = {
            (FULL, None): b",".join(map(_MEMBER, rows))
        }
        self._kept = 0  # the bytes of the other texts
        self._members: dict[Variant, list[bytes]] = {}
        # The members another variant had before: most rows are the same objects, and
        # their members are reused, not rebuilt. Only the latest built of each is kept.
        self._inherited: dict[Variant, dict[int, tuple[HealthRow, bytes]]] = {}
        if before is not None:
            for variant, members in before._members.items():
                self._inherited[variant] = {
                    id(row): (row, member) for row, member in zip(before.rows, members, strict=True)
                }
            for variant, known in before._inherited.items():
                self._inherited.setdefault(variant, known)

    def text(self, variant: Variant = FULL, selection: Selection | None = None) -> bytes:
        """What goes between the braces of ``jobs`` (compact), or the whole ``jobs``
        object indented at the document's second level (``pretty``)."""
        key = (variant, selection)
        text = self._texts.get(key)
        if text is None:
            if variant == FULL:
                members = [row[4] for row in self.rows]
            else:
                members = self._members.get(variant) or self._build(variant)
            if selection is not None:
                members = [members[index] for index in selection.select(self.rows)]
            if not variant.pretty:
                text = b",".join(members)
            elif members:
                text = b"{\n" + b",\n".join(members) + b"\n  }"
            else:
                text = b"{}"
            full = self._texts.get((FULL, None), b"")
            self._kept += len(text)
            # At most so many texts, and about four documents' worth: any selection of a
            # big view is cached, but no series of selections holds much more memory.
            if len(self._texts) >= _CACHED_TEXTS or self._kept > 4 * len(full) + (1 << 20):
                self._texts = {(FULL, None): full}
                self._kept = len(text)
            self._texts[key] = text
        return text

    def _build(self, variant: Variant) -> list[bytes]:
        known = self._inherited.get(variant, {})
        members = []
        for row in self.rows:
            entry = known.get(id(row))
            if entry is not None and entry[0] is row:
                members.append(entry[1])
                continue
            member = None
            with _VARIANT_GUARD:  # one job's bug is reported, and that job marked
                member = _variant_member(row, variant)
            if member is None:
                marked = _marked_member(row)
                member = _pretty_member(marked) if variant.pretty else marked
            members.append(member)
        self._members[variant] = members
        self._inherited.pop(variant, None)
        return members


class HealthSnapshot(NamedTuple):
    """The view at one moment, as the endpoint serves it: `parts` are the document,
    `etag` names what it holds but for the times (``timestamp``, ``duration_ms``,
    ``summary.last_update_time``, the instances' ``last_seen``)."""

    jobs: JobsPart
    now: datetime
    started: float
    view: Mapping[str, Any]
    view_generation: int

    @property
    def status(self) -> HealthStatus:
        return self.jobs.status

    def etag(self, variant: str = "") -> str:
        """A weak entity tag: equal for two snapshots of this process exactly when their
        documents are equal but for the times. `variant` names the query answered (what
        jobs, which fields, how indented); a short token without '"'."""
        return f'W/"{_process[0]}-{self.jobs.generation:x}-{self.view_generation:x}{variant}"'

    def parts(self, variant: Variant = FULL, selection: Selection | None = None) -> list[bytes]:
        """The document, as parts to send (or join) in order. ``open`` leaves out
        ``store_error`` (null) as it does the jobs' error texts and metadata."""
        view = self.view
        if variant.open and view.get("store_error") is not None:
            view = {**view, "store_error": None}
        summary = dataclasses.replace(self.jobs.counts, last_update_time=self.now)
        elapsed = (time.perf_counter() - self.started) * 1000.0
        frame = _pretty_frame if variant.pretty else _frame
        head, tail = frame(self.jobs.status, self.now, summary, elapsed, view)
        return [head, self.jobs.text(variant, selection), tail]


class HealthDocument:
    """Builds the endpoint's document from `StatusRegistry.health_rows`.

    The ``jobs`` part of the last document, its health and its counts are kept and reused
    while the rows are those it was built from (no job changed, none came or went): a
    steady poll, handed the very list of rows again, then costs no pass over the jobs and
    no copy of their JSON. Thread-safe: the cache is one object, replaced whole.
    """

    def __init__(self) -> None:
        self._last: JobsPart | None = None
        # (the last view, its key, its generation): a view's generation changes when
        # anything in it changes but the instances' heartbeats.
        self._view: tuple[Mapping[str, Any], list[Any], int] | None = None

    def snapshot(
        self,
        rows: list[HealthRow],
        now: datetime,
        started: float,
        view: Mapping[str, Any] = PROCESS_VIEW,
    ) -> HealthSnapshot:
        """The view now. `started` is when reading the view began (``time.perf_counter()``);
        `view` is the document's ``scope`` and what goes with it (see `HealthReport.view`)."""
        last = self._last
        # The very list the last part was built from while nothing changed (the view hands
        # out its last rows again). Else an unchanged job's row is the very object it was,
        # and a row rebuilt alike (a change undone, at another version) shows the same: so
        # does the document.
        if last is None:
            last = self._last = JobsPart(rows, now, None)
        elif last.rows is not rows:
            old = last.rows
            if len(old) != len(rows):
                last = self._last = JobsPart(rows, now, last)
            else:
                changed = list(_other_objects(old, rows))
                if any(old[index][:5] != rows[index][:5] for index in changed):
                    last = self._last = JobsPart(rows, now, last, changed)
        return HealthSnapshot(last, now, started, view, self._view_generation(view))

    def _view_generation(self, view: Mapping[str, Any]) -> int:
        last = self._view
        if last is not None and last[0] is view:
            return last[2]
        key = _view_key(view)
        generation = last[2] if last is not None and last[1] == key else next(_GENERATIONS)
        self._view = (view, key, generation)
        return generation


def _other_objects(old: list[HealthRow], new: list[HealthRow]) -> Iterator[int]:
    """The indexes where two lists of equal length hold other objects, found in C: most
    rows of a poll are the very objects of the one before."""
    return itertools.compress(itertools.count(), map(operator.is_not, old, new))


def _view_key(view: Mapping[str, Any]) -> list[Any]:
    """`view` but for the instances' heartbeats (``last_seen``), which move every second."""
    key: list[Any] = []
    for name, value in view.items():
        if name == "instances":
            value = [
                [item for item in instance.items() if item[0] != "last_seen"] for instance in value
            ]
        key.append((name, value))
    return key


def _pretty_frame(
    status: HealthStatus,
    timestamp: datetime,
    summary: JobsSummary,
    duration_ms: float,
    view: Mapping[str, Any],
) -> tuple[bytes, bytes]:
    """`_frame`, indented by two spaces a level (``jobs`` comes as `JobsPart.text` gives it)."""
    head = _indented({"status": status.value, "timestamp": rfc3339(timestamp), **view})
    summary_text = _indented(summary.to_dict()).replace("\n", "\n  ")
    tail = f',\n  "summary": {summary_text},\n  "duration_ms": {round(duration_ms, 3)!r}\n}}'
    return (head[:-2] + ',\n  "jobs": ').encode("utf-8", "backslashreplace"), tail.encode()


def _indented(content: Mapping[str, Any]) -> str:
    return json.dumps(content, indent=2, ensure_ascii=False)


def _frame(
    status: HealthStatus,
    timestamp: datetime,
    summary: JobsSummary,
    duration_ms: float,
    view: Mapping[str, Any],
) -> tuple[bytes, bytes]:
    """What comes before and after the members of ``jobs`` in the document."""
    head = dump_json({"status": status.value, "timestamp": rfc3339(timestamp), **view})
    tail = dump_json({"summary": summary.to_dict(), "duration_ms": round(duration_ms, 3)})
    return head[:-1] + b',"jobs":{', b"}," + tail[1:]
