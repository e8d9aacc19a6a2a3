# syntax=docker/dockerfile:1
#
# leadsync: compiled in the Rust image, run from Debian slim as an unprivileged user.
#
#   docker build -t leadsync .
#   docker run --rm -v "$PWD/ca.pem:/etc/leadsync/tls/ca.pem:ro" \
#     -v "$PWD/password:/etc/leadsync/secret/password:ro" \
#     -e LEADSYNC_SOURCE__URL='postgres://leadsync_runtime@db:5432/crm?sslmode=verify-full&sslrootcert=/etc/leadsync/tls/ca.pem' \
#     -e LEADSYNC_SOURCE__PASSWORD_FILE=/etc/leadsync/secret/password leadsync
#
# Configuration: the file named by LEADSYNC_CONFIG (/etc/leadsync/leadsync.toml, the
# commented example; mount your own over it or over /etc/leadsync), and any key overridden by
# LEADSYNC_<SECTION>__<KEY>, e.g. LEADSYNC_SOURCE__URL, LEADSYNC_SLOT__NAME. The HTTP endpoints
# listen on 0.0.0.0:9187 (LEADSYNC_METRICS__LISTEN). Pause and resume during a cutover with
#   docker exec CONTAINER leadsync ctl pause|resume|status
# which finds the daemon through its pidfile (default: <slot>.pid in a private directory).

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Cargo reads every target the manifest names (tests and benches included) before it builds
# one binary; .dockerignore keeps the rest of the tree out of the context.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY fixtures ./fixtures
COPY benches ./benches
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin leadsync \
    && install -m 0755 target/release/leadsync /usr/local/bin/leadsync

FROM debian:bookworm-slim
# No packages: TLS to PostgreSQL uses the root certificates compiled into the binary, and the
# health check needs nothing but bash.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin leadsync
COPY --from=build /usr/local/bin/leadsync /usr/local/bin/leadsync
COPY config/leadsync.toml /etc/leadsync/leadsync.toml
ENV LEADSYNC_CONFIG=/etc/leadsync/leadsync.toml \
    LEADSYNC_METRICS__LISTEN=0.0.0.0:9187
USER 10001:10001
EXPOSE 9187
# /healthz over bash's /dev/tcp on the port of LEADSYNC_METRICS__LISTEN: 200 while the daemon
# is alive and not stopped on an error. It stays 200 during the first load, a pause and a
# standby wait, so none of those marks the container unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${LEADSYNC_METRICS__LISTEN##*:} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r -t 4 _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["/usr/local/bin/leadsync"]
CMD ["run"]
