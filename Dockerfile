# syntax=docker/dockerfile:1.7
# One image for every Tierflow service, chosen by command:
#   docker run tierflow services.identity        (python -m services.identity)
#   docker run --entrypoint tierflow tierflow db migrate
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only for dependencies without a wheel for this platform; they never reach the final image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The project wheel plus every runtime dependency as wheels. Only the `rocksdb` extra (the
# scoring store used outside the embedded stack); never `dev`, so no test/lint tooling ships.
RUN pip wheel --wheel-dir /wheels ".[rocksdb]"

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# The scoring data dir is created here so a fresh Docker named volume mounted on it inherits uid 10001.
RUN groupadd --gid 10001 tierflow \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tierflow \
 && python -m venv /opt/venv \
 && mkdir -p /var/lib/tierflow/scoring \
 && chown -R 10001:10001 /var/lib/tierflow
# Bind-mount the wheels instead of COPY so they do not stay in a layer of the final image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels /wheels/*.whl
WORKDIR /app
# Numeric uid so Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["python", "-m"]
CMD ["services.ingest"]
