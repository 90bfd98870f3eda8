# syntax=docker/dockerfile:1
# Multi-stage build of a static threshold binary on an empty base image.
# GO_IMAGE lets the image be built where only local images exist.
ARG GO_IMAGE=docker.io/library/golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/threshold ./cmd/threshold \
 && mkdir -p /out/state /out/config

FROM scratch
COPY --from=build /out/threshold /usr/local/bin/threshold
COPY --from=build --chown=65532:65532 /out/state /var/lib/threshold
COPY --from=build /out/config /etc/threshold
# A numeric non-root user: nothing here needs privileges, not even NET_ADMIN.
USER 65532:65532
WORKDIR /var/lib/threshold
VOLUME ["/var/lib/threshold"]
# 9056/udp: WireGuard (TunnelControlPort); 9057/tcp: management API.
EXPOSE 9056/udp 9057/tcp
ENTRYPOINT ["threshold"]
CMD ["help"]
