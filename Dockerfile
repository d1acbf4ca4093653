# Build stage: the release binary.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY config config
COPY benches benches
RUN cargo build --release --locked --bin referloop

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
# Listen on all interfaces inside the container; set DATABASE_URL to PostgreSQL in
# production (the default SQLite file lives in /var/lib/referloop: mount a volume there).
ENV REFERLOOP_SERVER__LISTEN=0.0.0.0:8080 \
    REFERLOOP_LOG__FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 CMD ["referloop", "health"]
ENTRYPOINT ["referloop"]
CMD ["serve"]
