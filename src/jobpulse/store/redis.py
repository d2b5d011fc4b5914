"""The store on Redis: one view for the processes of a service on several hosts.

A Celery deployment (a web app, workers with prefork children, beat, on several hosts) or
any service whose processes share a Redis opens ``redis://host:port/db`` (``rediss://`` for
TLS; user and password from the URL). Needs redis-py (``pip install jobpulse[redis]``,
hiredis optional). One Redis, not Redis Cluster: the keys of a service are written together.

Keys, under a prefix (``jobpulse:<namespace>:<service>:`` by default, or the URL's
``?prefix=``), so that several services share one Redis:

==========================  ==================================================================
``meta``                    hash: store id, schema version, seq (bumped by every write),
                            generation (bumped when jobs are pruned), the last job id given
``lock``                    the write lock: a token, with a deadline (``PX``)
``names``, ``rows``         hashes: job name to id; id to the job's row (JSON values)
``changed``                 sorted set: job id by the seq of its row's last change
``due``                     sorted set: job id by when its expected run plus grace passes
                            (ms): what a heartbeat alone looks at
``instances``               hash: instance id to its record (JSON), heartbeat included
``applied:<instance>``      the id of the instance's last write taken (or of one refused
                            for good); expires as ``open:``
``open:<instance>``         hash: job id to the instance's runs in progress (JSON); expires
                            `retention` after the instance's last write
``lost:<instance>``         hash: ``<job id>:<run id>`` to the start of a run closed as lost;
                            expires as ``open:``
``runs:<job id>``           stream: one entry per write that brought runs of the job, its id
                            ``<seq>-0``; about the last 4,096 runs, expiring a day after the
                            last write
``ran``                     sorted set: job id by the seq of its last entry of runs
``recent``                  stream: the runs of the last 256 writes, one entry per write,
                            for the readers that keep up (one range to read)
``written``                 sorted set: the last seq written in each minute, by when (what
                            pruning the runs of more than a day ago goes by)
``pruned``                  there while a process prunes, or did in the last 55 s
==========================  ==================================================================

A write takes the lock, reads what it needs (`jobpulse.store._write.WriteState`) with one
script, plans the write in this process by the merge rules every backend shares
(`jobpulse.store._write.plan_write`), and stores the plan with one script that checks it
still holds the lock: the whole write is atomic, and a writer that lost its lock (paused
past the lock's deadline) writes nothing. Each write has an id, and is taken only if the
instance's last write taken is the one its writer read (``applied:<instance>``): a write
whose reply was lost (`UnsureWrite`) is settled before the next one, and one that reaches
Redis late is refused. A process with nothing to write sends its heartbeat alone (one
script, `RedisStore.beat`) unless a write could do more: an instance to close, or a job
in ``due`` whose time has passed. A read is one script: a consistent snapshot.
Nothing grows without bound when a process dies: its records expire or are pruned.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import operator
import os
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from jobpulse._shared import StoreError, StoreVersionError, redact
from jobpulse.store._base import (
    STOPPED_RETENTION_NS,
    Cursor,
    FleetRead,
    Instance,
    JobChange,
    OpenRun,
    RunBatch,
    UnsureWrite,
    WriteResult,
    little_endian,
)
from jobpulse.store._rows import KnownRows, Rows, encode, row_of
from jobpulse.store._write import StoredInstance, WritePlan, WriteState, plan_write

try:
    import redis
    from redis.exceptions import RedisError
except ImportError:  # pragma: no cover - the extra is missing
    raise ImportError("the Redis store needs redis-py: pip install jobpulse[redis]") from None

__all__ = ["SCHEMA_VERSION", "RedisStore", "default_prefix"]

T = TypeVar("T")

#: The layout's version (`meta`'s ``schema_version``); a store of a newer one is refused.
SCHEMA_VERSION = 1
#: About how many runs of a job the store keeps (as the view does by default).
HISTORY_RUNS = 4096
#: A job's runs expire this long after a write pushed it back (a writer does once an hour).
_HISTORY_MS = 25 * 3600 * 1000
_LOCK_MS = 5_000  # a writer paused for longer loses the lock, and writes nothing
_BUSY_SECONDS = 1.0  # how long a write waits for another process's
_PRUNE_MS = 55_000  # one prune a minute for the service, whichever process does it
#: How many writes' runs `recent` keeps, for readers that keep up.
_RECENT_WRITES = 256
_FIELDS = operator.itemgetter(0, 1, 2)  # a run's start_ns, duration_ns and end_ns
_CATEGORY = operator.itemgetter(3)
_MS = 1_000_000  # ns

# ARGV[1] is the prefix of every key; the scripts name their keys themselves (one Redis, not
# a cluster).

#: What the scripts that read share: the rows changed since a seq (their ids and values)
#: and every instance with its runs in progress.
_READING = """
local function changed_rows(p, since, upto)
  local ids, values = {}, {}
  local changed = redis.call('ZRANGEBYSCORE', p .. 'changed', '(' .. since, upto)
  for i = 1, #changed, 1000 do
    local chunk = {}
    for j = i, math.min(i + 999, #changed) do chunk[#chunk + 1] = changed[j] end
    local found = redis.call('HMGET', p .. 'rows', unpack(chunk))
    for j = 1, #chunk do
      if found[j] then ids[#ids + 1] = chunk[j]; values[#values + 1] = found[j] end
    end
  end
  return ids, values
end
local function instances_and_runs(p)
  local instances = redis.call('HGETALL', p .. 'instances')
  local open = {}
  for i = 1, #instances, 2 do
    open[#open + 1] = instances[i]
    open[#open + 1] = redis.call('HGETALL', p .. 'open:' .. instances[i])
  end
  return instances, open
end
"""

#: Takes (prefix, new store id, instance id, seq, schema version); sets up `meta` if the
#: store is new; returns meta, the instance's record, the rows changed since ARGV[4], the
#: instances, every instance's runs in progress, the instance's lost runs, and the id of its
#: last write taken ("" for none).
_STATE = (
    _READING
    + """
local p = ARGV[1]
if redis.call('HSETNX', p .. 'meta', 'store_id', ARGV[2]) == 1 then
  -- A new store, or one that lost its meta (evicted, deleted) but not the rest: the rest
  -- goes too, and every process writes its whole view to it once, as to an emptied one.
  for _, id in ipairs(redis.call('HVALS', p .. 'names')) do
    redis.call('DEL', p .. 'runs:' .. id)
  end
  for _, who in ipairs(redis.call('HKEYS', p .. 'instances')) do
    redis.call('DEL', p .. 'open:' .. who, p .. 'lost:' .. who, p .. 'applied:' .. who)
  end
  for _, key in ipairs({'names', 'rows', 'changed', 'due', 'ran', 'recent', 'written',
                        'instances'}) do
    redis.call('DEL', p .. key)
  end
end
redis.call('HSETNX', p .. 'meta', 'schema_version', ARGV[5])
local meta = redis.call('HGETALL', p .. 'meta')
local me = redis.call('HGET', p .. 'instances', ARGV[3])
local ids, values = changed_rows(p, ARGV[4], '+inf')
local instances, open = instances_and_runs(p)
local lost = redis.call('HGETALL', p .. 'lost:' .. ARGV[3])
local applied = redis.call('GET', p .. 'applied:' .. ARGV[3]) or ''
return {meta, me or false, ids, values, instances, open, lost, applied}
"""
)

#: Stores a write's plan if ARGV[2] still holds the lock, then lets the lock go. The
#: arguments: prefix, token, instance id, its record, seq, last job id, retention (ms),
#: history (ms), now (ms), the rows' ids, values and due times (ms, "" for none), the
#: write's id, the id of the instance's last write taken as the writer read it, a counted
#: group of names (name, id),
#: the runs' jobs, packed runs and categories (a JSON object of the jobs that have
#: failures, or ""), how many writes `recent` keeps, then counted groups: open runs (job
#: id, runs or "" for none), closed instances (id, record), lost runs (instance,
#: "<job>:<run>", start), claims ended ("<job>:<run>"), runs in progress dropped
#: (instance, job id). Few, long arguments: each one costs the client a call to encode it.
_PERSIST = """
local p = ARGV[1]
if redis.call('GET', p .. 'lock') ~= ARGV[2] then
  return redis.error_reply('JOBPULSE the write lock was lost (held past its deadline)')
end
local me, seq, retention, history, now = ARGV[3], ARGV[5], ARGV[7], ARGV[8], ARGV[9]
if (redis.call('GET', p .. 'applied:' .. me) or '') ~= ARGV[14] then
  return redis.error_reply('JOBPULSE another write of this instance was taken, or refused')
end
local i
local function group(width)
  local n = tonumber(ARGV[i])
  local first = i + 1
  i = first + n * width
  return first, n
end
local function chunked(command, key, first, n, width, pick)
  local args = {}
  for k = 0, n - 1 do
    for _, value in ipairs(pick(first + k * width)) do args[#args + 1] = value end
    if #args >= 1000 then redis.call(command, key, unpack(args)); args = {} end
  end
  if #args > 0 then redis.call(command, key, unpack(args)) end
end
local function split(text, separator)
  local parts, start = {}, 1
  if text == '' then return parts end
  while true do
    local at = string.find(text, separator, start, true)
    if not at then parts[#parts + 1] = string.sub(text, start); return parts end
    parts[#parts + 1] = string.sub(text, start, at - 1)
    start = at + 1
  end
end
local function by_chunks(command, key, values)
  for at = 1, #values, 1000 do
    redis.call(command, key, unpack(values, at, math.min(at + 999, #values)))
  end
end
redis.call('HSET', p .. 'instances', me, ARGV[4])
redis.call('SET', p .. 'applied:' .. me, ARGV[13], 'PX', retention)
-- Rows: their ids (comma-separated), their values (one per line), when each is due: its
-- expected run plus grace, in ms (comma-separated, "" for none).
local ids, rows, due = split(ARGV[10], ','), split(ARGV[11], '\\n'), split(ARGV[12], ',')
local pairs_, scores, dues, undue = {}, {}, {}, {}
for k = 1, #ids do
  pairs_[#pairs_ + 1] = ids[k]; pairs_[#pairs_ + 1] = rows[k]
  scores[#scores + 1] = seq; scores[#scores + 1] = ids[k]
  if (due[k] or '') == '' then
    undue[#undue + 1] = ids[k]
  else
    dues[#dues + 1] = due[k]; dues[#dues + 1] = ids[k]
  end
end
by_chunks('HSET', p .. 'rows', pairs_)
by_chunks('ZADD', p .. 'changed', scores)
by_chunks('ZADD', p .. 'due', dues)
by_chunks('ZREM', p .. 'due', undue)
i = 15
local first, n = group(2)
chunked('HSET', p .. 'names', first, n, 2, function(at) return {ARGV[at], ARGV[at + 1]} end)
-- Runs: "<job>:<runs>:<maxlen>:<1 to push its expiry back>" per job (comma-separated),
-- their packed runs one after the other, and the categories of the jobs that have
-- failures, as a JSON object (or "").
local specs, packed, named, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], 1
local jobs = split(specs, ',')
local categories = named ~= '' and cjson.decode(named) or {}
i = i + 3
local ran = {}
for _, spec in ipairs(jobs) do
  local fields = split(spec, ':')
  local job, size = fields[1], tonumber(fields[2]) * 24
  local key = p .. 'runs:' .. job
  local runs = string.sub(packed, at, at + size - 1)
  at = at + size
  if categories[job] then
    local c = cjson.encode(categories[job])
    redis.call('XADD', key, 'MAXLEN', fields[3], seq .. '-0', 'r', runs, 'c', c)
  else
    redis.call('XADD', key, 'MAXLEN', fields[3], seq .. '-0', 'r', runs)
  end
  if fields[4] == '1' then redis.call('PEXPIRE', key, history) end
  ran[#ran + 1] = seq; ran[#ran + 1] = job
end
by_chunks('ZADD', p .. 'ran', ran)
if #jobs > 0 then
  -- The last writes' runs together, for readers that keep up (one range to read, not one
  -- per job): `recent_trimmed` is the seq before which it may lack some.
  local kept = tonumber(ARGV[i])
  local length = redis.call('XLEN', p .. 'recent')
  if length >= kept then
    local gone = redis.call('XRANGE', p .. 'recent', '-', '+', 'COUNT', length - kept + 1)
    local last = string.match(gone[#gone][1], '^(%d+)')
    redis.call('HSET', p .. 'meta', 'recent_trimmed', last)
    redis.call('XTRIM', p .. 'recent', 'MAXLEN', kept - 1)
  end
  redis.call('XADD', p .. 'recent', seq .. '-0', 'j', specs, 'r', packed, 'c', named)
end
i = i + 1
first, n = group(2)
for k = 0, n - 1 do
  local at = first + k * 2
  if ARGV[at + 1] == '' then
    redis.call('HDEL', p .. 'open:' .. me, ARGV[at])
  else
    redis.call('HSET', p .. 'open:' .. me, ARGV[at], ARGV[at + 1])
  end
end
redis.call('PEXPIRE', p .. 'open:' .. me, retention)
first, n = group(2)
for k = 0, n - 1 do
  local at = first + k * 2
  redis.call('HSET', p .. 'instances', ARGV[at], ARGV[at + 1])
  redis.call('DEL', p .. 'open:' .. ARGV[at])
end
first, n = group(3)
for k = 0, n - 1 do
  local at = first + k * 3
  redis.call('HSET', p .. 'lost:' .. ARGV[at], ARGV[at + 1], ARGV[at + 2])
  redis.call('PEXPIRE', p .. 'lost:' .. ARGV[at], retention)
end
first, n = group(1)
chunked('HDEL', p .. 'lost:' .. me, first, n, 1, function(at) return {ARGV[at]} end)
first, n = group(2)
for k = 0, n - 1 do
  local at = first + k * 2
  redis.call('HDEL', p .. 'open:' .. ARGV[at], ARGV[at + 1])
end
if redis.call('HGET', p .. 'meta', 'seq') ~= seq then
  -- The last seq written in each minute, and when: what pruning the runs goes by.
  local last = redis.call('ZREVRANGE', p .. 'written', 0, 0, 'WITHSCORES')
  if #last > 0 and math.floor(tonumber(last[2]) / 60000) == math.floor(tonumber(now) / 60000) then
    redis.call('ZREM', p .. 'written', last[1])
  end
  redis.call('ZADD', p .. 'written', now, seq)
end
redis.call('HSET', p .. 'meta', 'seq', seq, 'last_job', ARGV[6])
redis.call('DEL', p .. 'lock')
return 1
"""

#: A reader's snapshot: (prefix, cursor seq or -1). Returns meta; the rows changed since
#: the cursor, as their ids and their values; the instances; every
#: instance's runs in progress; and the runs written since the cursor, up to the store's
#: seq: from `recent` if it holds them all ("recent": per write, its jobs, their runs and
#: their categories as a JSON object), else from each job's stream ("jobs": per job, its
#: id, its entries' runs one after the other, and their categories as one JSON array, ""
#: if all succeeded).
_READ = (
    _READING
    + """
local p = ARGV[1]
local meta = redis.call('HGETALL', p .. 'meta')
local seq = redis.call('HGET', p .. 'meta', 'seq') or '0'
local since = ARGV[2]
local ids, values = {}, {}
if tonumber(since) < tonumber(seq) then ids, values = changed_rows(p, since, seq) end
local instances, open = instances_and_runs(p)
local runs, mode = {}, 'jobs'
local trimmed = redis.call('HGET', p .. 'meta', 'recent_trimmed') or '-1'
local high = seq .. '-18446744073709551615'
if tonumber(since) >= 0 and tonumber(since) >= tonumber(trimmed) then
  -- `recent` holds every write since the cursor: one range
  mode = 'recent'
  local low = '(' .. since .. '-18446744073709551615'
  for _, entry in ipairs(redis.call('XRANGE', p .. 'recent', low, high)) do
    local fields = entry[2]
    runs[#runs + 1] = fields[2]; runs[#runs + 1] = fields[4]; runs[#runs + 1] = fields[6]
  end
elseif tonumber(since) < tonumber(seq) then
  local low = since == '-1' and '-' or ('(' .. since .. '-18446744073709551615')
  for _, job in ipairs(redis.call('ZRANGEBYSCORE', p .. 'ran', '(' .. since, seq)) do
    local packed, named, failed = {}, {}, false
    for _, entry in ipairs(redis.call('XRANGE', p .. 'runs:' .. job, low, high)) do
      local fields = entry[2]
      local r, c = fields[2], fields[4]
      packed[#packed + 1] = r
      if c then
        failed = true
        named[#named + 1] = string.sub(c, 2, -2)
      else
        local nulls = {}
        for k = 1, #r / 24 do nulls[k] = 'null' end
        named[#named + 1] = table.concat(nulls, ',')
      end
    end
    runs[#runs + 1] = job
    runs[#runs + 1] = table.concat(packed)
    runs[#runs + 1] = failed and ('[' .. table.concat(named, ',') .. ']') or ''
  end
end
return {meta, ids, values, instances, open, mode, runs}
"""
)

#: Prunes if ARGV[2] still holds the lock, then lets it go: (prefix, token, the time before
#: which runs leave (ms), number of jobs, job ids and names..., instance ids...).
_PRUNE = """
local p = ARGV[1]
if redis.call('GET', p .. 'lock') ~= ARGV[2] then
  return redis.error_reply('JOBPULSE the write lock was lost (held past its deadline)')
end
local before = redis.call('ZREVRANGEBYSCORE', p .. 'written', '(' .. ARGV[3], '-inf', 'LIMIT', 0, 1)
if #before > 0 then
  local old = before[1]
  for _, job in ipairs(redis.call('ZRANGEBYSCORE', p .. 'ran', '-inf', old)) do
    redis.call('DEL', p .. 'runs:' .. job)
  end
  redis.call('ZREMRANGEBYSCORE', p .. 'ran', '-inf', old)
  for _, job in ipairs(redis.call('ZRANGE', p .. 'ran', 0, -1)) do
    redis.call('XTRIM', p .. 'runs:' .. job, 'MINID', (old + 1) .. '-0')
  end
  redis.call('ZREMRANGEBYSCORE', p .. 'written', '-inf', '(' .. ARGV[3])
end
local jobs = tonumber(ARGV[4])
for k = 0, jobs - 1 do
  local id, name = ARGV[5 + 2 * k], ARGV[6 + 2 * k]
  redis.call('HDEL', p .. 'rows', id)
  redis.call('HDEL', p .. 'names', name)
  redis.call('ZREM', p .. 'changed', id)
  redis.call('ZREM', p .. 'ran', id)
  redis.call('DEL', p .. 'runs:' .. id)
end
if jobs > 0 then redis.call('HINCRBY', p .. 'meta', 'generation', 1) end
for at = 5 + 2 * jobs, #ARGV do
  redis.call('HDEL', p .. 'instances', ARGV[at])
  redis.call('DEL', p .. 'open:' .. ARGV[at], p .. 'lost:' .. ARGV[at], p .. 'applied:' .. ARGV[at])
end
redis.call('DEL', p .. 'lock')
return 1
"""

#: An instance's heartbeat alone (`RedisStore.beat`): (prefix, store id, instance id, its
#: record, its last seen (ns), the last seen (ns) below which another instance may be
#: dead, the due time (ms) from which a job is overdue, retention (ms)). 1 if stored; 0,
#: with nothing stored, if a write could do more. Records are JSON arrays: [6] is the last
#: seen, [7] stopped, [8] closed (Lua counts from 1; a double holds the ns to within a
#: microsecond: the caller leaves a millisecond's room).
_BEAT = """
local p, me = ARGV[1], ARGV[3]
if redis.call('HGET', p .. 'meta', 'store_id') ~= ARGV[2] then return 0 end
local mine = redis.call('HGET', p .. 'instances', me)
if not mine then return 0 end
local record = cjson.decode(mine)
if record[7] ~= 0 or record[8] ~= 0 then return 0 end
local instances = redis.call('HGETALL', p .. 'instances')
for k = 1, #instances, 2 do
  if instances[k] ~= me then
    local other = cjson.decode(instances[k + 1])
    if other[8] == 0 and (other[7] ~= 0 or other[6] < tonumber(ARGV[6])) then return 0 end
  end
end
if #redis.call('ZRANGEBYSCORE', p .. 'due', '-inf', ARGV[7], 'LIMIT', 0, 1) > 0 then return 0 end
if record[6] < tonumber(ARGV[5]) then redis.call('HSET', p .. 'instances', me, ARGV[4]) end
redis.call('PEXPIRE', p .. 'open:' .. me, ARGV[8])
redis.call('PEXPIRE', p .. 'applied:' .. me, ARGV[8])
return 1
"""

#: Takes the lock for ARGV[2] if it is free or already its own, for ARGV[3] ms; 1 if taken.
_TAKE = """
local held = redis.call('GET', ARGV[1] .. 'lock')
if held and held ~= ARGV[2] then return 0 end
redis.call('SET', ARGV[1] .. 'lock', ARGV[2], 'PX', ARGV[3])
return 1
"""

#: Settles a write whose reply was lost: (prefix, instance id, the write's id, a new id,
#: retention in ms). 1 if the write was taken; else 0, and a write of that id is refused
#: from now on (the instance's last write taken is the new id).
_SETTLE = """
local key = ARGV[1] .. 'applied:' .. ARGV[2]
if redis.call('GET', key) == ARGV[3] then return 1 end
redis.call('SET', key, ARGV[4], 'PX', ARGV[5])
return 0
"""

#: Lets the lock go if ARGV[2] holds it.
_RELEASE = """
if redis.call('GET', ARGV[1] .. 'lock') == ARGV[2] then redis.call('DEL', ARGV[1] .. 'lock') end
return 1
"""


def default_prefix(namespace: str, service: str) -> str:
    """The keys' prefix of a service's store: ``jobpulse:<namespace>:<service>:``."""
    return f"jobpulse:{namespace}:{service}:"


def _pack(runs: Sequence[Sequence[Any]]) -> bytes:
    """Runs as a stream entry holds them: each one's start_ns, duration_ns and end_ns, as
    little-endian 64-bit integers, one run after the other (so that entries put one after
    the other are runs one after the other)."""
    fields = itertools.chain.from_iterable(map(_FIELDS, runs))
    return struct.pack(f"<{3 * len(runs)}q", *fields)  # 40% faster than an array's bytes


def _unpack(
    packed: bytes, categories: bytes | None
) -> tuple[tuple[int, int, int, str | None], ...]:
    """`_pack` undone, with each run's category from `categories` (JSON; none: all
    succeeded)."""
    fields = little_endian("q", packed)
    named = json.loads(categories) if categories else itertools.repeat(None)
    return tuple(zip(fields[0::3], fields[1::3], fields[2::3], named, strict=False))


def _unpack_write(
    specs: bytes, packed: bytes, categories: bytes
) -> list[tuple[int, tuple[tuple[int, int, int, str | None], ...]]]:
    """An entry of `recent` undone: per job (id, its runs)."""
    fields = little_endian("q", packed)
    nothing: Iterator[str | None] = itertools.repeat(None)
    every = list(zip(fields[0::3], fields[1::3], fields[2::3], nothing, strict=False))
    named = json.loads(categories) if categories else {}
    unpacked: list[tuple[int, tuple[tuple[int, int, int, str | None], ...]]] = []
    first = 0
    for spec in specs.split(b","):
        job, count = spec.split(b":", 2)[:2]
        last = first + int(count)
        failed = named.get(job.decode())
        if failed is None:
            runs = tuple(every[first:last])
        else:
            runs = tuple(
                (start, duration, end, category)
                for (start, duration, end, _), category in zip(
                    every[first:last], failed, strict=True
                )
            )
        unpacked.append((int(job), runs))
        first = last
    return unpacked


def _pairs(flat: Sequence[Any]) -> dict[Any, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _record(instance: Instance, last_seen_ns: int, stopped: bool, closed: bool = False) -> str:
    return encode(
        [
            instance.service,
            instance.host,
            instance.pid,
            instance.version,
            instance.started_ns,
            last_seen_ns,
            int(stopped),
            int(closed),
        ]
    )


def _instance_of(id: str, record: bytes, now_ns: int, ttl_ns: int) -> Instance:
    service, host, pid, version, started_ns, seen, stopped, _ = json.loads(record)
    return Instance(
        id,
        service,
        host,
        pid,
        version,
        started_ns,
        seen,
        alive=not stopped and seen >= now_ns - ttl_ns,
        stopped=bool(stopped),
    )


def _fork_safely(store: RedisStore) -> None:
    """Hold the store's write lock across ``os.fork`` (a child must not inherit a write
    half done); the child makes its own connections (redis-py's pool does, by pid)."""
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        return
    ref = weakref.ref(store)

    def before() -> None:
        held = ref()
        if held is not None:
            held._write_lock.acquire()

    def after_in_parent() -> None:
        held = ref()
        if held is not None:
            held._write_lock.release()

    def after_in_child() -> None:  # pragma: no cover - runs in the child only
        held = ref()
        if held is not None:
            held.after_fork()

    os.register_at_fork(
        before=before, after_in_parent=after_in_parent, after_in_child=after_in_child
    )


class RedisStore:
    """A store in the Redis at `url`, its keys under `prefix`.

    Raises `StoreError` naming the URL without its password if the URL is not one redis-py
    takes, or Redis answers with an error (a wrong password, a wrong database), and
    `StoreVersionError` if a newer jobpulse wrote the store. A Redis that cannot be reached
    is no error: the store is unavailable until it can be (writes wait, reads fall back to
    the process's view). Thread-safe (see `jobpulse.store.Store`).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        shown_url: str | None = None,
        timeout: float = 1.0,
        history_runs: int = HISTORY_RUNS,
    ) -> None:
        self.url = shown_url or redact(url)
        self.prefix = prefix
        self._history_runs = history_runs
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry_on_timeout=False,
            )
        except (ValueError, RedisError) as exc:
            raise StoreError(f"store {self.url}: {exc}") from None
        if self._client.connection_pool.connection_kwargs.get("decode_responses"):
            self._client.close()
            raise StoreError(f"store {self.url}: decode_responses is not supported here")
        self._state = self._client.register_script(_STATE)
        self._persist = self._client.register_script(_PERSIST)
        self._read_script = self._client.register_script(_READ)
        self._prune_script = self._client.register_script(_PRUNE)
        self._release = self._client.register_script(_RELEASE)
        self._settle_script = self._client.register_script(_SETTLE)
        self._take = self._client.register_script(_TAKE)
        self._beat_script = self._client.register_script(_BEAT)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._token = uuid.uuid4().hex  # the write lock's, as this object takes it
        self._closed = False
        self._known = KnownRows()
        self._read_names: dict[int, str] = {}
        self._read_store = ""
        self._store_id = ""
        # How long a dead instance's runs in progress and claims are kept (the publisher's
        # prune says; the monitor's default until then).
        self._retention_ms = 24 * 3600 * 1000
        self._seq = self._last_job = 0  # as the last write read them
        # The hour (monotonic) in which this writer last pushed back each job's runs' expiry.
        self._expiring: dict[int, float] = {}
        try:
            self._check()
        except BaseException:
            self._client.close()  # its connection, not left to the garbage collector
            raise
        _fork_safely(self)

    def _fail(self, exc: BaseException) -> StoreError:
        return StoreError(f"store {self.url}: {type(exc).__name__}: {exc}")

    def _check(self) -> None:
        """At open: the store's version, and errors that will not pass by themselves."""
        try:
            meta = self._client.hgetall(self.prefix + "meta")
        except redis.AuthenticationError as exc:  # a ConnectionError that will not pass
            raise self._fail(exc) from None
        except (redis.ConnectionError, redis.TimeoutError):
            return  # unreachable for now: the publisher retries, readers fall back
        except RedisError as exc:
            raise self._fail(exc) from None
        self._check_version(meta.get(b"schema_version"))

    def _check_version(self, version: Any) -> None:
        if version is not None and int(version) > SCHEMA_VERSION:
            raise StoreVersionError(
                f"store {self.url}: written by a newer jobpulse (schema version "
                f"{int(version)}; this version reads up to {SCHEMA_VERSION}). Upgrade "
                "jobpulse, or point this service at another store."
            )

    # -- writing -----------------------------------------------------------------------

    def _acquire(self, token: str) -> None:
        """Take the write lock as `token`, waiting at most `_BUSY_SECONDS` for another
        writer's."""
        deadline = time.monotonic() + _BUSY_SECONDS
        while not self._take(args=[self.prefix, token, _LOCK_MS]):
            if time.monotonic() >= deadline:
                raise StoreError(f"store {self.url} is locked: another write takes too long")
            time.sleep(0.005)  # another process's write: nothing to wait on here

    def _locked(self, work: Callable[[str], T]) -> T:
        """`work(token)` with the write lock held; what the writer knew is forgotten if it
        fails (the scripts let the lock go when they succeed). The token is this store
        object's, the same at every write: a Redis too slow to answer in time may still
        take the lock for a try given up on (at once, or after letting it go for that try:
        it serves its clients in any order), and the next try finds it its own."""
        with self._write_lock:
            token = self._token
            try:
                self._acquire(token)
                return work(token)
            except BaseException:
                self._known.forget()
                with contextlib.suppress(RedisError):  # else it expires
                    self._release(args=[self.prefix, token])
                raise

    def write(
        self,
        instance: Instance,
        changes: Sequence[JobChange],
        *,
        now_ns: int,
        instance_ttl_ns: int,
        margin_ns: int,
        stopping: bool = False,
        expected_store_id: str | None = None,
    ) -> WriteResult:
        def work(token: str) -> WriteResult:
            store_id, state, records, applied = self._read_state(instance.id)
            if expected_store_id is not None and expected_store_id != store_id:
                self._release(args=[self.prefix, token])
                return WriteResult(store_id, applied=False)
            plan = plan_write(
                instance,
                changes,
                state,
                now_ns=now_ns,
                ttl_ns=instance_ttl_ns,
                margin_ns=margin_ns,
            )
            self._store(token, instance, plan, records, applied, now_ns=now_ns, stopping=stopping)
            return WriteResult(
                store_id,
                lost_runs=len(plan.lost),
                missed_slots=plan.missed_slots,
                conflicts=tuple(plan.conflicts),
                revived=state.revived,
            )

        return self._locked(work)

    def _read_state(self, me: str) -> tuple[str, WriteState, dict[str, list[Any]], bytes]:
        """With the lock held: the store's id, what the write needs, the instances'
        records, and the id of the instance's last write taken. Brings the known rows up to
        date."""
        known = self._known
        found = self._state(args=[self.prefix, uuid.uuid4().hex, me, known.seq, SCHEMA_VERSION])
        meta_flat, previous, ids, rows, instances_flat, open_flat, lost_flat, applied = found
        meta = _pairs(meta_flat)
        self._check_version(meta.get(b"schema_version"))
        store_id = _text(meta[b"store_id"])
        seq, generation = int(meta.get(b"seq", 0)), int(meta.get(b"generation", 0))
        if store_id == self._store_id and seq < known.seq:
            # Redis restarted from an older snapshot: readers are told to read it all again.
            generation = self._client.hincrby(self.prefix + "meta", "generation", 1)
        if store_id != self._store_id or generation != known.generation or seq < known.seq:
            # Another store (Redis emptied), jobs pruned, or an older snapshot: every row is
            # read again.
            self._store_id = store_id
            known.forget()
            self._expiring = {}
            known.generation = generation
            every = self._client.hgetall(self.prefix + "rows")
            ids, rows = list(every), list(every.values())
        for id, values in zip(ids, json.loads(b"[" + b",".join(rows) + b"]"), strict=True):
            known.add(int(id), values)
        known.seq = seq
        self._seq, self._last_job = seq, int(meta.get(b"last_job", 0))
        names = known.names
        records = {_text(id): json.loads(value) for id, value in _pairs(instances_flat).items()}
        open_runs: dict[str, list[tuple[str, int, int]]] = {}
        for who, fields in _pairs(open_flat).items():
            in_progress = open_runs[_text(who)] = []
            for job, value in _pairs(fields).items():
                name = names.get(int(job))
                if name is not None:
                    in_progress += [(name, run_id, start) for run_id, start, _ in json.loads(value)]
        claims: dict[str, dict[int, list[int]]] = {}
        for field, start in _pairs(lost_flat).items():
            job, run_id = map(int, _text(field).split(":"))
            if job in names:
                claims.setdefault(names[job], {}).setdefault(int(start), []).append(run_id)
        record = json.loads(previous) if previous else None
        state = WriteState(
            previous_seen_ns=None if record is None else record[5],
            revived=record is not None and bool(record[7]),
            instances=[
                StoredInstance(id, host, pid, seen, bool(stopped), bool(closed))
                for id, (_, host, pid, _, _, seen, stopped, closed) in records.items()
            ],
            open_runs=open_runs,
            claims=claims,
            row=known.row,
            overdue=lambda now, margin: [
                row.name
                for row in known.rows()
                if row.next_run_ns is not None and row.next_run_ns + row.grace_ns + margin <= now
            ],
            lost_before=self._lost_before,
        )
        return store_id, state, records, applied

    def _lost_before(self, who: str) -> Collection[tuple[str, int]]:
        names = self._known.names
        before = set()
        for field in self._client.hkeys(f"{self.prefix}lost:{who}"):
            job, run_id = map(int, _text(field).split(":"))
            if job in names:
                before.add((names[job], run_id))
        return before

    def _store(
        self,
        token: str,
        instance: Instance,
        plan: WritePlan,
        records: Mapping[str, list[Any]],
        applied: bytes,
        *,
        now_ns: int,
        stopping: bool,
    ) -> None:
        """Store `plan` with `_PERSIST`, which lets the lock go, if the instance's last
        write taken is still `applied`. Raises `UnsureWrite` if its reply is lost."""
        known = self._known
        seq, last_job = self._seq, self._last_job
        if plan.rows or plan.runs:  # a heartbeat alone tells readers nothing new
            seq += 1
        ids: list[str] = []
        rows: list[str] = []  # JSON has no raw line break
        due: list[str] = []  # for `beat`: a job is overdue from then on
        names: list[Any] = []
        for row in plan.rows.values():
            next_run_ns = row.next_run_ns
            due.append("" if next_run_ns is None else str((next_run_ns + row.grace_ns) // _MS))
            id = known.get_id(row.name)
            if id is None:
                last_job += 1
                id = last_job
                names += [row.name, id]
                rows.append(encode(known.values(row, seq, id)))
            else:
                rows.append(encode(known.values(row, seq)))
            ids.append(str(id))
        specs: list[str] = []
        categories: dict[int, list[str | None]] = {}
        expiring = self._expiring
        hour = time.monotonic() // 3600
        for name, finished in plan.runs.items():
            id = known.id(name)
            maxlen = max(1, -(-self._history_runs // len(finished)))
            # A job's runs expire a day after its last write: pushed back once an hour.
            push = expiring.get(id) != hour
            expiring[id] = hour
            specs.append(f"{id}:{len(finished)}:{maxlen}:{int(push)}")
            named = list(map(_CATEGORY, finished))
            if any(named):
                categories[id] = named
        packed = _pack(list(itertools.chain.from_iterable(plan.runs.values())))
        open_runs: list[Any] = []
        for name, in_progress, stall_after_ns in plan.open_runs:
            value = encode([[run_id, start, stall_after_ns] for run_id, start in in_progress])
            open_runs += [known.id(name), value if in_progress else ""]
        closed: list[Any] = []
        for who in plan.closed:
            closed += [who, encode([*records[who][:7], 1])]
        lost: list[Any] = []
        for who, name, run_id, start in (*plan.lost, *plan.absorbed):
            lost += [who, f"{known.id(name)}:{run_id}", start]
        ended = [f"{known.id(name)}:{run_id}" for name, run_id in plan.ended]
        dropped: list[Any] = []
        for who, name in {(who, name) for who, name, _, _ in plan.absorbed}:
            dropped += [who, known.id(name)]
        record = _record(instance, now_ns, stopping)
        write_id = uuid.uuid4().hex
        try:
            self._persist(
                args=[
                    *(self.prefix, token, instance.id, record, seq, last_job),
                    *(self._retention_ms, _HISTORY_MS, now_ns // 1_000_000),
                    *(",".join(ids), "\n".join(rows), ",".join(due), write_id, applied),
                    *(len(names) // 2, *names),
                    *(",".join(specs), packed, encode(categories) if categories else ""),
                    _RECENT_WRITES,
                    *(len(open_runs) // 2, *open_runs, len(closed) // 2, *closed),
                    *(len(lost) // 3, *lost, len(ended), *ended, len(dropped) // 2, *dropped),
                ]
            )
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Sent, and maybe run (now or later, Redis serves its clients in any order).
            raise UnsureWrite(
                f"store {self.url}: {type(exc).__name__}: {exc} (whether this write was "
                "taken is found out before the next)",
                functools.partial(self._settle, instance.id, write_id),
            ) from None
        known.seq = seq

    def beat(
        self,
        instance: Instance,
        *,
        now_ns: int,
        instance_ttl_ns: int,
        margin_ns: int,
        expected_store_id: str,
    ) -> bool:
        with self._write_lock:
            beaten = self._beat_script(
                args=[
                    *(self.prefix, expected_store_id, instance.id),
                    *(_record(instance, now_ns, stopped=False), now_ns),
                    # A millisecond's room for the script's doubles: never a beat where a
                    # write would have closed an instance or claimed a slot.
                    now_ns - instance_ttl_ns + _MS,
                    (now_ns - margin_ns) // _MS,
                    self._retention_ms,
                ]
            )
        return bool(beaten)

    def _settle(self, instance_id: str, write_id: str) -> bool:
        """Whether the instance's write `write_id` was taken; if not, it never will be."""
        taken = self._settle_script(
            args=[self.prefix, instance_id, write_id, uuid.uuid4().hex, self._retention_ms]
        )
        return bool(taken)

    # -- reading -----------------------------------------------------------------------

    def read(self, cursor: Cursor | None, *, now_ns: int, instance_ttl_ns: int) -> FleetRead:
        with self._read_lock:
            try:
                return self._read_locked(cursor, now_ns, instance_ttl_ns)
            finally:
                if self._closed:  # a read after `close`: its connection is not kept
                    self._client.close()

    def _read_locked(self, cursor: Cursor | None, now_ns: int, ttl_ns: int) -> FleetRead:
        since = -1 if cursor is None else cursor.seq
        meta_flat, ids, rows, instances_flat, open_flat, mode, runs_flat = self._read_script(
            args=[self.prefix, since]
        )
        meta = _pairs(meta_flat)
        store_id = _text(meta.get(b"store_id", b""))
        seq = int(meta.get(b"seq", 0))
        generation = int(meta.get(b"generation", 0))
        instances = sorted(
            (
                _instance_of(_text(id), record, now_ns, ttl_ns)
                for id, record in _pairs(instances_flat).items()
            ),
            key=lambda found: (found.started_ns, found.id),
        )
        reset = (
            cursor is None
            or cursor.store_id != store_id
            or cursor.generation != generation
            or cursor.seq > seq  # Redis restarted from an older snapshot
        )
        if not reset and cursor is not None and cursor.seq == seq:
            return FleetRead(store_id, seq, generation, False, (), (), seq, None, instances)
        if reset and since >= 0:  # read it all again
            return self._read_locked(None, now_ns, ttl_ns)
        if reset or store_id != self._read_store:
            self._read_names = {}
            self._read_store = store_id
        names = self._read_names
        raw = json.loads(b"[" + b",".join(rows) + b"]")  # one parse for every row
        for id, values in zip(ids, raw, strict=True):
            names[int(id)] = values[0]
        batches: list[RunBatch] = []
        groups = zip(runs_flat[::3], runs_flat[1::3], runs_flat[2::3], strict=True)
        if mode == b"recent":
            for specs, packed, categories in groups:
                for job, runs in _unpack_write(specs, packed, categories):
                    name = names.get(job)
                    if name is not None:
                        batches.append((name, runs))
        else:
            for job, packed, categories in groups:
                name = names.get(int(job))
                if name is not None:
                    batches.append((name, _unpack(packed, categories)))
        open_runs = [
            OpenRun(_text(who), names[int(job)], run_id, start, stall_after)
            for who, fields in _pairs(open_flat).items()
            for job, value in _pairs(fields).items()
            if int(job) in names
            for run_id, start, stall_after in json.loads(value)
        ]
        return FleetRead(
            store_id, seq, generation, reset, Rows(raw), batches, seq, open_runs, instances
        )

    # -- housekeeping ------------------------------------------------------------------

    def prune(self, *, now_ns: int, history_ns: int, retention_ns: int) -> None:
        """Runs written more than `history_ns` ago (to the minute), jobs without a schedule
        not updated for `retention_ns` and with no run in progress, and instances dead or
        stopped for that long. One process of the service does it in a minute (the first to
        try): it reads every row, and trims every job's runs."""
        self._retention_ms = retention_ns // 1_000_000
        if not self._client.set(self.prefix + "pruned", self._token, nx=True, px=_PRUNE_MS):
            return
        self._locked(lambda token: self._prune_locked(token, now_ns, history_ns, retention_ns))

    def _prune_locked(self, token: str, now_ns: int, history_ns: int, retention_ns: int) -> None:
        client = self._client
        records = {
            _text(id): json.loads(value)
            for id, value in client.hgetall(self.prefix + "instances").items()
        }
        busy: set[int] = set()
        for who in records:
            busy.update(int(job) for job in client.hkeys(f"{self.prefix}open:{who}"))
        cutoff = now_ns - retention_ns
        stale: list[Any] = []
        for id, value in client.hgetall(self.prefix + "rows").items():
            row = row_of(json.loads(value))
            if (
                row.updated_ns < cutoff
                and row.next_run_ns is None
                and row.settings.get("schedule") is None
                and int(id) not in busy
            ):
                stale += [int(id), row.name]
        stopped_cutoff = now_ns - min(retention_ns, STOPPED_RETENTION_NS)
        gone = [
            who
            for who, (*_, seen, stopped, closed) in records.items()
            if (stopped or closed) and seen < (stopped_cutoff if stopped and closed else cutoff)
        ]
        runs_before_ms = (now_ns - history_ns) // 1_000_000
        self._prune_script(
            args=[self.prefix, token, runs_before_ms, len(stale) // 2, *stale, *gone]
        )

    def after_fork(self) -> None:
        # redis-py makes new connections in a child; the locks and what the writer knew
        # (the parent's) are made anew.
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._token = uuid.uuid4().hex

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._closed = True
            self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r})"
