# syntax=docker/dockerfile:1
# The operator image: a static Go binary on a distroless, non-root base.
#   docker build -t docrouter/webhook-operator:v0.1.0 .
# config/config_test.go builds the binary with this file's `go build` line and checks it is
# static, because no container engine runs where the tests run.

FROM golang:1.26 AS build
ARG TARGETOS=linux
ARG TARGETARCH
WORKDIR /workspace
# Dependencies first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} go build -trimpath -ldflags "-s -w" -o /workspace/webhook-operator .

FROM gcr.io/distroless/static:nonroot
WORKDIR /
COPY --from=build /workspace/webhook-operator /webhook-operator
USER 65532:65532
ENTRYPOINT ["/webhook-operator"]
CMD ["manager"]
