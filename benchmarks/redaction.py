"""What redaction and the caps on error texts and metadata cost, and what they save.

Part 1, redaction per 1 KB: `jobpulse.redact` on a typical error text (an HTTP error with
its URL, a traceback line, no credential), on one holding credentials, and on hostile texts
(the forms that make a backtracking pattern slow), in µs per KB, best of 5; hostile texts
also as a multiple of the typical one.

Part 2, an exception with a 10 MB message: `exception_event_attributes` as jobpulse records
it now (message and stack trace capped before anything examines them, no source file read)
against the unbounded way it was done before (the whole message redacted, the stack trace
formatted by `traceback.format_exception` and redacted whole), in one run; the ratio is
what counts.

Part 3, 1,000 jobs each given the largest metadata allowed and more (64 keys and one more,
keys and values past their caps, nested values) and a failure with a huge message, through a
real `JobMonitor`: the size of the health document, with ASCII text and with 4-byte
characters (the worst case), and the resident memory this adds to a fresh process (VmRSS,
measured in a subprocess per case).

    python benchmarks/redaction.py [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

from jobpulse import redact
from jobpulse._errors import exception_event_attributes
from jobpulse._metadata import MAX_KEY_CHARS, MAX_KEYS, MAX_VALUE_CHARS

KB = 1024

TYPICAL = (
    "requests.exceptions.HTTPError: 503 Server Error: Service Unavailable for url: "
    "https://api.example.com/v1/orders/12345?page=2&limit=100 while syncing customer 42 "
    '(attempt 3 of 5)\n  File "/app/sync/orders.py", line 88, in fetch_page\n'
    "    response.raise_for_status()\nupstream said: temporarily overloaded, retry later; "
)
WITH_SECRETS = (
    "401 Client Error: Unauthorized for url: https://api.example.com/v1/items?api_key=AbC1"
    "23sEcReT&page=2 token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2Q "
    "dsn=postgres://app:hunter2@db/prod Authorization: Bearer abc.def.ghi "
)
HOSTILE: dict[str, str] = {
    "word run": "v",
    "a=": "a=",
    "a= with keys to examine": "a=a=a=a=key ",
    "://": "://",
    "eyJ": "eyJ",
    "-----BEGIN": "-----BEGIN",
    'open quote password="a': 'password="' + "a" * 100,
    "password=": "password=",
    "bearer": "bearer ",
}


def per_kb(text: str) -> float:
    """µs per KB for `redact(text)` (text made 1 KB long), best of 5."""
    sample = (text * (KB // len(text) + 1))[:KB]
    rounds = 2000
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            redact(sample)
        best = min(best, (time.perf_counter() - started) / rounds)
    return best * 1e6


def unbounded_event_attributes(exc: BaseException) -> dict[str, str]:
    """How the exception event was built before: nothing capped, files read by traceback."""
    stacktrace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "exception.type": type(exc).__qualname__,
        "exception.message": redact(str(exc)),
        "exception.stacktrace": redact(stacktrace),
        "exception.escaped": "True",
    }


def best_seconds(call: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def huge_exception() -> BaseException:
    try:
        raise ValueError("m" * 10_000_000)
    except ValueError as exc:
        return exc


# -- part 3 runs in a child process per case ---------------------------------------------

CHILD = r"""
import json, logging, sys
from opentelemetry.sdk.trace import TracerProvider
import jobpulse
from jobpulse.testing import FakeClock

def rss_kb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

jobs, char, max_keys, key_chars, value_chars = json.loads(sys.argv[1])
logging.getLogger("jobpulse").setLevel(logging.CRITICAL)
monitor = jobpulse.JobMonitor(
    tracer_provider=TracerProvider(shutdown_on_exit=False), clock=FakeClock(), max_jobs=jobs
)
values = {f"{i:02d}" + char * key_chars: char * (value_chars + 1) for i in range(max_keys + 1)}
values["nested"] = {char * key_chars: [char * value_chars] * 4}
message = char * 100_000
before = rss_kb()
for index in range(jobs):
    try:
        with monitor.run(f"{index:04d}" + char * 196) as run:
            run.set_metadata(values)
            raise RuntimeError(message)
    except RuntimeError:
        pass
_, document = monitor.health_json()
json.loads(document)
print(json.dumps({"bytes": len(document), "rss_kb": rss_kb() - before}))
"""


def document_and_memory(jobs: int, char: str) -> dict[str, int]:
    argument = json.dumps([jobs, char, MAX_KEYS, MAX_KEY_CHARS, MAX_VALUE_CHARS])
    output = subprocess.run(
        [sys.executable, "-c", CHILD, argument], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, int] = json.loads(output)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    options = parser.parse_args()
    logging.getLogger("jobpulse").setLevel(logging.CRITICAL)

    print("Part 1: redaction, µs per KB (best of 5)")
    typical = per_kb(TYPICAL)
    print(f"  {'typical error text':32s} {typical:8.1f}")
    print(f"  {'with credentials':32s} {per_kb(WITH_SECRETS):8.1f}")
    for name, text in HOSTILE.items():
        cost = per_kb(text)
        print(f"  {'hostile: ' + name:32s} {cost:8.1f}   {cost / typical:5.1f}x typical")

    print("\nPart 2: exception_event_attributes, 10 MB message (best of 3, same run)")
    exc = huge_exception()
    now = best_seconds(lambda: exception_event_attributes(exc), 3)
    before = best_seconds(lambda: unbounded_event_attributes(exc), 3)
    print(f"  capped (now)      {now * 1e3:10.3f} ms")
    print(f"  unbounded (before){before * 1e3:10.1f} ms")
    print(f"  before / now      {before / now:10.0f}x")

    print(f"\nPart 3: {options.jobs} jobs with maximal metadata and huge errors")
    for label, char in (("ASCII", "x"), ("4-byte characters", "\U0001f600")):
        result = document_and_memory(options.jobs, char)
        print(
            f"  {label:18s} document {result['bytes'] / 1e6:6.2f} MB "
            f"({result['bytes'] / options.jobs:6.0f} bytes a job), "
            f"RSS +{result['rss_kb'] / 1024:6.1f} MB"
        )


if __name__ == "__main__":
    main()
