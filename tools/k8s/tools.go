//go:build tools

// Package tools pins the Kubernetes commands that lanner's test control plane builds
// (make k8s-bins): go.mod records their dependencies, nothing here is compiled.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
