# lanner — two commands on a fresh Debian 12 machine:
#   make run    install everything, build the BPF objects, start the agent (streams events)
#   make test   the same setup, then the whole test suite
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON     ?= python3
VENV       := .venv
VPY        := $(VENV)/bin/python
CLANG      ?= clang-19
BPFTOOL    ?= bpftool
BUILD      := build
VMLINUX_H  := $(BUILD)/vmlinux/vmlinux.h
ARCH_DEF   := -D__TARGET_ARCH_x86
APT_PKGS   := clang-19 llvm-19 libbpf-dev libbpf1 bpftool iproute2 python3-venv python3-dev make procps util-linux \
              containerd runc containernetworking-plugins iptables nftables iperf3 sockperf iputils-ping busybox-static ethtool \
              etcd-server etcd-client

BPF_SRCS   := $(shell find lanner sensors exporter policy netdp bench -name '*.bpf.c' 2>/dev/null)
BPF_OBJS   := $(foreach s,$(BPF_SRCS),$(dir $(s))obj/$(notdir $(s:.c=.o)))
BPF_HDRS   := $(shell find lanner sensors exporter policy netdp -name '*.h' 2>/dev/null)
BPF_CFLAGS := -g -O2 -target bpf $(ARCH_DEF) -Wall -Werror -Wno-unused-function -Wno-gnu-variable-sized-type-not-at-end \
              -I$(BUILD)/vmlinux -Ilanner/bpf/include -I/usr/include/$(shell uname -m)-linux-gnu

AGENT_ARGS ?=

.PHONY: help setup deps venv bpf cni fastpath run test clean
help:
	@echo "make run    set up (apt, .venv, BPF objects, CNI client) and start the agent"
	@echo "make test   set up and run the test suite"
	@echo "make bpf    (re)build the BPF objects only"
	@echo "make cni    (re)build the compiled lanner-cni client only"
	@echo "make fastpath  (re)build the process sensor's C fast path (lanner.sensors._fastproc)"
	@echo "make k8s-bins  build kube-apiserver and kubectl for the Kubernetes tests (build/k8s/bin)"
	@echo "make crds   regenerate install/kubernetes/crds.yaml from the policy schema"
	@echo "make tetragon-client  build the gRPC client on Tetragon's Go stubs (build/tetragon/bin)"
	@echo "make clean  remove build outputs and the virtualenv"

setup: deps venv bpf proto cni fastpath

# apt packages: installed only when one is missing, so a second run does nothing.
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "==> apt-get install$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "==> apt packages present"; fi

$(VENV)/.installed: pyproject.toml
	@echo "==> virtualenv $(VENV)"
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@$(VPY) -m pip install -q --upgrade pip
	@$(VPY) -m pip install -q -e '.[test]'
	@touch $@

venv: $(VENV)/.installed

$(VMLINUX_H):
	@test -r /sys/kernel/btf/vmlinux || { echo "error: /sys/kernel/btf/vmlinux is missing: this kernel was built without BTF (CONFIG_DEBUG_INFO_BTF=y); lanner's CO-RE objects need it" >&2; exit 1; }
	@mkdir -p $(dir $@)
	@echo "==> $@ from /sys/kernel/btf/vmlinux"
	@$(BPFTOOL) btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

define BPF_RULE
$(dir $(1))obj/$(notdir $(1:.c=.o)): $(1) $(VMLINUX_H) $(BPF_HDRS)
	@mkdir -p $$(dir $$@)
	@echo "==> clang $$<"
	@$(CLANG) $(BPF_CFLAGS) -I$(dir $(1)) -c $$< -o $$@
endef
$(foreach s,$(BPF_SRCS),$(eval $(call BPF_RULE,$(s))))

bpf: $(BPF_OBJS)

# lanner-cni, the CNI plugin's fast path in C (plain libc; clang-19 pulls in libc6-dev), which
# `lanner cni install` copies into the CNI bin dir. Its constants are generated from the Python plugin
# (netdp/cni/cheader.py), so there is one source of truth.
CNI_DIR    := netdp/cni
CNI_BIN    := $(CNI_DIR)/bin/lanner-cni
CNI_HDR    := $(CNI_DIR)/bin/lanner_cni_consts.h
CNI_CC     ?= $(CLANG)
CNI_CFLAGS ?= -O2 -g -Wall -Wextra -Werror -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE -pie

$(CNI_HDR): $(CNI_DIR)/cheader.py $(CNI_DIR)/plugin.py $(CNI_DIR)/protocol.py $(CNI_DIR)/install.py
	@mkdir -p $(dir $@)
	@$(PYTHON) -IS $(CNI_DIR)/cheader.py > $@.tmp && mv $@.tmp $@

$(CNI_BIN): $(CNI_DIR)/lanner-cni.c $(CNI_HDR)
	@echo "==> $(CNI_CC) $<"
	@$(CNI_CC) $(CNI_CFLAGS) -I$(dir $(CNI_HDR)) $< -o $@.tmp && mv $@.tmp $@

cni: $(CNI_BIN)

# The process sensor's ring -> JSON loop in C (sensors/fastproc.c), a Python extension built against the
# venv's interpreter (headers: python3-dev). Built here, never at run time; without it the agent runs the
# Python path and `lanner status` says so.
FAST_SRC    := sensors/fastproc.c
FAST_CC     ?= $(CLANG)
FAST_CFLAGS ?= -O2 -g -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers -fPIC -shared

fastpath: $(VENV)/.installed
	@so=sensors/_fastproc$$($(VPY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))'); \
	inc=$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
	if [ ! -e $$so ] || [ $(FAST_SRC) -nt $$so ]; then \
	  echo "==> $(FAST_CC) $(FAST_SRC)"; \
	  $(FAST_CC) $(FAST_CFLAGS) -I$$inc $(FAST_SRC) -o $$so.tmp && mv $$so.tmp $$so; \
	fi

# gRPC API: Tetragon-compatible .proto files (exporter/api/v1) compiled into the
# lanner.exporter.api.gen.tetragon package; regenerated only when a .proto changes.
PROTO_ROOT := exporter/api/v1
PROTO_GEN  := exporter/api/gen
PROTO_SRCS := $(wildcard $(PROTO_ROOT)/tetragon/*.proto)
PROTO_PY   := $(patsubst $(PROTO_ROOT)/%.proto,$(PROTO_GEN)/%_pb2.py,$(PROTO_SRCS))

.PHONY: proto
proto: $(PROTO_PY)

$(PROTO_PY) &: $(PROTO_SRCS) | $(VENV)/.installed
	@echo "==> protoc $(PROTO_ROOT)/tetragon/*.proto -> $(PROTO_GEN)/tetragon"
	@mkdir -p $(PROTO_GEN)/tetragon
	@$(VPY) -m grpc_tools.protoc -I $(PROTO_ROOT) --python_out=$(PROTO_GEN) --grpc_python_out=$(PROTO_GEN) \
	    --pyi_out=$(PROTO_GEN) $(PROTO_SRCS) \
	  && sed -i -e 's/^from tetragon import /from lanner.exporter.api.gen.tetragon import /' \
	    $(PROTO_GEN)/tetragon/*_pb2.py $(PROTO_GEN)/tetragon/*_pb2_grpc.py $(PROTO_GEN)/tetragon/*_pb2.pyi \
	  && touch $(PROTO_PY) \
	  || { rm -f $(PROTO_PY); exit 1; }

# CRI v1 subset (netdp/cri/api.proto: k8s.io/cri-api's names and field numbers) compiled into the
# lanner.netdp.cri.gen package: the client lanner uses to talk to containerd / CRI-O.
CRI_PROTO := netdp/cri/api.proto
CRI_GEN   := netdp/cri/gen
CRI_PY    := $(CRI_GEN)/api_pb2.py $(CRI_GEN)/api_pb2_grpc.py

proto: $(CRI_PY)

$(CRI_PY) &: $(CRI_PROTO) | $(VENV)/.installed
	@echo "==> protoc $(CRI_PROTO) -> $(CRI_GEN)"
	@$(VPY) -m grpc_tools.protoc -I $(dir $(CRI_PROTO)) --python_out=$(CRI_GEN) --grpc_python_out=$(CRI_GEN) \
	    --pyi_out=$(CRI_GEN) $(CRI_PROTO) \
	  && sed -i -e 's/^import api_pb2 as /from lanner.netdp.cri.gen import api_pb2 as /' $(CRI_GEN)/api_pb2_grpc.py \
	  && touch $(CRI_PY) \
	  || { rm -f $(CRI_PY); exit 1; }

# Test control plane (docs/kubernetes.md): kube-apiserver and kubectl built from the Go module proxy through
# the wrapper module tools/k8s (it requires k8s.io/kubernetes and pins every staging module). Built once into
# build/k8s/bin; rebuilt only when the wrapper's go.mod/go.sum change. `make run` does not need them.
K8S_DIR     := tools/k8s
K8S_BIN     := $(BUILD)/k8s/bin
K8S_VERSION := $(shell awk '$$1=="require" && $$2=="k8s.io/kubernetes" {print $$3}' $(K8S_DIR)/go.mod)
K8S_MINOR   := $(word 2,$(subst ., ,$(K8S_VERSION)))
K8S_TOOLS   := kube-apiserver kubectl
K8S_BINS    := $(addprefix $(K8S_BIN)/,$(K8S_TOOLS))
K8S_LDFLAGS := -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
               -X $(p).gitVersion=$(K8S_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=$(K8S_MINOR) -X $(p).gitTreeState=clean)
GO          ?= $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)

.PHONY: k8s-bins
k8s-bins: $(K8S_BINS)

$(K8S_BINS) &: $(K8S_DIR)/go.mod $(K8S_DIR)/go.sum
	@mkdir -p $(K8S_BIN)
	@echo "==> go build $(K8S_TOOLS) $(K8S_VERSION) -> $(K8S_BIN) (first build: several minutes)"
	@cd $(K8S_DIR) && GOTOOLCHAIN=local $(GO) build -trimpath -buildvcs=false -ldflags "$(K8S_LDFLAGS)" -o $(CURDIR)/$(K8S_BIN)/ \
	    $(addprefix k8s.io/kubernetes/cmd/,$(K8S_TOOLS))
	@touch $(K8S_BINS)

# A gRPC client built on Tetragon's own generated Go stubs (the api module is on the Go module proxy; the main
# module with cmd/tetra is not: docs/api.md). tests/test_tetragon_go_client.py runs it against a real agent.
TETRAGON_DIR    := tools/tetragon
TETRAGON_CLIENT := $(BUILD)/tetragon/bin/tetragon-client

.PHONY: tetragon-client
tetragon-client: $(TETRAGON_CLIENT)

$(TETRAGON_CLIENT): $(TETRAGON_DIR)/go.mod $(TETRAGON_DIR)/go.sum $(TETRAGON_DIR)/main.go $(TETRAGON_DIR)/stub/go.mod
	@mkdir -p $(dir $@)
	@echo "==> go build $@ (Tetragon's api stubs)"
	@cd $(TETRAGON_DIR) && GOTOOLCHAIN=local $(GO) build -trimpath -buildvcs=false -o $(CURDIR)/$@ .

# The TracingPolicy CRDs, generated from lanner's policy schema (policy/crd.py) and committed;
# tests/test_k8s_crds.py fails when the committed file is stale.
CRDS_YAML := install/kubernetes/crds.yaml

.PHONY: crds
crds: $(VENV)/.installed
	@echo "==> $(CRDS_YAML) from lanner.policy.crdgen"
	@$(VPY) -m lanner.policy.crdgen -o $(CRDS_YAML)

run: setup
	@echo "==> starting the agent (Ctrl-C stops it and detaches every program)"
	$(VENV)/bin/lanner agent $(AGENT_ARGS)

test: setup k8s-bins tetragon-client
	@echo "==> go test $(TETRAGON_DIR) (the bench and test client's own checks)"
	@cd $(TETRAGON_DIR) && GOTOOLCHAIN=local $(GO) test -count=1 ./...
	@echo "==> test suite"
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory vmtest

# Kernel matrix: the BPF-marked tests inside stock Debian kernels (tests/vm/kernels.txt) booted
# under QEMU, where kprobes, fentry and the BPF LSM exist (docs/kernels.md). Caches in build/vmtest.
#   make vmtest VMTEST_KERNELS=6.12 VMTEST_ARGS="tests/test_probe.py"
VMTEST_DIR      := $(BUILD)/vmtest
VMTEST_VENV     := $(VMTEST_DIR)/venv
VMTEST_APT_PKGS := qemu-system-x86 kmod e2fsprogs busybox-static python3-venv
VMTEST_KERNELS  ?=
VMTEST_ARGS     ?=

$(VMTEST_VENV)/.installed:
	@echo "==> virtme-ng venv $(VMTEST_VENV)"
	@test -x $(VMTEST_VENV)/bin/python || /usr/bin/python3 -m venv $(VMTEST_VENV)
	@$(VMTEST_VENV)/bin/python -m pip install -q --disable-pip-version-check virtme-ng==1.42
	@touch $@

.PHONY: vmtest
vmtest: setup
	@missing=""; for p in $(VMTEST_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "==> apt-get install$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@$(MAKE) --no-print-directory $(VMTEST_VENV)/.installed
	@echo "==> kernel matrix"
	$(VMTEST_VENV)/bin/python tests/vm/run.py $(if $(VMTEST_KERNELS),--kernels "$(VMTEST_KERNELS)") \
	  $(if $(VMTEST_ARGS),-- $(VMTEST_ARGS))

clean:
	rm -rf $(BUILD) $(VENV) $(BPF_OBJS) $(CNI_DIR)/bin *.egg-info sensors/_fastproc*.so
