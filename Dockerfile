# syntax=docker/dockerfile:1
# Two images from one build, picked with --target:
#   docker build --target controller -t ghcr.io/guixfarm/guix-farm-controller:dev .
#   docker build --target agent      -t ghcr.io/guixfarm/guix-farm-agent:dev .
# The default (last) stage is the controller.
# Without Docker, `make images` builds equivalent images (and a test daemon image) with the project's
# own tooling, hack/ocibuild: see docs/images.md.

FROM golang:1.26 AS build
WORKDIR /src
ENV GOTOOLCHAIN=local CGO_ENABLED=0
# Dependencies first, so source edits do not refetch modules.
COPY go.mod go.sum ./
RUN go mod download
COPY api/ api/
COPY agent/ agent/
COPY cmd/ cmd/
COPY controllers/ controllers/
COPY internal/ internal/
ARG TARGETOS=linux
ARG TARGETARCH
RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags "-s -w -buildid=" -o /out/guix-farm-controller ./cmd/guix-farm-controller && \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags "-s -w -buildid=" -o /out/guix-farm-agent ./cmd/guix-farm-agent

# The agent runs next to a guix-daemon sidecar (see config/samples): the daemon, not this image,
# holds /gnu/store and builds; the agent reaches it through the shared socket and store volumes.
# This image therefore holds the agent binary only, no Guix.
FROM gcr.io/distroless/static-debian12:nonroot AS agent
COPY --from=build /out/guix-farm-agent /guix-farm-agent
USER 65532:65532
ENTRYPOINT ["/guix-farm-agent"]

FROM gcr.io/distroless/static-debian12:nonroot AS controller
COPY --from=build /out/guix-farm-controller /guix-farm-controller
USER 65532:65532
ENTRYPOINT ["/guix-farm-controller"]
