"""The README's quick start: a FastAPI app whose job APScheduler runs and jobpulse watches.

    pip install 'jobpulse[fastapi,apscheduler,prometheus,server]'
    uvicorn examples.quickstart_app:app          # from the repository root

Then http://127.0.0.1:8000/api/v1/health/jobs stays 200, and /docs lists the endpoints.
EVERY_SECONDS (default 120) sets how often the job runs; the tests make it short.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI

import jobpulse
from jobpulse.fastapi import router

EVERY_SECONDS = int(os.environ.get("EVERY_SECONDS", "120"))

monitor = jobpulse.setup(service_name="icy-backend", namespace="icy_backend")
scheduler = AsyncIOScheduler()


# schedule= tells jobpulse when a run is expected; a run that does not start in time
# makes the job "missed". It does not run the job: the scheduler below does.
@monitor.job("btc_transaction_indexing", critical=True, schedule=f"@every {EVERY_SECONDS}s")
def index_btc_transactions() -> None:
    """Your job: each call is one monitored run."""


scheduler.add_job(index_btc_transactions, "interval", seconds=EVERY_SECONDS)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    scheduler.start()
    yield
    scheduler.shutdown()
    monitor.shutdown()  # flush spans and metrics: uvicorn skips atexit on SIGTERM


app = FastAPI(lifespan=lifespan)
app.include_router(router(monitor))  # /api/v1/health/jobs, /api/v1/health/jobs/{name}, /metrics
