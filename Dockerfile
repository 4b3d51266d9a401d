# One image for everything that runs Riverlake code: Prefect flow runs, the Dask
# scheduler and workers, and the Panel apps. One image means one set of versions, so a
# client, its scheduler and its workers always match (cluster.check_versions refuses a
# cluster that does not).
#
#   docker build -t ghcr.io/riverlake/riverlake:0.1.0 .
#   python deploy/containers/build.py      (podman; a local Debian base where no registry is
#                                           reachable; prints the image's size and build time)
#
# The Python packages come from requirements.lock (exact versions and hashes, `make lock`),
# never from pyproject's ranges; Riverlake's own wheel is installed on top without deps.
#
# Runs as a non-root user (uid 10001) and works with a read-only root filesystem: the
# only writable paths are /tmp and $RIVERLAKE_HOME, mounted as emptyDir volumes.

# checkov:skip=CKV_DOCKER_7: the base is a build argument; its default is a pinned tag (a deploy test checks it)
ARG BASE=python:3.11.11-slim-bookworm

# 1. The locked dependencies: this layer changes only with requirements.lock.
FROM ${BASE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A CA bundle for pip where PyPI is reached through a proxy's own authority (a build
# mount, deploy/containers/build.py); empty elsewhere. Build stages only: not in the image.
ARG PIP_CERT=""
COPY requirements.lock /src/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /src/requirements.lock

# 2. Riverlake's own wheel, built apart so a code change does not copy the venv again.
FROM deps AS wheel
ARG PIP_CERT=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY riverlake riverlake
COPY flows flows
COPY cluster cluster
COPY analytics analytics
COPY apps apps
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE}
LABEL org.opencontainers.image.title="riverlake" \
      org.opencontainers.image.description="Riverlake flows, Dask scheduler and workers, Panel apps" \
      org.opencontainers.image.source="https://github.com/riverlake/riverlake"
RUN groupadd --gid 10001 riverlake \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin riverlake
COPY --from=deps /opt/venv /opt/venv
# (buildah 1.28 cannot bind-mount a stage's folder: the 0.2 MB wheel stays in this layer)
COPY --from=wheel /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels
WORKDIR /opt/riverlake
# Prefect deployments pull nothing: their entrypoints are modules of the installed
# package (riverlake.flows.pipeline:<pipeline>); this is their working directory.
COPY prefect.yaml ./
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    RIVERLAKE_HOME=/tmp/riverlake \
    PREFECT_LOGGING_EXTRA_LOGGERS=riverlake \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001
EXPOSE 5006 8786 8787 8788 9108
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import riverlake, distributed"]
CMD ["riverlake", "--help"]
