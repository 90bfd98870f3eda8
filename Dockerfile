# syntax=docker/dockerfile:1
# threshold as a container image: one static binary on an empty base, run as
# a numeric non-root user that needs no capability (the WireGuard tunnel is in
# userspace: no NET_ADMIN, no /dev/net/tun). It runs with --read-only,
# --cap-drop=ALL and --security-opt no-new-privileges; see README.md,
# "Deployment". test/container/run.sh builds it and proves that.
#
#   podman build --build-arg VERSION=$(git describe --always --dirty) -t threshold .
#
# GO_IMAGE is the builder: any image with Go (at least go.mod's version) and
# /bin/sh, such as a mirror's or one made locally where no registry can be
# reached. Modules come from the builder's GOPROXY (the Go default if unset).
ARG GO_IMAGE=docker.io/library/golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
# Modules first: a source change does not download them again. go.mod
# replaces gvisor.dev/gvisor and golang.zx2c4.com/wireguard with copies in
# third_party/, whose go.mod files the download needs.
COPY go.mod go.sum ./
COPY third_party/gvisor/go.mod third_party/gvisor/
COPY third_party/wireguard/go.mod third_party/wireguard/
RUN go mod download
COPY . .
ARG VERSION=dev
# The final image's whole tree, with its owners: only the state directory
# belongs to the runtime user (COPY --chown would also give it the parents).
RUN go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/usr/local/bin/threshold ./cmd/threshold \
 && mkdir -p /out/etc/threshold /out/var/lib/threshold \
 && chown 65532:65532 /out/var/lib/threshold

FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="threshold" \
      org.opencontainers.image.description="Self-hosting gateway: public server and home client linked by a userspace WireGuard tunnel" \
      org.opencontainers.image.version="${VERSION}"
# /usr/local/bin/threshold; /var/lib/threshold, the state directory
# (generated private keys), owned by 65532; /etc/threshold for config files
# mounted read-only (-v ./server.json:/etc/threshold/server.json:ro).
COPY --from=build /out/ /
# An empty base image has no PATH of its own.
ENV PATH=/usr/local/bin
# A numeric user, so no /etc/passwd is needed; nothing here needs root.
USER 65532:65532
# The state volume: set "StateDir": "/var/lib/threshold" in the config (keys,
# and the server's clients and tunnels); relative paths land here too.
WORKDIR /var/lib/threshold
VOLUME ["/var/lib/threshold"]
# 9056/udp: WireGuard (TunnelControlPort, the only port a client needs).
# 9057/tcp: management API (ManagementPort; keep it private).
# Public tunnel ports are chosen at run time with PUT /tunnels.
EXPOSE 9056/udp 9057/tcp
# Config path: --config FILE, or THRESHOLD_CONFIG=FILE in the environment.
ENTRYPOINT ["threshold"]
CMD ["help"]
