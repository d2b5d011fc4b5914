"""Scheduler and task-queue integrations, each behind its own extra:

- `jobpulse.integrations.apscheduler` (``pip install 'jobpulse[apscheduler]'``)
- `jobpulse.integrations.celery` (``pip install 'jobpulse[celery]'``)
"""
