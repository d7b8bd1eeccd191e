# syntax=docker/dockerfile:1
# wsnode pod image.
#
#   docker build -t wsnode .
#   docker run --rm -p 8765:8765 -e WSNODE_JWT_SECRET=... wsnode --app wsnode.examples.chat
#
# The entrypoint is `wsnode serve`: arguments after the image name are serve
# options (--app, --log-level, ...); settings come from WSNODE_* variables. The pod
# id defaults to the container's hostname, so replicas get distinct ids by
# themselves. SIGTERM drains (readiness 503, clients get `reconnect` + close 1012
# spread over WSNODE_DRAIN_OVER), then the process exits 0 within
# WSNODE_DRAIN_TIMEOUT (30 s): give `docker stop -t` / stop_grace_period /
# terminationGracePeriodSeconds more than that.
#
# Stages: `build` makes the virtualenv; `loadtest` adds Locust to it for the
# docker-compose `loadtest` profile; `runtime` (the last, so the default target)
# is the pod image: slim base, the virtualenv, nothing else.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
# Metadata first, so that a code change does not reinstall the dependencies.
COPY pyproject.toml README.md /src/
RUN mkdir -p /src/wsnode /src/wsctl \
    && touch /src/wsnode/__init__.py /src/wsctl/__init__.py \
    && /opt/venv/bin/pip install /src \
    && /opt/venv/bin/pip uninstall -y wsnode
COPY wsnode /src/wsnode
COPY wsctl /src/wsctl
RUN /opt/venv/bin/pip install --no-deps /src

FROM python:${PYTHON_VERSION}-slim AS loadtest
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
RUN pip install "locust>=2.20,<3"
# docker-compose.yml mounts ./loadtests at /app/loadtests, so edits need no rebuild.
WORKDIR /app
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin wsnode
USER 10001:10001
CMD ["locust", "--help"]

FROM python:${PYTHON_VERSION}-slim AS runtime
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin wsnode
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/readyz.py /usr/local/lib/wsnode/readyz.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WSNODE_HOST=0.0.0.0 \
    WSNODE_PORT=8765 \
    WSNODE_ADMIN_PORT=9765 \
    WSNODE_LOG_FORMAT=json
# An empty working directory: the pod reads an optional .env from here.
WORKDIR /app
USER 10001:10001
# 8765: WebSocket (/ws, /healthz). 9765: admin (/readyz, /metrics, /v1): not for
# the internet.
EXPOSE 8765 9765
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=4s --start-period=15s --retries=3 \
    CMD ["python", "/usr/local/lib/wsnode/readyz.py"]
ENTRYPOINT ["wsnode", "serve"]
CMD []
