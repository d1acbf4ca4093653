# Build stage: the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: a change to referloop's sources does not
# rebuild every crate (the stub sources below are replaced right after).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in ingest_load dispatch reporting flow_endpoint referrals reminders; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && cargo build --release --locked --bin referloop \
    && rm -rf src benches
COPY src src
COPY migrations migrations
COPY config config
COPY templates templates
COPY benches benches
# The stubs' build outputs are older than the real sources: make sure cargo sees them.
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin referloop

# Runtime stage: a slim Debian with CA certificates and a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/referloop referloop
COPY --from=build /src/target/release/referloop /usr/local/bin/referloop
COPY config /etc/referloop
USER referloop
WORKDIR /var/lib/referloop
# The SQLite default keeps its file here; the referloop user owns the directory, so a
# named volume mounted here is writable. In production set DATABASE_URL to PostgreSQL.
VOLUME /var/lib/referloop
ENV REFERLOOP_SERVER__LISTEN=0.0.0.0:8080 \
    REFERLOOP_LOG__FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["referloop", "health"]
ENTRYPOINT ["referloop"]
CMD ["serve"]
