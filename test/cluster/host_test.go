//go:build cluster

package cluster

import (
	"net"
	"slices"
	"strings"
	"testing"
)

// iptables-save quotes comments; the teardown deletes a rule by passing its words back.
func TestSplitRule(t *testing.T) {
	for _, c := range []struct {
		line string
		want []string
	}{
		{`-A FORWARD -j DOCROUTER-TEST-CLUSTER`, []string{"-A", "FORWARD", "-j", "DOCROUTER-TEST-CLUSTER"}},
		{`-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS`,
			[]string{"-A", "INPUT", "-m", "comment", "--comment", "kubernetes health check service ports", "-j", "KUBE-NODEPORTS"}},
		{`-A X -m comment --comment "a \"quoted\" word" -j Y`, []string{"-A", "X", "-m", "comment", "--comment", `a "quoted" word`, "-j", "Y"}},
		{`-A X -m comment --comment "" -j Y`, []string{"-A", "X", "-m", "comment", "--comment", "", "-j", "Y"}},
	} {
		if got := splitRule(c.line); !slices.Equal(got, c.want) {
			t.Errorf("splitRule(%q) = %q, want %q", c.line, got, c.want)
		}
	}
}

func TestHexAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"0100F40A:192B":                         "10.244.0.1:6443",
		"00000000000000000000000000000000:2800": "[::]:10240",
		"00000000000000000000000001000000:0050": "[::1]:80",
	} {
		if got := hexAddr(in); got != want {
			t.Errorf("hexAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

// What the comparison reports, and what it leaves to other programs of a shared machine.
func TestLeftovers(t *testing.T) {
	_, pods, _ := net.ParseCIDR(podCIDR)
	own := ownership{dir: "/var/tmp/c", bridge: bridgeName, networks: []*net.IPNet{pods}, ports: []int{6443}, pids: map[int]bool{4242: true}}
	before := hostState{
		Sysctls:  map[string]string{"/proc/sys/vm/overcommit_memory": "0"},
		Iptables: map[string][]string{"iptables": {"*filter", ":INPUT ACCEPT", "COMMIT"}},
		Paths:    map[string]string{"/var/lib/kubelet": "", "/var/tmp/c": ""},
	}
	after := hostState{
		Sysctls:   map[string]string{"/proc/sys/vm/overcommit_memory": "1"},
		Iptables:  map[string][]string{"iptables": {"*filter", ":INPUT ACCEPT", ":KUBE-FIREWALL -", "COMMIT"}},
		Mounts:    []string{"/var/tmp/c/containerd/x overlay overlay", "/home/other tmpfs tmpfs"},
		Links:     []string{bridgeName, "veth1234abcd", "other0"},
		Listeners: []string{"tcp 10.244.0.1:6443", "tcp 127.0.0.1:6443", "tcp 127.0.0.1:4000", "unix /var/tmp/c/postgres/sock/.s.PGSQL.5432", "unix /tmp/other/.s.PGSQL.5432"},
		Paths:     map[string]string{"/var/lib/kubelet": "(dir) device-plugins", "/var/tmp/c": "(dir) postgres"},
		Cgroups:   []string{"/sys/fs/cgroup/memory/kubepods"},

		SharedMemory: []string{"77 4242", "78 999"},
	}
	got := strings.Join(leftovers(before, after, own), "\n")
	for _, want := range []string{
		`sysctl vm.overcommit_memory is "1", was "0"`,
		`iptables has ":KUBE-FIREWALL -"`,
		"mount left: /var/tmp/c/containerd/x",
		"network interface left: " + bridgeName,
		"network interface left: veth1234abcd",
		"socket still listening: tcp 10.244.0.1:6443",
		"socket still listening: tcp 127.0.0.1:6443",
		"socket still listening: unix /var/tmp/c/postgres/sock/.s.PGSQL.5432",
		"/var/tmp/c is now [(dir) postgres], was absent",
		"/var/lib/kubelet is now [(dir) device-plugins], was absent",
		"cgroup left: /sys/fs/cgroup/memory/kubepods",
		"shared memory segment left: 77 (made by pid 4242)",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("leftovers does not report %q; it reports:\n%s", want, got)
		}
	}
	for _, other := range []string{"/home/other", "other0", "127.0.0.1:4000", "/tmp/other", "segment left: 78"} {
		if strings.Contains(got, other) {
			t.Errorf("leftovers reports %s, which is another program's:\n%s", other, got)
		}
	}
	if l := leftovers(before, before, own); len(l) != 0 {
		t.Errorf("an unchanged machine has leftovers: %q", l)
	}
}
