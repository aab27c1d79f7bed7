# One image recipe for every Lentera service:
#   docker build --build-arg SERVICE=ingest -t lentera-ingest .
# All binaries are built in one `cargo build --workspace` (one dependency resolution,
# one compile of each crate); the final stage copies the one named by SERVICE.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && cp target/release/lentera-broker target/release/lentera-ingest \
       target/release/lentera-historian target/release/lentera-web \
       target/release/lentera-lamp target/release/lentera-simulator \
       target/release/lentera /out/

FROM debian:bookworm-slim AS runtime
# curl serves the compose healthchecks; ca-certificates lets services reach TLS endpoints.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 lentera \
 && mkdir -p /data/broker && chown lentera /data/broker
ARG SERVICE
COPY --from=build /out/lentera-${SERVICE} /usr/local/bin/lentera-service
# The provisioning CLI in every image: `docker compose run --rm web lentera devices add …`.
COPY --from=build /out/lentera /usr/local/bin/lentera
USER lentera
# The broker keeps retained messages and persistent sessions here (a volume in compose).
ENV LENTERA_TELEMETRY__LOG_FORMAT=json \
    LENTERA_BROKER__DATA_DIR=/data/broker
ENTRYPOINT ["/usr/local/bin/lentera-service"]
