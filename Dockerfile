# The comments service: one static binary on an empty (scratch) image. No shell, no libc, no CA
# files: the binary is statically linked and carries its TLS roots (rustls + webpki roots).
#
#   docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD) --build-arg VERSION=0.1.0 -t comments .
#   docker run --read-only -v comments-data:/data -p 8080:8080 -p 9090:9090 comments
#
# The final stage takes the binary from the stage that BINARY_SOURCE names:
#   builder  (default) compiles it here, in the pinned Rust image;
#   prebuilt takes an already built static binary, `comments` at the root of the build context
#            (scripts/test-image.sh uses it: the Rust image cannot be pulled there). Both stages
#            leave the binary at /out/comments, so the final stage is the same for both.
# BuildKit (Docker's default builder) and buildah skip the stage that is not used.
ARG BINARY_SOURCE=builder

# Pinned by tag only: digests could not be looked up where this file was written (no registry
# access). Pinning by digest too (rust:1.95.0-bookworm@sha256:...) makes the build reproducible.
FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    RUSTFLAGS="-C target-feature=+crt-static"
# 1. The dependencies alone, against stub sources: this layer is reused until Cargo.toml or
#    Cargo.lock change, so a source edit recompiles only the crate itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && rm -rf src
# 2. The crate. The commit is baked in at compile time (/version, comments_build_info); it is set
#    after step 1 so that a new commit does not rebuild the dependencies.
ARG GIT_COMMIT=unknown
ENV COMMENTS_GIT_COMMIT=${GIT_COMMIT}
COPY build.rs ./
COPY migrations ./migrations
COPY src ./src
# touch: cargo compares modification times, and the stubs of step 1 are newer than the copies.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && mkdir -p /out/data \
 && cp target/x86_64-unknown-linux-gnu/release/comments /out/comments

FROM scratch AS prebuilt
# An empty directory, made without a shell: the final stage copies it to /data.
WORKDIR /out/data
COPY comments /out/comments

# Not an image but one of the two stages above, chosen by a build argument:
# checkov:skip=CKV_DOCKER_7: BINARY_SOURCE names a stage of this file (builder or prebuilt), not an image
FROM ${BINARY_SOURCE} AS binary

FROM scratch
ARG GIT_COMMIT=unknown
ARG VERSION=unknown
LABEL org.opencontainers.image.title="comments" \
      org.opencontainers.image.description="Comment API for content items, with Prometheus metrics and OpenTelemetry traces" \
      org.opencontainers.image.source="https://github.com/example/comments" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=binary /out/comments /comments
# The embedded SQLite store lives in /data, owned by the runtime user so that an empty volume
# mounted there (Docker copies this ownership into it) is writable with a read-only root
# filesystem. In Kubernetes the chart mounts a volume there (fsGroup 65532), or uses PostgreSQL.
COPY --from=binary --chown=65532:65532 /out/data /data
VOLUME ["/data"]
ENV COMMENTS_DATABASE_URL=sqlite:///data/comments.db
# The API and /health-check, /livez, /readyz, /version on 8080; /metrics alone on 9090.
EXPOSE 8080 9090
# A numeric user: no /etc/passwd in the image, and Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# Exec form, as there is no shell: the binary probes its own /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/comments", "healthcheck"]
ENTRYPOINT ["/comments"]
