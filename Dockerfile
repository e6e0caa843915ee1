# fastsocks in a container: docker build -t fastsocks . && see deploy/README.md.
#
# Two stages: the wheel (with the Cython extensions) is built with a compiler,
# then installed into a slim image that has none.  The server runs as an
# unprivileged user under tini (signals reach it, zombies are reaped), and the
# health check asks /healthz on the metrics listener, which stays on loopback
# inside the container.

FROM python:3.12-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY fastsocks ./fastsocks
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin fastsocks
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY deploy/docker.toml /etc/fastsocks/fastsocks.toml
USER fastsocks
EXPOSE 1080
# The users file is mounted at /etc/fastsocks/users (see deploy/docker.toml).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9180/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["/usr/bin/tini", "--", "fastsocks"]
CMD ["--config", "/etc/fastsocks/fastsocks.toml"]
