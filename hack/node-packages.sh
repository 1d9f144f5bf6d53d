#!/usr/bin/env bash
# Installs, from Debian's packages, what the single-node cluster of `make test-cluster` runs on
# besides the Kubernetes binaries: containerd and runc, the CNI plugins (/usr/lib/cni), iptables
# (kube-proxy's rules), conntrack, and nft (the teardown removes the empty tables that
# iptables-nft leaves). Packages already installed are left as they are; nothing is started
# (the test starts its own containerd with its own configuration).
set -euo pipefail

packages=(containerd runc containernetworking-plugins iptables conntrack nftables)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q 'install ok installed' || missing+=("${p}")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
  echo "node-packages: ${missing[*]} missing, and installing them needs root: run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "node-packages: installing ${missing[*]} with apt-get" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
