# Herald server image: cargo-chef caches dependency builds in their own layer; the runtime
# image is Debian slim with the static-ish binary, run as a non-root user.
FROM rust:1.94-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json -p herald-server
COPY . .
RUN cargo build --release -p herald-server --bin herald

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/herald herald \
 && mkdir -p /var/lib/herald && chown herald /var/lib/herald
COPY --from=builder /src/target/release/herald /usr/local/bin/herald
USER herald
ENV HERALD_BIND=0.0.0.0:8080 HERALD_DATA_DIR=/var/lib/herald HERALD_LOG_FORMAT=json
EXPOSE 8080
VOLUME /var/lib/herald
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8080/livez || exit 1
ENTRYPOINT ["herald"]
CMD ["serve"]
