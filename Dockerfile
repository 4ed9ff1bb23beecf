# syntax=docker/dockerfile:1
# The controller image: `wecom-acq` on distroless, non-root, nothing else.
#   docker build -t wecom-acq:dev .
# Not built on the project's machines (no container runtime there); it is deliberately the
# conventional two-stage Rust build so it can be read and trusted without running it.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds; the binary is copied out of
# the cached target/ because cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin wecom-acq \
    && install -D -m 0755 target/release/wecom-acq /out/wecom-acq

# glibc, libgcc and CA certificates only (TLS is rustls, no OpenSSL);
# runs as uid/gid 65532, the chart's runAsUser, and writes nothing to disk.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="wecom-acquisition-controller" \
      org.opencontainers.image.description="Kubernetes controller for WeCom customer-acquisition links" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/wecom-acq /usr/local/bin/wecom-acq
USER 65532:65532
# 8080: /healthz, /readyz, /metrics; 8081: /callback/{namespace}/{app}
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/wecom-acq"]
CMD ["run"]
