# guix-farm: the README's two commands are `make run` and `make test`.
SHELL := /usr/bin/env bash -o pipefail
export GOTOOLCHAIN := local

TOOLS_DIR ?= $(CURDIR)/.cache/tools
TOOLS_BIN := $(TOOLS_DIR)/bin
CONTROLLER_GEN := $(TOOLS_BIN)/controller-gen
export GUIXFARM_TOOLS_BIN := $(TOOLS_BIN)

.PHONY: all
all: build

##@ Generated files

.PHONY: manifests
manifests: tools-controller-gen ## CRDs and RBAC from the API markers; the chart's copy of the CRDs.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:dir=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=guix-farm-controller paths=./controllers/... output:rbac:dir=config/rbac/controller
	$(CONTROLLER_GEN) rbac:roleName=guix-farm-agent paths=./agent/... output:rbac:dir=config/rbac/agent
	mkdir -p charts/guix-farm/crds && cp config/crd/bases/*.yaml charts/guix-farm/crds/
	$(MAKE) --no-print-directory chart-rbac

.PHONY: generate
generate: tools-controller-gen ## Deepcopy functions.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: verify-gen
verify-gen: manifests generate ## Fails when generated files drift from the sources.
	@git diff --exit-code -- api config charts || { echo "generated files are stale: run 'make manifests generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- api config charts)" || { git status --porcelain -- api config charts; echo "untracked generated files: run 'make manifests generate' and commit"; exit 1; }

##@ Build

.PHONY: build
build: ## The controller, the agent and the kubectl plugin (kubectl-guixfarm), into bin/
	go build -o bin/guix-farm-controller ./cmd/guix-farm-controller
	go build -o bin/guix-farm-agent ./cmd/guix-farm-agent
	go build -o bin/kubectl-guixfarm ./cmd/kubectl-guixfarm

.PHONY: vet
vet:
	go vet ./...

##@ Test

.PHONY: tools
tools: ## Installs every pinned test-bed tool into .cache/tools (cached).
	hack/tools.sh all

.PHONY: tools-controller-gen
tools-controller-gen:
	hack/tools.sh controller-gen

# The node tests' images (test/node, docs/node-test.md): the agent for this machine's architecture
# and the test daemon, apart from bin/images, which `make images` fills for every architecture.
TEST_IMAGES := $(CURDIR)/.cache/test-images

.PHONY: test-images
test-images:
	hack/tools.sh nix
	go run ./hack/ocibuild -out $(TEST_IMAGES) -arches $$(go env GOARCH) -controller "" -agent $(IMG_AGENT) -test-daemon $(IMG_TEST_DAEMON)

.PHONY: test
test: tools test-images ## Unit and integration tests against a real apiserver, MinIO, nix-daemon and nix client, and on a real node.
	KUBEBUILDER_ASSETS=$(TOOLS_BIN) GUIXFARM_IMAGES_DIR=$(TEST_IMAGES) GUIXFARM_REQUIRE_TESTBED=1 go test -count=1 -timeout 40m ./...

.PHONY: tools-node
tools-node:
	hack/tools.sh envtest kube-control-plane node nix minio

.PHONY: test-node
test-node: tools-node test-images ## The single-node tests alone: kubelet, containerd and runc run an AgentPool's pod that builds (docs/node-test.md).
	KUBEBUILDER_ASSETS=$(TOOLS_BIN) GUIXFARM_IMAGES_DIR=$(TEST_IMAGES) GUIXFARM_REQUIRE_TESTBED=1 go test -count=1 -timeout 20m -v ./test/node/

.PHONY: test-chaos
test-chaos: tools ## The chaos test alone; GUIXFARM_CHAOS_DURATION=10m (and _SEED, _DRVS) runs it longer (docs/chaos.md).
	KUBEBUILDER_ASSETS=$(TOOLS_BIN) GUIXFARM_REQUIRE_TESTBED=1 go test -count=1 -timeout 2h -v -run 'TestChaos$$' ./test/integration/

.PHONY: bench
bench: tools ## Benchmarks, printed as `name value unit (baseline, ratio)`.
	hack/bench.sh

##@ Run

.PHONY: run
run: tools build ## A whole local farm: apiserver, etcd, MinIO, nix-daemon, controller and agents.
	hack/run-farm.sh

##@ Packaging

HELM := $(TOOLS_BIN)/helm
IMG_CONTROLLER ?= ghcr.io/guixfarm/guix-farm-controller:dev
IMG_AGENT ?= ghcr.io/guixfarm/guix-farm-agent:dev
IMG_TEST_DAEMON ?= ghcr.io/guixfarm/guix-farm-test-daemon:dev

.PHONY: tools-helm
tools-helm:
	hack/tools.sh helm

.PHONY: chart-rbac
chart-rbac: ## Copies the generated ClusterRoles and the agent identity policy into the chart; test/chart fails while they differ.
	mkdir -p charts/guix-farm/files/rbac charts/guix-farm/files/admission
	cp config/rbac/controller/role.yaml charts/guix-farm/files/rbac/controller-role.yaml
	cp config/rbac/agent/role.yaml charts/guix-farm/files/rbac/agent-role.yaml
	cp config/agent/identity-policy.yaml charts/guix-farm/files/admission/agent-identity-policy.yaml

.PHONY: chart
chart: tools-helm chart-rbac ## Lints the Helm chart and packages it into bin/.
	$(HELM) lint --strict charts/guix-farm
	$(HELM) package charts/guix-farm -d bin

.PHONY: test-chart
test-chart: tools-helm ## The chart's tests: lint, template, CRD/RBAC/policy drift, install into a real apiserver, agent identity.
	KUBEBUILDER_ASSETS=$(TOOLS_BIN) GUIXFARM_REQUIRE_TESTBED=1 go test -count=1 ./test/chart/...

.PHONY: images
images: ## Controller and agent (linux/amd64+arm64) and test daemon images, no Docker needed: OCI layouts and oci-archives in bin/images (docs/images.md).
	hack/tools.sh nix
	go run ./hack/ocibuild -out bin/images -controller $(IMG_CONTROLLER) -agent $(IMG_AGENT) -test-daemon $(IMG_TEST_DAEMON)

.PHONY: docker-build
docker-build: ## Controller and agent images with a Docker engine, for those who have one (make images needs none).
	docker build --target controller -t $(IMG_CONTROLLER) .
	docker build --target agent -t $(IMG_AGENT) .
