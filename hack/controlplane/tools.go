//go:build tools

// Package controlplane pins the kube-apiserver and kube-controller-manager commands so that
// `go mod tidy` keeps them.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
