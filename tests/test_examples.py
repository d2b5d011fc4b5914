"""Every example and benchmark runs, as a user would run it."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from examples.icy_backend.settings import DemoSettings, SettingsError
from opentelemetry.exporter.prometheus import PrometheusMetricReader

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _documents(output: str) -> list[dict[str, object]]:
    """The JSON documents the quick start prints, in order."""
    decoder = json.JSONDecoder()
    documents = []
    index = output.find("{")
    while index != -1:
        document, end = decoder.raw_decode(output, index)
        documents.append(document)
        index = output.find("\n{", end)
        index = index + 1 if index != -1 else -1
    return documents


#: The quick start's PrometheusMetricReader takes `registry` and `scope_info_enabled`, which
#: opentelemetry-exporter-prometheus has from 0.64b0 on (the lowest run has 0.51b0).
QUICKSTART_EXPORTER = {"registry", "scope_info_enabled"} <= set(
    inspect.signature(PrometheusMetricReader).parameters
)


def test_quickstart() -> None:
    result = _run("examples/quickstart.py")
    if not QUICKSTART_EXPORTER:
        assert result.returncode == 1
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .startswith(
                "TypeError: PrometheusMetricReader.__init__() got an unexpected keyword argument"
            )
        ), result.stderr
        return
    assert result.returncode == 0, result.stderr
    health, _, history_part = result.stdout.partition("run history of")
    stalled, recovered = _documents(health)
    assert stalled["status"] == "unhealthy"
    jobs = stalled["jobs"]
    assert isinstance(jobs, dict)
    assert jobs["icy_transaction_indexing"]["status"] == "stalled"
    assert jobs["btc_transaction_indexing"]["success_count"] == 3
    assert jobs["btc_transaction_indexing"]["metadata"] == {"indexed": 42, "last_block": 871234}
    assert jobs["swap_request_processing"]["consecutive_failures"] == 2
    assert jobs["settlement_export"]["status"] == "missed"
    assert jobs["settlement_export"]["missed_count"] >= 1
    assert jobs["btc_transaction_indexing"]["schedule"] == "@every 2m"
    assert jobs["btc_transaction_indexing"]["next_run_time"] is not None
    assert jobs["btc_transaction_indexing"]["history_runs"] == 3
    assert recovered["status"] == "degraded"  # the swap job still failing, below its threshold
    assert "job 'icy_transaction_indexing' stalled" in result.stderr
    assert "job 'settlement_export' missed its scheduled run" in result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    runs = 'icy_backend_background_job_runs_total{job_name="swap_request_processing"'
    assert f'{runs},status="failed"}} 2.0' in result.stdout
    missed = 'icy_backend_background_job_missed_runs_total{job_name="settlement_export"}'
    assert missed in result.stdout
    history = _documents(history_part)
    assert [record["outcome"] for record in history] == ["success"] * 3


def test_memory_benchmark_runs() -> None:
    result = _run("benchmarks/memory.py", "--jobs", "5", "--minutes", "120")
    assert result.returncode == 0, result.stderr
    assert "runs held in histories:             600" in result.stdout
    assert "target: added <= 4 MB: PASS" in result.stdout


def test_overhead_benchmark_runs() -> None:
    result = _run("benchmarks/overhead.py", "--runs", "200", "--repeats", "1")
    # A loaded test machine may miss the ratio; the benchmark itself must run and report.
    assert result.returncode in (0, 1), result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["case", "us/run", "x", "raw"]
    assert any(line.startswith("jobpulse @monitor.job sync") for line in lines)
    rows = [
        "jobpulse sync, SQLite store",
        "jobpulse sync, histogram run by run",
        "raw OpenTelemetry recipe, 8 threads",
        "jobpulse sync, 64 threads",
        "jobpulse async, 64 threads",
        "prometheus_client alone",
        "Sentry crons decorator",  # sentry-sdk is a dev dependency: measured, not "-"
    ]
    if shutil.which("redis-server") or os.environ.get("JOBPULSE_REQUIRE_SERVERS") == "1":
        rows.append("jobpulse sync, Redis store")
    for row in rows:
        (line,) = [line for line in lines if line.startswith(row + " ")]
        assert re.fullmatch(rf"{re.escape(row)} +[0-9.]+ +[0-9.]+", line), line
    verdicts = [line for line in lines if line.startswith("target: ")]
    assert len(verdicts) == 8, verdicts
    for verdict in verdicts:
        assert re.fullmatch(r"target: .+ <= 0\.(45|6)x: [0-9.]+x (PASS|FAIL)", verdict), verdict


def test_run_parts_benchmark_runs() -> None:
    result = _run("benchmarks/run_parts.py", "--runs", "2000", "--repeats", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["part", "us/call"]
    costs = {}
    for line in lines[1:-1]:
        name, cost = line.rsplit(None, 1)
        costs[name] = float(cost)
    assert list(costs) == [
        "span alone",
        "span on jobpulse's tracer",
        "monitored run",
        "histogram record",
        "fold, per run",
        "view start+end",
        "history add",
        "raw recipe",
    ]
    assert all(cost > 0 for cost in costs.values())


def test_store_benchmark_runs() -> None:
    result = _run(
        "benchmarks/store.py", "--runs", "200", "--repeats", "1", "--rounds", "1", "--polls", "4",
        "--seeds", "1", "--jobs", "20", "--seed-jobs", "3", "--seed-minutes", "30",
        "--outage-seconds", "1",
    )  # fmt: skip
    # A loaded test machine may miss a target; the benchmark itself must run and report.
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for backend in ("SQLite", "Redis"):
        for case in ("overhead", "flush", "fleet", "seed", "outage"):
            assert f"\n{backend} {case}: " in result.stdout
    # Each target: the ratio, the flush (twice), two p99s, the seed and its size, the outage;
    # on Redis, the size twice (its keys' MEMORY USAGE, INFO's used_memory).
    assert result.stdout.count(" PASS") + result.stdout.count(" FAIL") == 8 + 9


def test_health_endpoint_benchmark_runs() -> None:
    result = _run(
        "benchmarks/health_endpoint.py", "--jobs", "50", "--churn", "5", "--requests", "20",
        "--seconds", "0.6", "--load-seconds", "0.5",
    )  # fmt: skip
    # A loaded test machine may miss a target; the benchmark itself must run and report.
    assert result.returncode in (0, 1), result.stderr
    for situation in ("steady", "churn", "all"):
        assert f"  {situation} " in result.stdout
    assert result.stdout.count("target p99 < 5.0 ms") == 2
    assert "each job changed since the last request" in result.stdout
    for poll in ("document", "304", "view"):  # an unchanged poll at 10 and at --jobs jobs
        assert re.search(rf"\n  {poll} .* target ratio <= 1.5 .*: (PASS|FAIL)\n", result.stdout)
    assert re.search(r"\n  poll ms: .* target p99 <= 5.0 ms: (PASS|FAIL)\n", result.stdout)
    assert "jobs changed between polls" in result.stdout
    collections = r"\n  garbage collections in this thread during the polls: gen0 \d+ "
    assert re.search(collections, result.stdout)
    assert result.stdout.count("target x trivial >= 0.5") == 3  # 12, 100 and --jobs jobs


@pytest.mark.parametrize("text", ["0.5", "500ms", "3601", "soon", ""])
def test_demo_rejects_an_interval_its_schedule_cannot_take(text: str) -> None:
    with pytest.raises(SettingsError, match="INDEX_INTERVAL must be seconds from 1 to 3600"):
        DemoSettings.from_environ({"INDEX_INTERVAL": text})


@pytest.mark.parametrize(("text", "seconds"), [("1", 1.0), ("1500ms", 1.5), ("2m", 120.0)])
def test_demo_interval_forms(text: str, seconds: float) -> None:
    settings = DemoSettings.from_environ({"INDEX_INTERVAL": text})
    assert settings.index_interval_seconds == seconds
    assert settings.schedule == f"@every {seconds:g}s"


def test_the_make_targets_examples_name_run_them() -> None:
    """An example that says ``make X`` runs it is the module the X recipe runs."""
    makefile = (ROOT / "Makefile").read_text()
    named = 0
    for path in sorted((ROOT / "examples").rglob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for target in re.findall(r"Run (?:it )?(?:from [\w ]+ )?with ``make (\w+)``", docstring):
            named += 1
            recipe = makefile.split(f"\n{target}:", 1)[1].splitlines()[1]
            assert recipe.split()[-1] == module, f"{path}: make {target} runs {recipe.strip()}"
    assert named >= 1  # examples/icy_backend says `make demo`


def test_demo_store_is_under_the_repository_unless_the_environment_says_otherwise() -> None:
    from examples.icy_backend.settings import DEFAULT_STORE_PATH

    assert DEFAULT_STORE_PATH == ROOT / ".jobpulse" / "icy_backend.db"
    assert ".jobpulse/" in (ROOT / ".gitignore").read_text().splitlines()
    default = DemoSettings.from_environ({})
    assert default.store == f"sqlite:///{ROOT}/.jobpulse/icy_backend.db"
    assert default.store_from_environment is False
    named = DemoSettings.from_environ({"JOBPULSE_STORE": " sqlite:////tmp/icy.db "})
    assert named.store == "sqlite:////tmp/icy.db"
    assert named.store_from_environment is True
    for empty in ("", "  "):
        none = DemoSettings.from_environ({"JOBPULSE_STORE": empty})
        assert none.store is None
        assert none.store_from_environment is True


def test_status_page_benchmark_runs() -> None:
    from tests.test_page_browser import CHROMIUM, require_browser

    require_browser()
    result = _run(
        "benchmarks/status_page.py", "--jobs", "30", "--churn", "3", "--requests", "5",
        "--loads", "2", "--chromium", CHROMIUM,
    )  # fmt: skip
    # A loaded test machine may miss the target; the benchmark itself must run and report.
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Part 1: the server, 30 jobs" in result.stdout
    assert result.stdout.count("first render") == 3  # two loads, then the verdict
    assert re.search(r"first render with 30 jobs: worst \d+ ms of 2 loads", result.stdout)
