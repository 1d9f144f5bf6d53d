// Package bench is the operator's end-to-end benchmark: `make bench` runs it (a Go test behind
// the `bench` build tag, so that `go test ./...` skips it) against a real kube-apiserver and
// etcd, and prints one table of throughput, latency, API writes, memory and isolation, every
// figure measured in the same run. docs/benchmarks.md describes the method and the results.
package bench
