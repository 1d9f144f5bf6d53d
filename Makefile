# DocRouter webhook operator. `make help` lists the targets.

# Tool versions, pinned. Tools are installed into ./bin with their version in the name.
CONTROLLER_TOOLS_VERSION ?= v0.23.0
# openapi-gen of k8s.io/kube-openapi, the version k8s.io/apiserver v0.37.2 uses (go.mod).
KUBE_OPENAPI_VERSION ?= v0.0.0-20260721132016-d427ff9ee9ad

LOCALBIN ?= $(shell pwd)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
# In a directory named with its version: the generated files' header names the binary.
OPENAPI_GEN ?= $(LOCALBIN)/kube-openapi-$(KUBE_OPENAPI_VERSION)/openapi-gen

# The test control plane (kube-apiserver and etcd), built from Go modules by hack/controlplane.sh
# and cached outside the checkout.
KUBEBUILDER_ASSETS_CMD = hack/controlplane.sh

GO_TEST_FLAGS ?= -race -count=1

SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  %-14s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRDs and RBAC role from the Go markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd:allowDangerousTypes=false paths="./..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: $(CONTROLLER_GEN) $(OPENAPI_GEN) ## Generate DeepCopy methods and the OpenAPI of the history API.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."
	@# The history API (an aggregated API served by the operator) publishes its OpenAPI itself,
	@# for kubectl explain; the API rule violations are listed, so make verify sees new ones.
	$(OPENAPI_GEN) --output-pkg github.com/docrouter/webhook-operator/api/history/openapi \
		--output-dir api/history/openapi --output-file zz_generated.openapi.go \
		--go-header-file hack/boilerplate.go.txt --report-filename api/history/openapi/api_violations.list \
		--output-model-name-file zz_generated.model_name.go \
		--readonly-pkg k8s.io/apimachinery/pkg/apis/meta/v1 --readonly-pkg k8s.io/apimachinery/pkg/runtime \
		--readonly-pkg k8s.io/apimachinery/pkg/version \
		github.com/docrouter/webhook-operator/api/history/v1alpha1 \
		k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/runtime k8s.io/apimachinery/pkg/version

.PHONY: fmt
fmt: ## go fmt.
	go fmt ./...

.PHONY: vet
vet: ## go vet.
	go vet ./...

.PHONY: verify
verify: manifests generate fmt ## Regenerate and fail if anything generated or formatted differs from what is committed.
	@git diff --exit-code -- api config ':!config/samples' || { echo "generated files are out of date: run 'make manifests generate fmt' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- api config)" || { git status --porcelain -- api config; echo "untracked generated files: commit them"; exit 1; }

.PHONY: controlplane
controlplane: ## Build (or find in the cache) kube-apiserver and etcd; print their directory.
	@$(KUBEBUILDER_ASSETS_CMD)

.PHONY: test
test: manifests generate fmt vet ## Run every test against a real kube-apiserver and etcd (builds them on first use).
	KUBEBUILDER_ASSETS="$$($(KUBEBUILDER_ASSETS_CMD))" go test $(GO_TEST_FLAGS) ./...

.PHONY: test-faults
test-faults: ## Fault tests on the operator process: SIGKILL mid-attempt, a 30 s API-server outage, leader handover, no credentials in logs, Events, status or metrics (about 5 minutes). See docs/faults.md.
	KUBEBUILDER_ASSETS="$$($(KUBEBUILDER_ASSETS_CMD))" FAULT_TESTS=1 go test $(GO_TEST_FLAGS) -timeout 20m -v ./test/faults/

.PHONY: bench
bench: ## Measure throughput, latency, API writes, memory and isolation against a real API server (under 10 minutes); prints a table. See docs/benchmarks.md.
	KUBEBUILDER_ASSETS="$$($(KUBEBUILDER_ASSETS_CMD))" go test -tags bench -count=1 -timeout 15m -run '^TestBench$$' -v ./test/bench/

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the operator binary into bin/webhook-operator.
	CGO_ENABLED=0 go build -trimpath -o bin/webhook-operator .

.PHONY: run
run: manifests generate fmt vet ## Run the operator against the cluster of the current kubeconfig.
	go run . manager

##@ Local stack

.PHONY: dev
dev: manifests generate ## Run everything on this machine: kube-apiserver and etcd on loopback, the CRDs, the operator with its intake, a sample receiver. Ctrl-C stops it.
	hack/dev.sh

.PHONY: e2e
e2e: ## Drive the local stack with kubectl as the README's tour does, asserting every step (about 2 minutes).
	hack/e2e.sh

$(LOCALBIN):
	mkdir -p $(LOCALBIN)

$(CONTROLLER_GEN): | $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(LOCALBIN)/controller-gen $(CONTROLLER_GEN)

$(OPENAPI_GEN): | $(LOCALBIN)
	mkdir -p $(dir $(OPENAPI_GEN))
	GOBIN=$(dir $(OPENAPI_GEN)) go install k8s.io/kube-openapi/cmd/openapi-gen@$(KUBE_OPENAPI_VERSION)
