# syntax=docker/dockerfile:1
# Multi-stage build: compile in the Rust image, run from a small Debian image as a
# non-root user. Configure with a mounted TOML file (--config) and/or LEADSYNC_* variables.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY fixtures ./fixtures
COPY benches ./benches
RUN cargo build --release --locked --bin leadsync

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311+deb12u1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home leadsync
COPY --from=build /src/target/release/leadsync /usr/local/bin/leadsync
COPY config/leadsync.toml /etc/leadsync/leadsync.toml
USER 10001
ENV LEADSYNC_METRICS__LISTEN=0.0.0.0:9187
EXPOSE 9187
ENTRYPOINT ["/usr/local/bin/leadsync", "--config", "/etc/leadsync/leadsync.toml"]
CMD ["run"]
