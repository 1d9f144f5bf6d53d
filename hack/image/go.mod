// This module builds the operator's container image (and the test cluster's pause image)
// without a container engine, with go-containerregistry; `make image` drives it. It is a module
// of its own so that the operator's go.mod carries no image tooling.
module github.com/docrouter/webhook-operator/hack/image

go 1.26.0

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)
