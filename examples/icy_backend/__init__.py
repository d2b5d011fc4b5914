"""The icy-backend demo: the spec's service, with its background jobs monitored by jobpulse.

Run it from the repository root with ``make demo`` or ``python -m examples.icy_backend``.

The five jobs of the spec's cron line (``btc_transaction_indexing``,
``icy_transaction_indexing``, ``icy_swap_transaction_indexing``,
``swap_request_processing``, ``pending_btc_transaction_processing``; the first two and
``swap_request_processing`` critical) run every ``INDEX_INTERVAL`` on the event loop, each
registered with the schedule ``@every <INDEX_INTERVAL>s`` so that a run that does not come
would be reported missed. Their nodes and chains are simulated: a short random latency, a
backlog of pending ``btc``, ``icy`` and ``swap`` items (the ``background_jobs.pending``
gauge), failures with realistic exceptions (some quoting a node URL with its password, which
never reaches the health document, the logs or the spans), and every ``DEMO_STALL_EVERY``-th
run of ``pending_btc_transaction_processing`` hanging past its ``stall_after``
(2 x ``INDEX_INTERVAL``) for one more interval before it finishes.

Served by uvicorn: the status page ``GET /jobs``, ``GET /api/v1/health/jobs``,
``GET /api/v1/health/jobs/{name}`` and ``GET /metrics``. SIGINT (Ctrl-C) or SIGTERM stops it
cleanly, with exit code 0.

Environment:

- ``INDEX_INTERVAL``: seconds between runs, 1 to 3600 (``5``, ``2.5``, ``1500ms``, ``2m``);
  default 5.
- ``HOST``, ``PORT``: where to listen; default 127.0.0.1 and 8000 (``PORT=0``: any free
  port; the ready line names it).
- ``DEMO_SEED``: seed of the simulation's random draws; default a new one, printed at start.
- ``DEMO_FAILURE_RATE``: share of runs that fail, 0 to 1; default 0.1.
- ``DEMO_STALL_EVERY``: every how many runs the stalling job hangs; default 4, 0 for never.
- ``DEMO_CONSOLE_SPANS``: ``0`` stops printing spans to stdout. Spans are printed by default
  (the demo is there to show them), as JSON, one document per run; that is a lot of output,
  so turn it off to watch the logs alone.
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (and the other ``OTEL_*`` variables): when set, spans and
  metrics go over OTLP instead of to stdout.
- ``JOBPULSE_STORE``: the store the status view is kept in (docs/store.md). Unset, the demo
  uses a SQLite file under ``.jobpulse/`` in the repository (ignored by git), so a restart
  keeps history and counts, and a slot that passed while the demo was down is missed at
  once; ``rm -rf .jobpulse`` starts afresh. Set empty, there is no store (the process's view
  only); set to a URL (``sqlite:////tmp/icy.db``), that store. The banner says which. If the
  default file cannot be opened the demo runs without a store; a store named by the
  variable that cannot be opened stops it with exit code 2.

Logs (runs that fail, stalls, missed runs, every change of the overall health) go to stderr.
"""
