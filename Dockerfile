# The icy-backend demo (examples/icy_backend) as the `app` service of docker-compose.yml, and
# the Celery example (examples/celery_app) as its `celery-worker`, `celery-beat` and
# `celery-web` services, which run other commands in the same image.
#
#   docker build -t jobpulse-icy-backend .
#   docker run --rm -p 127.0.0.1:8000:8000 jobpulse-icy-backend
#
# Only what the examples need goes in (see .dockerignore): the package's build inputs
# (pyproject.toml, README.md, src/) and examples/.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package and its dependencies first, so that editing the example reuses this layer.
# The demo: prometheus, otlp, starlette, apscheduler. The Celery example: celery, redis (its
# broker's client and the store's), starlette. uvicorn (the server extra) serves both web apps.
COPY pyproject.toml README.md ./
COPY src/ ./src/
RUN pip install ".[prometheus,otlp,starlette,apscheduler,celery,redis,server]"

COPY examples/ ./examples/

# A numeric non-root user, so that a runtime that checks runAsNonRoot can verify it.
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin jobpulse
USER 10001:10001

# Listen on every interface of the container (the demo's default is 127.0.0.1); spans go over
# OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, not to stdout.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    DEMO_CONSOLE_SPANS=0
EXPOSE 8000

# Exec form: python is PID 1 and gets SIGTERM from `docker stop`; the demo exits 0 on it.
CMD ["python", "-m", "examples.icy_backend"]
