#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver and etcd) from Go modules and prints the
# directory that holds them, for KUBEBUILDER_ASSETS. The binaries are cached outside the
# checkout, keyed by version, so a second run (or a second clone) takes no time.
#
#   export KUBEBUILDER_ASSETS="$(hack/controlplane.sh)"
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${DOCROUTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/docrouter-webhook-operator}"
dir="${cache_root}/controlplane/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"

if [[ -x "${dir}/kube-apiserver" && -x "${dir}/etcd" ]]; then
  echo "${dir}"
  exit 0
fi

mkdir -p "${dir}"
tmp="$(mktemp -d "${dir}/.build.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT

major="${K8S_VERSION#v}"; major="${major%%.*}"
minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
ldflags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"

echo "building kube-apiserver ${K8S_VERSION} and etcd ${ETCD_VERSION} from Go modules into ${dir} (about 5 minutes cold)" >&2
(
  cd "${here}/controlplane"
  CGO_ENABLED=0 go build -trimpath -ldflags "${ldflags}" -o "${tmp}/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${tmp}/etcd" ./etcd
)
mv "${tmp}/kube-apiserver" "${tmp}/etcd" "${dir}/"
echo "${dir}"
