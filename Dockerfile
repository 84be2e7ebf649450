# syntax=docker/dockerfile:1
# livekit-signaling: `docker build -t livekit-signaling:0.1.0 .`
# Two stages: the builder makes a virtual environment with the service and its dependencies; the final
# image copies only that environment onto a clean python:3.11-slim (no compilers, no pip cache, no sources).

# Both stages use the same base (the venv's interpreter is the base image's /usr/local/bin/python3.11).
# Pin a digest (python:3.11-slim-bookworm@sha256:...) for reproducible builds if your registry policy wants it.
FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# The locked dependencies are installed first (exact versions, hashes checked; all ship wheels, so no
# compiler is needed; setuptools, the build backend, is locked too), then a wheel of the project on top
# without resolving anything again; pip and setuptools are removed from the venv, and the entry point is
# smoke-tested.
COPY requirements/runtime.txt ./requirements/runtime.txt
RUN /opt/venv/bin/pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY service ./service
RUN /opt/venv/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip uninstall --yes pip setuptools \
 && /opt/venv/bin/livekit-signaling --help > /dev/null

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="livekit-signaling" \
      org.opencontainers.image.description="LiveKit signaling service: RabbitMQ commands in, LiveKit actions and events out"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json
RUN groupadd --system --gid 10001 signaling \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin signaling
# Owned by root and not writable by the service user; the byte code was compiled in the builder.
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
EXPOSE 8080
# Kubernetes ignores this (it uses the Deployment's probes); it serves `docker run` and compose.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SIGNALING_HTTP_PORT', '8080'), timeout=3)"]
ENTRYPOINT ["livekit-signaling"]
CMD ["run"]
