# DocRouter webhook operator. `make help` lists the targets.

# Tool versions, pinned. Tools are installed into ./bin with their version in the name.
CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
# openapi-gen of k8s.io/kube-openapi, the version k8s.io/apiserver v0.37.2 uses (go.mod).
KUBE_OPENAPI_VERSION ?= v0.0.0-20260721132016-d427ff9ee9ad

LOCALBIN ?= $(shell pwd)/bin
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
# In a directory named with its version: the generated files' header names the binary.
OPENAPI_GEN ?= $(LOCALBIN)/kube-openapi-$(KUBE_OPENAPI_VERSION)/openapi-gen

# Build tags of test suites that `go test ./...` does not run; `make verify` compiles them.
BUILD_TAGS ?= bench cluster

# The test control plane (kube-apiserver and etcd), built from Go modules by hack/controlplane.sh
# and cached outside the checkout.
KUBEBUILDER_ASSETS_CMD = hack/controlplane.sh

GO_TEST_FLAGS ?= -race -count=1

# The operator's image, built without a container engine by hack/image (go-containerregistry).
IMG ?= docrouter/webhook-operator:v0.1.0
IMAGE_TAR ?= bin/webhook-operator-image.tar

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

.PHONY: tidy
tidy: ## go mod tidy, for the module and for the build modules of the control plane and the image.
	go mod tidy
	cd hack/controlplane && go mod tidy
	cd hack/image && go mod tidy

.PHONY: verify
verify: manifests generate fmt tidy ## Regenerate, format and tidy, then fail on any difference or untracked file in the whole tree; compile every build tag.
	@git diff --exit-code || { echo "the tree differs from what is committed after 'make manifests generate fmt tidy': commit the result"; exit 1; }
	@test -z "$$(git status --porcelain)" || { git status --porcelain; echo "untracked files: commit them or add them to .gitignore"; exit 1; }
	go vet -tags '$(BUILD_TAGS)' ./...
	cd hack/image && go vet ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## Run the pinned golangci-lint (.golangci.yml: vet, staticcheck, errcheck, unparam, revive, importas, thelper and the layering rules).
	$(GOLANGCI_LINT) run ./...
	cd hack/image && $(GOLANGCI_LINT) run ./...

.PHONY: controlplane
controlplane: ## Build (or find in the cache) kube-apiserver and etcd; print their directory.
	@$(KUBEBUILDER_ASSETS_CMD)

.PHONY: test
test: manifests generate fmt vet ## Run every test against a real kube-apiserver and etcd (builds them on first use).
	KUBEBUILDER_ASSETS="$$($(KUBEBUILDER_ASSETS_CMD))" go test $(GO_TEST_FLAGS) ./...
	cd hack/image && go test $(GO_TEST_FLAGS) ./...

.PHONY: test-browser
test-browser: ## The web console in a real browser (Debian's Chromium: apt-get install chromium) against the whole operator, about a minute; make test runs it too.
	KUBEBUILDER_ASSETS="$$($(KUBEBUILDER_ASSETS_CMD))" go test $(GO_TEST_FLAGS) -timeout 5m -v ./test/browser/

.PHONY: screenshots
screenshots: ## Run the browser test and keep a screenshot of each console page in docs/console/ (shown by the README and docs/console.md).
	KUBEBUILDER_ASSETS="$$($(KUBEBUILDER_ASSETS_CMD))" CONSOLE_SCREENSHOTS=docs/console go test -count=1 -timeout 5m -run '^TestConsole$$' ./test/browser/
	rm -f docs/console/failed.png

.PHONY: test-faults
test-faults: ## Fault tests on the operator process: SIGKILL mid-attempt, a 30 s API-server outage, leader handover, no credentials in logs, Events, status or metrics (about 5 minutes). See docs/faults.md.
	KUBEBUILDER_ASSETS="$$($(KUBEBUILDER_ASSETS_CMD))" FAULT_TESTS=1 go test $(GO_TEST_FLAGS) -timeout 20m -v ./test/faults/

.PHONY: bench
bench: ## Measure throughput, latency, API writes, memory, isolation and the history store (a 100,000-event soak on a control plane of its own) against a real API server (about 20 minutes on a quiet machine, 45 on a loaded one); prints a table. See docs/benchmarks.md.
	KUBEBUILDER_ASSETS="$$($(KUBEBUILDER_ASSETS_CMD))" go test -tags bench -count=1 -timeout 75m -run '^TestBench$$' -v ./test/bench/

.PHONY: test-cluster
test-cluster: image ## As root: a real single-node cluster (kubelet, containerd, CNI, kube-proxy; built and installed on first use), the operator installed from the image with config/default (SQLite) and then config/overlays/postgres (a PostgreSQL 15 server on the node), each checked as a user sees it, then torn down leaving the machine as it was (2 to 3 minutes warm). See docs/operations.md.
	hack/node-packages.sh
	hack/postgres.sh >/dev/null
	hack/controlplane.sh --cluster >/dev/null
	$(LOCALBIN)/image -pause -source . -o $(LOCALBIN)/pause-image.tar
	CLUSTER_ASSETS="$$(hack/controlplane.sh --cluster)" CLUSTER_IMAGE=$(abspath $(IMAGE_TAR)) CLUSTER_PAUSE_IMAGE=$(LOCALBIN)/pause-image.tar \
		go test -tags cluster -count=1 -timeout 20m -v ./test/cluster/

##@ Build

.PHONY: build
build: manifests generate fmt vet ## Build the operator binary into bin/webhook-operator.
	CGO_ENABLED=0 go build -trimpath -o bin/webhook-operator .

# Where make install-plugin puts kubectl-webhooks: $(PREFIX)/bin, which must be on PATH.
PREFIX ?= $(shell go env GOPATH)

.PHONY: install-plugin
install-plugin: build ## Install the kubectl plugin: the operator's binary as PREFIX/bin/kubectl-webhooks (PREFIX: go env GOPATH unless given), so that kubectl webhooks works.
	install -d '$(PREFIX)/bin'
	install -m 0755 bin/webhook-operator '$(PREFIX)/bin/kubectl-webhooks'
	@echo "installed $(PREFIX)/bin/kubectl-webhooks: try kubectl webhooks --help"
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; *) echo "warning: $(PREFIX)/bin is not on your PATH, so kubectl will not find the plugin: export PATH=\"$(PREFIX)/bin:\$$PATH\"" ;; esac

.PHONY: image
image: ## Build the operator's image without a container engine into $(IMAGE_TAR) (docker load / ctr images import take it).
	go build -C hack/image -o $(LOCALBIN)/image .
	$(LOCALBIN)/image -source . -tag $(IMG) -o $(IMAGE_TAR)

# The history store of `make run`: SQLite in the checkout (the binary's default is the path the
# image's volume is mounted at).
RUN_HISTORY_DATABASE ?= sqlite://$(CURDIR)/.dev/run/history.db

.PHONY: run
run: manifests generate fmt vet ## Run the operator against the cluster of the current kubeconfig (history in .dev/run/history.db).
	mkdir -p .dev/run
	go run . manager --history-database '$(RUN_HISTORY_DATABASE)'

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

$(GOLANGCI_LINT): | $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(LOCALBIN)/golangci-lint $(GOLANGCI_LINT)

$(OPENAPI_GEN): | $(LOCALBIN)
	mkdir -p $(dir $(OPENAPI_GEN))
	GOBIN=$(dir $(OPENAPI_GEN)) go install k8s.io/kube-openapi/cmd/openapi-gen@$(KUBE_OPENAPI_VERSION)
