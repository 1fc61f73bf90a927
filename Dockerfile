# The C3 platform image: one image for every platform role, chosen by the first argument
#   c3 api | c3 proxy | c3 worker | c3 beat | c3 migrate      (see docs/image.md)
#
# Build with a registry base (default):   docker build -t c3:dev .
# Build here with buildah and a Debian base made with debootstrap:   scripts/build_image
#
# Runs as UID/GID 10001 on a read-only root filesystem: the only writable paths it uses are
# HOME=/tmp, TMPDIR=/tmp and C3_DATA_DIR=/var/lib/c3, volumes where a role writes (the chart:
# /tmp everywhere, /var/lib/c3 on worker and beat).
# pg_dump/pg_restore are PostgreSQL 15's (Debian bookworm's postgresql-client-15): they dump
# databases of PostgreSQL 15 or older, so the server holding tenant databases must be <= 15
# for exports and deletion archives (PG_MAJOR=16.. needs a base that ships that client).

# A Python 3.11 on Debian bookworm, pinned to a patch release and its multi-platform index
# digest. scripts/build_image passes a debootstrapped bookworm (its python3 is 3.11) instead.
ARG BASE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
# The base's interpreter: python3.11 is on PATH in both the registry image
# (/usr/local/bin) and Debian (/usr/bin).
ARG PYTHON=python3.11
ARG PG_MAJOR=15

# ---------------------------------------------------------------------------------------------
FROM ${BASE} AS builder
ARG PYTHON
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# Debian's python3 has no ensurepip until python3-venv is installed; the registry image has it.
RUN if ! ${PYTHON} -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update -q \
        && apt-get install -y -q --no-install-recommends python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && ${PYTHON} -m venv /opt/c3

# The dependencies first (their own layer: rebuilt only when pyproject.toml or the lock
# change): the runtime dependencies of pyproject.toml at the versions requirements.lock pins.
# The test extras in the lock are not installed. Behind a TLS-intercepting egress proxy, pass
# its CA bundle as the build secret `pip_ca` (it is used for this step only, never stored).
COPY pyproject.toml requirements.lock ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && /opt/c3/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/runtime-requirements.txt \
    && /opt/c3/bin/pip install -q --constraint requirements.lock --requirement /tmp/runtime-requirements.txt

# Then C3 itself, as a wheel (which carries alembic.ini and migrations/ as platform_core/_alembic).
# The context is what .dockerignore allows: pyproject.toml, requirements.lock, README.md,
# alembic.ini, migrations/, services/ (one COPY: every step is a full layer copy on vfs).
# Bytecode for everything, checked by hash, not mtime: valid whatever timestamps the copy into
# the runtime stage gives, and nothing needs writing at run time (read-only root).
COPY . ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && /opt/c3/bin/pip wheel -q --no-deps --wheel-dir /tmp/dist . \
    && /opt/c3/bin/python -c 'import sys, zipfile; names = zipfile.ZipFile(sys.argv[1]).namelist(); missing = [n for n in ("platform_core/_alembic/alembic.ini", "platform_core/_alembic/migrations/env.py") if n not in names]; sys.exit(f"wheel lacks {missing}" if missing else 0)' /tmp/dist/c3-*.whl \
    && /opt/c3/bin/pip install -q --no-deps /tmp/dist/c3-*.whl \
    && /opt/c3/bin/pip uninstall -q -y pip \
    && /opt/c3/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /opt/c3/lib \
    && /opt/c3/bin/c3 --help > /dev/null

# ---------------------------------------------------------------------------------------------
FROM ${BASE} AS runtime
ARG PG_MAJOR
ARG DEBIAN_FRONTEND=noninteractive
# Metadata first, the heavy layers last: with buildah's vfs driver every step after them would
# copy the whole filesystem again.
# The version's own pg_dump first on PATH (Debian's /usr/bin/pg_dump is a version wrapper).
ENV PATH=/opt/c3/bin:/usr/lib/postgresql/${PG_MAJOR}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    TMPDIR=/tmp \
    C3_DATA_DIR=/var/lib/c3 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
# 8000: c3 api; 8080: c3 proxy.
EXPOSE 8000 8080
ENTRYPOINT ["/usr/bin/tini", "--", "c3"]
CMD ["--help"]
WORKDIR /var/lib/c3

# tini as PID 1 (reaps Synapse and Celery children, forwards signals); the PostgreSQL client of
# PG_MAJOR for the worker's tenant database dumps (pg_dump) and the restore instructions
# (pg_restore) of an export; Debian's jemalloc, which the local backend preloads into every
# homeserver it starts when C3_SYNAPSE_JEMALLOC=true (tenant pods use Synapse's image's); user
# and group c3 = 10001, owning only the data directory.
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends tini ca-certificates libjemalloc2 "postgresql-client-${PG_MAJOR}" \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/* /var/log/apt /var/log/dpkg.log \
    && groupadd --gid 10001 c3 \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin c3 \
    && chown 10001:10001 /var/lib/c3 \
    && chmod 0700 /var/lib/c3
USER 10001:10001

# Root-owned and read-only for the c3 user.
COPY --from=builder /opt/c3 /opt/c3

# Last, so that a new revision or build time rebuilds nothing but this metadata.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="c3" \
      org.opencontainers.image.description="C3 platform: tenant API, metering proxy, provisioning worker, beat and migrations (c3 api|proxy|worker|beat|migrate)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.vendor="C3" \
      org.opencontainers.image.licenses="NOASSERTION" \
      org.opencontainers.image.documentation="docs/image.md"
