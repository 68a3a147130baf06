# The farmedge image: the edge service (default command) and the other
# farmedge commands (provision, alerts, fleet, ...). Two targets:
#
#   edge  (the default: the last stage) farmedge with its edge and alerts
#         extras and nothing of the developer tooling;
#   demo  the same plus the developer tooling (tools/, the farmedge-dev wheel:
#         `farmedge simulate`, `farmedge demo`), for the compose file's simulator.
#
# Runs as an unprivileged user; the health check asks the edge's /healthz,
# which answers 503 with a reason when the broker or InfluxDB is unreachable
# or ingestion has stalled.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY farmedge ./farmedge
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[edge,alerts,nats]"

# The developer tooling's wheel (tools/pyproject.toml), only for the demo target.
FROM python:3.11-slim AS devbuild
WORKDIR /src
COPY tools ./tools
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /devwheels ./tools

FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/farmedge --create-home \
        --shell /usr/sbin/nologin farmedge \
    && mkdir -p /var/lib/farmedge/data /etc/farmedge \
    && chown farmedge:farmedge /var/lib/farmedge/data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER farmedge
WORKDIR /var/lib/farmedge
ENV FARMEDGE_DATA_DIR=/var/lib/farmedge/data \
    FARMEDGE_HTTP_HOST=0.0.0.0 \
    FARMEDGE_HTTP_PORT=8080 \
    FARMEDGE_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/farmedge/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]
ENTRYPOINT ["farmedge"]
CMD ["edge", "run"]

# The simulator of the compose file's "demo" profile: the runtime plus the
# developer tooling.
FROM runtime AS demo
USER root
COPY --from=devbuild /devwheels /devwheels
RUN pip install --no-cache-dir --no-deps /devwheels/*.whl && rm -rf /devwheels
USER farmedge

# What a service center runs (`docker build .` without --target builds it).
FROM runtime AS edge
