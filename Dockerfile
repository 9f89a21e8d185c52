# The broker and the CLI. Multi-stage: built with the pinned toolchain, run from distroless
# as a non-root user; the root filesystem can be read-only (the broker writes only under its
# data_dir, a volume). protoc is not needed: the protos build with a pure-Rust compiler.
#   docker build -t taskpass .
#   docker run --read-only -v taskpass-data:/var/lib/taskpass -p 7443:7443 -p 7444:7444 \
#     -v $PWD/taskpass.toml:/etc/taskpass/taskpass.toml:ro taskpass
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p taskpass-server -p taskpass-cli --bins \
 && install -D -m 0755 target/release/taskpassd /out/taskpassd \
 && install -D -m 0755 target/release/taskpass /out/taskpass

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/taskpassd /out/taskpass /usr/local/bin/
USER nonroot:nonroot
VOLUME ["/var/lib/taskpass"]
EXPOSE 7443 7444
ENTRYPOINT ["/usr/local/bin/taskpassd"]
CMD ["--config", "/etc/taskpass/taskpass.toml"]
