# retwin what-if service.
#   docker build -t retwin .
#   docker run -p 8000:8000 -e RETWIN_BOOTSTRAP_TOKEN=$(openssl rand -hex 24) \
#              -v retwin-data:/data retwin
# Beyond loopback every request needs an API token: RETWIN_BOOTSTRAP_TOKEN registers one
# (owner "admin") at start; more with `docker exec <container> retwin token create NAME`.
#
# Several containers on one PostgreSQL database (each runs a computation only if it claims it
# there; a dead one's work is taken over), sharing the data volume for results:
#   docker run -e RETWIN_DATABASE_URL=postgresql+psycopg://retwin:SECRET@db:5432/retwin \
#              -e RETWIN_BOOTSTRAP_TOKEN=... -v retwin-data:/data retwin
# Runs on a Dask cluster instead of the container's own worker processes (the workers need
# retwin[dist] of the same version, e.g. this image: `docker run retwin dask worker tcp://scheduler:8786`):
#   docker run -e RETWIN_DASK_ADDRESS=tcp://scheduler:8786 ... retwin
# Other settings: RETWIN_WORKERS, RETWIN_LOG_FORMAT=json (one JSON object a line, with request
# ids), RETWIN_CLAIM_LEASE_SECONDS; metrics for Prometheus at /metrics (with a token from
# outside the container).

# --- builder: dependencies in a cached layer, then the wheel -----------------------------
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Only the project metadata first: this layer (all dependencies) is rebuilt only when
# pyproject.toml changes, not on every edit of the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extra = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extra['api'] + extra['dist']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt
COPY README.md ./
# src/ holds retwin and its service (retwin_service); the top-level api/ is a checkout's
# shortcut only and is not installed.
COPY src ./src
COPY data ./data
COPY models ./models
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install --no-deps /wheels/*.whl

# --- runtime: the virtualenv only, a non-root user --------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RETWIN_DATA_DIR=/data \
    RETWIN_HOST=0.0.0.0 \
    RETWIN_PORT=8000 \
    NUMBA_CACHE_DIR=/home/retwin/.cache/numba
RUN useradd --create-home --uid 10001 retwin \
 && mkdir -p /data /home/retwin/.cache/numba \
 && chown -R retwin:retwin /data /home/retwin/.cache
COPY --from=builder /opt/venv /opt/venv
USER retwin
WORKDIR /home/retwin
VOLUME ["/data"]
EXPOSE 8000
# The health endpoint, answered on loopback without a token; unhealthy unless it says "ok"
# (a full data folder says "degraded").
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import json, os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/api/v1/health' % os.environ.get('RETWIN_PORT', '8000'), timeout=4); sys.exit(0 if json.load(r).get('status') == 'ok' else 1)" || exit 1
# Kernels are compiled into the numba cache at start (workers then load them), so the
# first what-if does not pay for compilation; with the reference model's own flow kernel,
# that takes about a minute on two cores (the health check's start period allows two).
CMD ["sh", "-c", "retwin warmup && exec retwin serve --host \"$RETWIN_HOST\" --port \"$RETWIN_PORT\""]
