//go:build tools

// Package controlplane pins the commands that hack/controlplane.sh builds, so that
// `go mod tidy` keeps their dependencies: kube-apiserver for the tests, and the node and
// controller components of the single-node cluster of `make test-cluster`.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
