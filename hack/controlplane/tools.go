//go:build tools

// Package controlplane pins the kube-apiserver command so that `go mod tidy` keeps it.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
