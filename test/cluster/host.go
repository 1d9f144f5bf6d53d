//go:build cluster

package cluster

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// hostState is what a cluster run can change on the machine, read before bring-up and after
// teardown: the test fails on any difference that is the cluster's.
type hostState struct {
	// Sysctls: /proc/sys paths to values, for the trees a kubelet, kube-proxy, containerd, the
	// CNI plugins or this test write (kernel, vm, net.ipv4, net.ipv6 all/default, net.bridge,
	// net.netfilter, net.core), less counters that change on their own.
	Sysctls map[string]string
	// Iptables: "iptables" and "ip6tables" to their iptables-save output, normalised.
	Iptables map[string][]string
	// NftTables: the nftables tables ("ip filter", "ip6 nat"...), empty ones included:
	// iptables-nft creates a table the first time a program lists or changes it.
	NftTables []string
	// Mounts: "mountpoint fstype source" of every mount.
	Mounts []string
	// Links: network interface names.
	Links []string
	// Routes: `ip route show table all` for both families.
	Routes []string
	// Listeners: "tcp 10.244.0.1:6443" for every listening TCP socket and bound UDP socket,
	// and "unix /path" for every listening Unix socket bound to a path (containerd's, its
	// shims', PostgreSQL's).
	Listeners []string
	// Paths: directories the components create outside the test's own directory, and that
	// directory itself, to their entries ("" when absent).
	Paths map[string]string
	// Cgroups: the top-level directories of every cgroup v1 hierarchy (and of the v2 tree).
	Cgroups []string
	// SharedMemory: "ID PID" for every System V shared memory segment and the pid that created
	// it (PostgreSQL keeps one, which a server killed leaves behind).
	SharedMemory []string
}

// watchedPaths are the host directories the cluster's parts create or fill even when pointed
// at a directory of their own (kubelet's device-plugin and pod-log paths, containerd's shim
// sockets, the CNI cache, network namespaces...).
var watchedPaths = []string{
	"/etc/cni", "/etc/kubernetes", "/opt/cni", "/opt/containerd",
	"/run/containerd", "/run/netns", "/run/kubernetes",
	"/var/lib/cni", "/var/lib/containerd", "/var/lib/kubelet", "/var/lib/kube-proxy",
	"/var/log/containers", "/var/log/pods",
}

var volatileSysctls = map[string]bool{
	"/proc/sys/kernel/ns_last_pid":               true,
	"/proc/sys/net/netfilter/nf_conntrack_count": true,
}

func readSysctls() map[string]string {
	out := map[string]string{}
	for _, d := range []string{"kernel", "kernel/keys", "vm", "net/core", "net/ipv4", "net/ipv4/conf/all", "net/ipv4/conf/default",
		"net/ipv6/conf/all", "net/ipv6/conf/default", "net/bridge", "net/netfilter"} {
		entries, _ := os.ReadDir(filepath.Join("/proc/sys", d))
		for _, e := range entries {
			p := filepath.Join("/proc/sys", d, e.Name())
			if e.IsDir() || volatileSysctls[p] {
				continue
			}
			b, err := os.ReadFile(p)
			if err != nil { // write-only or not readable here
				continue
			}
			out[p] = strings.Join(strings.Fields(string(b)), " ")
		}
	}
	return out
}

var iptablesCounters = regexp.MustCompile(` \[\d+:\d+\]$`)

// readIptables returns iptables-save's output without comments and counters, with tables that
// hold only their built-in chains at ACCEPT and no rule left out: iptables-nft cannot remove
// an empty table once a program has listed it, and such a table filters nothing.
func readIptables(tool string) []string {
	out, err := exec.Command(tool + "-save").Output()
	if err != nil {
		return []string{"(" + tool + "-save: " + err.Error() + ")"}
	}
	var lines, table []string
	empty := true
	flush := func() {
		if len(table) > 0 && !empty {
			lines = append(lines, table...)
		}
		table, empty = nil, true
	}
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(iptablesCounters.ReplaceAllString(l, ""))
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "*"):
			flush()
			table = append(table, l)
		case strings.HasPrefix(l, ":"):
			table = append(table, l)
			name, policy, _ := strings.Cut(l[1:], " ")
			if !builtinChain(name) || policy != "ACCEPT" {
				empty = false
			}
		case l == "COMMIT":
			table = append(table, l)
			flush()
		default:
			table = append(table, l)
			empty = false
		}
	}
	flush()
	return lines
}

// readNftTables lists the nftables tables as "family name".
func readNftTables() []string {
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return []string{"(nft list tables: " + err.Error() + ")"}
	}
	var tables []string
	for _, l := range strings.Split(string(out), "\n") {
		if t, ok := strings.CutPrefix(strings.TrimSpace(l), "table "); ok {
			tables = append(tables, t)
		}
	}
	sort.Strings(tables)
	return tables
}

func builtinChain(name string) bool {
	return slices.Contains([]string{"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}, name)
}

func readMounts() []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		// id parent major:minor root mountpoint options ... - fstype source superoptions
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 2 {
			continue
		}
		out = append(out, unescapeMount(f[4])+" "+g[0]+" "+g[1])
	}
	sort.Strings(out)
	return out
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

func readLinks() []string {
	ifs, _ := net.Interfaces()
	var out []string
	for _, i := range ifs {
		out = append(out, i.Name)
	}
	sort.Strings(out)
	return out
}

var routeExpires = regexp.MustCompile(` expires \S+`)

func readRoutes() []string {
	var out []string
	for _, fam := range []string{"-4", "-6"} {
		b, _ := exec.Command("ip", fam, "route", "show", "table", "all").Output()
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(routeExpires.ReplaceAllString(l, "")); l != "" {
				out = append(out, fam+" "+l)
			}
		}
	}
	sort.Strings(out)
	return out
}

// readListeners parses /proc/net/{tcp,tcp6,udp,udp6} of this network namespace.
func readListeners() []string {
	var out []string
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		f, err := os.Open("/proc/net/" + proto)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			if len(fl) < 4 {
				continue
			}
			// tcp: 0A is LISTEN; udp: 07 is a bound socket
			if (strings.HasPrefix(proto, "tcp") && fl[3] != "0A") || (strings.HasPrefix(proto, "udp") && fl[3] != "07") {
				continue
			}
			out = append(out, strings.TrimSuffix(proto, "6")+" "+hexAddr(fl[1]))
		}
		_ = f.Close()
	}
	out = append(out, readUnixListeners()...)
	sort.Strings(out)
	return slices.Compact(out)
}

// readUnixListeners lists the listening Unix sockets bound to a path, from /proc/net/unix:
// "Num RefCount Protocol Flags Type St Inode Path", Flags 00010000 (accepting connections).
// Abstract sockets (@name) have no file to leave behind and are left out.
func readUnixListeners() []string {
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 8 || f[3] != "00010000" || !strings.HasPrefix(f[7], "/") {
			continue
		}
		out = append(out, "unix "+f[7])
	}
	return out
}

// hexAddr turns /proc/net's "0100007F:1F90" into "127.0.0.1:8080".
func hexAddr(s string) string {
	h, p, _ := strings.Cut(s, ":")
	port, _ := strconv.ParseUint(p, 16, 16)
	b := make([]byte, len(h)/2)
	for i := range b {
		v, _ := strconv.ParseUint(h[2*i:2*i+2], 16, 8)
		b[i] = byte(v)
	}
	// The kernel prints each 32-bit word in host (little-endian) order.
	for i := 0; i+4 <= len(b); i += 4 {
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	return net.JoinHostPort(net.IP(b).String(), fmt.Sprint(port))
}

func readPaths(extra ...string) map[string]string {
	out := map[string]string{}
	for _, p := range append(slices.Clone(watchedPaths), extra...) {
		entries, err := os.ReadDir(p)
		if err != nil {
			if _, serr := os.Lstat(p); serr == nil {
				out[p] = "(not a directory)"
			} else {
				out[p] = ""
			}
			continue
		}
		names := []string{"(dir)"}
		for _, e := range entries {
			names = append(names, e.Name())
		}
		out[p] = strings.Join(names, " ")
	}
	return out
}

func readCgroups() []string {
	var out []string
	roots, _ := os.ReadDir("/sys/fs/cgroup")
	for _, r := range roots {
		if !r.IsDir() {
			continue
		}
		subs, _ := os.ReadDir(filepath.Join("/sys/fs/cgroup", r.Name()))
		for _, s := range subs {
			if s.IsDir() {
				out = append(out, filepath.Join("/sys/fs/cgroup", r.Name(), s.Name()))
			}
		}
	}
	sort.Strings(out)
	return out
}

// snapshotHost reads the machine; dirs are directories of the cluster's own to compare too
// (its working directory: absent before, and after).
func snapshotHost(dirs ...string) hostState {
	return hostState{
		Sysctls:   readSysctls(),
		Iptables:  map[string][]string{"iptables": readIptables("iptables"), "ip6tables": readIptables("ip6tables")},
		NftTables: readNftTables(),
		Mounts:    readMounts(),
		Links:     readLinks(),
		Routes:    readRoutes(),
		Listeners: readListeners(),
		Paths:     readPaths(dirs...),
		Cgroups:   readCgroups(),

		SharedMemory: readSharedMemory(),
	}
}

// readSharedMemory lists /proc/sysvipc/shm ("key shmid perms size cpid lpid nattch ...") as
// "shmid cpid".
func readSharedMemory() []string {
	b, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(l); len(f) >= 7 {
			out = append(out, f[1]+" "+f[4])
		}
	}
	sort.Strings(out)
	return out
}

func (h hostState) save(path string) error {
	b, err := json.MarshalIndent(h, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// added and removed list the elements of after not in before, and the other way round.
func added(before, after []string) []string {
	seen := map[string]int{}
	for _, s := range before {
		seen[s]++
	}
	var out []string
	for _, s := range after {
		if seen[s] > 0 {
			seen[s]--
			continue
		}
		out = append(out, s)
	}
	return out
}

// leftovers compares the machine after teardown with the machine before bring-up and returns
// one sentence per difference that the cluster could have made. Listeners, links and mounts of
// other programs on a shared machine come and go: only those on the cluster's addresses, with
// the cluster's names or under the cluster's paths count.
func leftovers(before, after hostState, ours ownership) []string {
	var out []string
	for k, v := range before.Sysctls {
		if a, ok := after.Sysctls[k]; ok && a != v {
			out = append(out, fmt.Sprintf("sysctl %s is %q, was %q", sysctlName(k), a, v))
		}
	}
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, l := range added(before.Iptables[tool], after.Iptables[tool]) {
			out = append(out, fmt.Sprintf("%s has %q, which it did not have", tool, l))
		}
		for _, l := range added(after.Iptables[tool], before.Iptables[tool]) {
			out = append(out, fmt.Sprintf("%s lost %q", tool, l))
		}
	}
	for _, t := range added(before.NftTables, after.NftTables) {
		out = append(out, "nftables table left: "+t)
	}
	for _, m := range added(before.Mounts, after.Mounts) {
		if ours.path(strings.Fields(m)[0]) {
			out = append(out, "mount left: "+m)
		}
	}
	for _, l := range added(before.Links, after.Links) {
		if ours.link(l) {
			out = append(out, "network interface left: "+l)
		}
	}
	for _, r := range added(before.Routes, after.Routes) {
		out = append(out, "route left: "+r)
	}
	for _, r := range added(after.Routes, before.Routes) {
		out = append(out, "route lost: "+r)
	}
	for _, l := range added(before.Listeners, after.Listeners) {
		if ours.listener(l) {
			out = append(out, "socket still listening: "+l)
		}
	}
	for p, v := range before.Paths {
		if after.Paths[p] != v {
			out = append(out, fmt.Sprintf("%s is now %s, was %s", p, describePath(after.Paths[p]), describePath(v)))
		}
	}
	for _, c := range added(before.Cgroups, after.Cgroups) {
		out = append(out, "cgroup left: "+c)
	}
	for _, m := range added(before.SharedMemory, after.SharedMemory) {
		id, pid, _ := strings.Cut(m, " ")
		if p, err := strconv.Atoi(pid); err == nil && ours.pids[p] {
			out = append(out, fmt.Sprintf("shared memory segment left: %s (made by pid %s)", id, pid))
		}
	}
	sort.Strings(out)
	return out
}

// summarize counts differences by kind: "12 sysctl, 40 iptables, ...".
func summarize(diffs []string) string {
	kinds := []struct{ name, prefix string }{
		{"sysctl", "sysctl "}, {"iptables", "iptables "}, {"ip6tables", "ip6tables "}, {"nftables table", "nftables table "}, {"mount", "mount "},
		{"network interface", "network interface "}, {"route", "route "}, {"socket", "socket "}, {"directory", "/"}, {"cgroup", "cgroup "},
		{"shared memory segment", "shared memory segment "},
	}
	var out []string
	for _, k := range kinds {
		n := 0
		for _, d := range diffs {
			if strings.HasPrefix(d, k.prefix) {
				n++
			}
		}
		if n > 0 {
			out = append(out, fmt.Sprintf("%d %s", n, k.name))
		}
	}
	return strings.Join(out, ", ")
}

func sysctlName(p string) string {
	return strings.ReplaceAll(strings.TrimPrefix(p, "/proc/sys/"), "/", ".")
}

func describePath(v string) string {
	switch v {
	case "":
		return "absent"
	case "(dir)":
		return "an empty directory"
	default:
		return "[" + v + "]"
	}
}

// ownership tells which names, paths and addresses are the cluster's.
type ownership struct {
	dir      string
	bridge   string
	networks []*net.IPNet
	ports    []int
	// pids made what they made (the System V segment of the test's PostgreSQL).
	pids map[int]bool
}

func (o ownership) path(p string) bool {
	if p == o.dir || strings.HasPrefix(p, o.dir+"/") {
		return true
	}
	for _, w := range watchedPaths {
		if p == w || strings.HasPrefix(p, w+"/") {
			return true
		}
	}
	return strings.HasPrefix(p, "/sys/fs/cgroup/") && strings.Contains(p, "kubepods")
}

func (o ownership) link(name string) bool {
	return name == o.bridge || strings.HasPrefix(name, "veth")
}

func (o ownership) listener(l string) bool {
	proto, addr, _ := strings.Cut(l, " ")
	if proto == "unix" {
		return o.path(addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	for _, n := range o.networks {
		if n.Contains(ip) {
			return true
		}
	}
	for _, p := range o.ports {
		if fmt.Sprint(p) == port {
			return true
		}
	}
	return false
}

// run runs a command and returns its combined output; the error says what ran.
func run(name string, args ...string) (string, error) {
	var buf bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return buf.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(buf.String()))
	}
	return buf.String(), nil
}
