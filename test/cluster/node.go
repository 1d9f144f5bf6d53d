//go:build cluster

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The cluster's network is a bridge this test creates; nothing of it is routed to the uplink.
const (
	bridgeName  = "docrouter0"
	nodeName    = "docrouter-test-node"
	nodeIP      = "10.244.0.1" // the bridge's address: the API server, kubelet and node IP
	podCIDR     = "10.244.0.0/24"
	serviceCIDR = "10.96.0.0/24"
	apiPort     = 6443
	kubeletPort = 10250
	lockName    = "@docrouter-webhook-operator-test-cluster" // an abstract socket: gone with the process
)

// proc is a component the cluster runs: kube-apiserver, kubelet, containerd...
type proc struct {
	Name string   `json:"name"`
	Pid  int      `json:"pid"`
	Args []string `json:"args"`
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// state is what a crashed run leaves in its directory for the next one to clean up.
type state struct {
	Before hostState `json:"before"`
	Procs  []*proc   `json:"procs"`
}

// node is the single-node cluster: its directory, its processes and the machine's state
// before it started.
type node struct {
	dir, assets    string
	logf           func(format string, args ...any)
	state          state
	procs          map[string]*proc
	ports          map[string]int
	containerdSock string
	adminConfig    string
	// ca signs the cluster's certificates (the test's users too); server is the API server's URL.
	ca      *authority
	server  string
	lock    net.Listener
	started time.Time
}

func (n *node) path(p ...string) string { return filepath.Join(append([]string{n.dir}, p...)...) }

func (n *node) saveState() error {
	b, err := json.MarshalIndent(n.state, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(n.path("state.json"), b, 0o600)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ownership is what leftovers() counts as the cluster's.
func (n *node) ownership() ownership {
	_, pods, _ := net.ParseCIDR(podCIDR)
	_, svcs, _ := net.ParseCIDR(serviceCIDR)
	o := ownership{dir: n.dir, bridge: bridgeName, networks: []*net.IPNet{pods, svcs}, ports: []int{apiPort, kubeletPort, 10248, 10249, 10256, 10257, 10259}, pids: n.postgresPids()}
	for _, p := range n.ports {
		o.ports = append(o.ports, p)
	}
	return o
}

// preflight checks what the cluster needs and that it collides with nothing on the machine.
func preflight(assets string) error {
	if os.Geteuid() != 0 {
		return errors.New("the test cluster needs root (a kubelet, containerd, a bridge and iptables rules): run make test-cluster as root")
	}
	for _, b := range []string{"kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			return fmt.Errorf("%s is not in CLUSTER_ASSETS (%s): build it with hack/controlplane.sh --cluster", b, assets)
		}
	}
	for _, b := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables", "iptables-save", "ip6tables-save", "conntrack", "ip", "nft"} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("%s is not installed: run hack/node-packages.sh (apt-get install containerd runc containernetworking-plugins iptables conntrack)", b)
		}
	}
	for _, p := range []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s is missing: install Debian's containernetworking-plugins", p)
		}
	}
	// The cluster's networks must be free: a route or address in them would send the
	// cluster's packets somewhere else than its own bridge.
	_, pods, _ := net.ParseCIDR(podCIDR)
	_, svcs, _ := net.ParseCIDR(serviceCIDR)
	for _, r := range readRoutes() {
		f := strings.Fields(r)
		if len(f) < 2 || f[0] != "-4" || f[1] == "default" {
			continue
		}
		dst := f[1]
		if f[1] == "local" || f[1] == "broadcast" || f[1] == "unicast" {
			if len(f) < 3 {
				continue
			}
			dst = f[2]
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		_, rn, err := net.ParseCIDR(dst)
		if err != nil {
			continue
		}
		for _, ours := range []*net.IPNet{pods, svcs} {
			if rn.Contains(ours.IP) || ours.Contains(rn.IP) {
				return fmt.Errorf("the machine already routes %s (%q), which overlaps the test cluster's %s: the cluster needs networks of its own", dst, r, ours)
			}
		}
	}
	if _, err := net.InterfaceByName(bridgeName); err == nil {
		return fmt.Errorf("a network interface %s already exists and no earlier run left it: remove it or free the name", bridgeName)
	}
	return nil
}

// newNode takes the machine-wide lock, cleans up after a run that crashed, and records the
// state of the machine before anything changes.
func newNode(dir, assets string, logf func(string, ...any)) (*node, error) {
	n := &node{dir: dir, assets: assets, logf: logf, procs: map[string]*proc{}, ports: map[string]int{}, started: time.Now()}
	l, err := net.Listen("unix", lockName)
	if err != nil {
		return nil, fmt.Errorf("another test cluster runs on this machine (the lock %s is held): wait for it to finish: %w", lockName, err)
	}
	n.lock = l
	if st, err := os.ReadFile(n.path("state.json")); err == nil {
		logf("a previous run left %s: stopping what it started and restoring the machine as it found it", dir)
		var old state
		if err := json.Unmarshal(st, &old); err != nil {
			return nil, fmt.Errorf("%s/state.json of a previous run is unreadable (%v): restore the machine by hand and remove %s", dir, err, dir)
		}
		for _, p := range old.Procs {
			if argsOf(p.Pid) == strings.Join(p.Args, "\x00") {
				_ = syscall.Kill(p.Pid, syscall.SIGKILL)
			}
		}
		n.state = old // the machine before that run, and what it started (its PostgreSQL's pid)
		for _, e := range n.restoreHost() {
			logf("cleaning up the previous run: %v", e)
		}
		if left := leftovers(old.Before, snapshotHost(n.dir), n.ownership()); len(left) > 0 {
			_ = n.lock.Close()
			return nil, fmt.Errorf("cleaning up after the previous run left the machine unlike it was before that run: %s", strings.Join(left, "; "))
		}
	} else if _, err := os.Stat(dir); err == nil {
		if err := os.RemoveAll(dir); err != nil {
			return nil, err
		}
	}
	if err := preflight(assets); err != nil {
		_ = n.lock.Close()
		return nil, err
	}
	n.state = state{Before: snapshotHost(n.dir)}
	for _, d := range []string{"pki", "logs", "etcd", "containerd", "cni/net.d", "cni/networks", "kubelet", "pod-logs", "apiserver", "kcm", "scheduler"} {
		if err := os.MkdirAll(n.path(d), 0o700); err != nil {
			return nil, err
		}
	}
	// The PostgreSQL server of the checks runs as the postgres user in a directory of its own
	// under this one, which it must be able to traverse (and nothing more).
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	// The state goes to disk first: from here on a crash leaves what the next run needs.
	if err := n.saveState(); err != nil {
		return nil, err
	}
	if err := n.state.Before.save(n.path("host-before.json")); err != nil {
		return nil, err
	}
	return n, nil
}

func argsOf(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(b), "\x00")
}

// start runs a component in a process group of its own (Ctrl-C reaches the test alone, which
// stops the components in order), logging to logs/NAME.log. It dies with the test (SIGKILL).
func (n *node) start(name, bin string, args ...string) (*proc, error) {
	return n.startAs(name, nil, bin, args...)
}

// startAs is start as another user (cred; nil: root).
func (n *node) startAs(name string, cred *syscall.Credential, bin string, args ...string) (*proc, error) {
	logPath := n.path("logs", name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = n.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{Name: name, Pid: cmd.Process.Pid, Args: append([]string{bin}, args...), cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	n.procs[name] = p
	n.state.Procs = append(n.state.Procs, p)
	n.logf("started %s (pid %d; log %s)", name, p.Pid, logPath)
	return p, n.saveState()
}

// exited returns an error with the end of the component's log if it is no longer running.
func (p *proc) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v); the end of its log %s:\n%s", p.Name, p.err, p.log, tail(p.log, 25))
	default:
		return nil
	}
}

func tail(path string, lines int) string {
	b, _ := os.ReadFile(path)
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// stop sends SIGTERM, then SIGKILL after grace.
func (n *node) stop(name string, grace time.Duration) {
	n.stopWith(name, syscall.SIGTERM, grace)
}

// stopWith sends sig, then SIGKILL after grace.
func (n *node) stopWith(name string, sig syscall.Signal, grace time.Duration) {
	p := n.procs[name]
	if p == nil {
		return
	}
	delete(n.procs, name)
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		n.logf("%s did not stop within %s of %s: killing it", name, grace, sig)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// waitFor polls check every interval until it returns true, the context ends or timeout
// passes; procs that exit meanwhile end the wait with their log.
func waitFor(parent context.Context, what string, timeout time.Duration, check func(context.Context) (bool, error), procs ...*proc) error {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	var last error
	for {
		for _, p := range procs {
			if err := p.exited(); err != nil {
				return fmt.Errorf("waiting for %s: %w", what, err)
			}
		}
		ok, err := check(ctx)
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if parent.Err() != nil {
				return fmt.Errorf("waiting for %s: interrupted (Ctrl-C, SIGTERM or the test's deadline): %w", what, parent.Err())
			}
			if last != nil {
				return fmt.Errorf("%s did not happen within %s: %w", what, timeout, last)
			}
			return fmt.Errorf("%s did not happen within %s", what, timeout)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (n *node) port(name string) (int, error) {
	if p, ok := n.ports[name]; ok {
		return p, nil
	}
	p, err := freePort()
	n.ports[name] = p
	return p, err
}

// network creates the bridge the pods are plugged into: the node's address on it, IPv4
// forwarding on it alone (the machine's ip_forward stays as it is), the service range routed
// to it, and a chain of our own that drops whatever would be forwarded between the bridge and
// any other interface, so that no packet of the cluster leaves through the machine's uplink.
func (n *node) network() error {
	sysctl := func(path, value string) []string { return []string{"sysctl", path, value} }
	steps := [][]string{
		{"ip", "link", "add", bridgeName, "type", "bridge"},
		sysctl("/proc/sys/net/ipv6/conf/"+bridgeName+"/disable_ipv6", "1"),
		{"ip", "addr", "add", nodeIP + "/24", "dev", bridgeName},
		{"ip", "link", "set", bridgeName, "up"},
		sysctl("/proc/sys/net/ipv4/conf/"+bridgeName+"/forwarding", "1"),
		{"ip", "route", "add", serviceCIDR, "dev", bridgeName, "src", nodeIP},
		{"iptables", "-w", "-N", "DOCROUTER-TEST-CLUSTER"},
		{"iptables", "-w", "-A", "DOCROUTER-TEST-CLUSTER", "-i", bridgeName, "!", "-o", bridgeName, "-j", "DROP", "-m", "comment", "--comment", "docrouter test cluster: pods reach no other network"},
		{"iptables", "-w", "-A", "DOCROUTER-TEST-CLUSTER", "-o", bridgeName, "!", "-i", bridgeName, "-j", "DROP", "-m", "comment", "--comment", "docrouter test cluster: no other network reaches pods"},
		{"iptables", "-w", "-I", "FORWARD", "1", "-j", "DOCROUTER-TEST-CLUSTER"},
	}
	for _, s := range steps {
		if s[0] == "sysctl" { // the bridge's own settings, gone with it
			if err := os.WriteFile(s[1], []byte(s[2]), 0o644); err != nil {
				return fmt.Errorf("setting %s to %s: %w", sysctlName(s[1]), s[2], err)
			}
			continue
		}
		if _, err := run(s[0], s[1:]...); err != nil {
			return err
		}
	}
	cni := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "docrouter-test-cluster",
  "plugins": [{
    "type": "bridge",
    "bridge": %q,
    "isGateway": false,
    "isDefaultGateway": false,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": %q,
      "ranges": [[{"subnet": %q, "gateway": %q, "rangeStart": "10.244.0.10", "rangeEnd": "10.244.0.250"}]],
      "routes": [{"dst": %q, "gw": %q}]
    }
  }]
}
`, bridgeName, n.path("cni", "networks"), podCIDR, nodeIP, serviceCIDR, nodeIP)
	return os.WriteFile(n.path("cni", "net.d", "10-docrouter-test-cluster.conflist"), []byte(cni), 0o644)
}

// httpsReady polls url with the admin client certificate until it answers 200.
func httpsReady(client *http.Client, url string) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, fmt.Errorf("%s answered %s", url, resp.Status)
		}
		return true, nil
	}
}

// restoreHost stops what the cluster left running and puts the machine back as n.state.Before
// says it was: processes, mounts, network interfaces, iptables chains and rules, sysctls,
// directories and cgroups. Every step runs even when an earlier one fails.
func (n *node) restoreHost() []error {
	var errs []error
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	before := n.state.Before

	// Processes the components left behind: containerd's shims and the containers' processes
	// (in the kubelet's cgroups), and anything started from this directory.
	for i := 0; i < 3; i++ {
		killed := 0
		for _, pid := range clusterProcesses(n.dir) {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				killed++
			}
		}
		if killed == 0 {
			break
		}
		n.logf("killed %d processes the cluster left", killed)
		time.Sleep(time.Second)
	}
	if left := clusterProcesses(n.dir); len(left) > 0 {
		note(fmt.Errorf("processes of the cluster still run: %v", left))
	}
	// The System V shared memory segment of the test's PostgreSQL server: its fast shutdown
	// removes it; a server that was killed leaves it.
	for _, id := range sysvSegmentsOf(n.postgresPids()) {
		if _, err := run("ipcrm", "-m", id); err != nil {
			note(err)
		} else {
			n.logf("removed the shared memory segment %s that PostgreSQL left", id)
		}
	}

	// Mounts under the cluster's paths, deepest first.
	mounts := added(before.Mounts, readMounts())
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	o := n.ownership()
	for _, m := range mounts {
		mp := strings.Fields(m)[0]
		if !o.path(mp) && !strings.HasPrefix(mp, "/run/netns/") {
			continue
		}
		if err := syscall.Unmount(mp, 0); err != nil {
			if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil {
				note(fmt.Errorf("unmounting %s: %w", mp, err))
			}
		}
	}

	// Network interfaces: the pods' veths and the bridge (its routes and sysctls go with it).
	for _, l := range added(before.Links, readLinks()) {
		if o.link(l) {
			if _, err := run("ip", "link", "del", l); err != nil && l == bridgeName {
				note(err)
			}
		}
	}

	// iptables: kube-proxy's, the kubelet's and our chains, and the rules that jump to them.
	for _, tool := range []string{"iptables", "ip6tables"} {
		note(restoreIptables(tool, before.Iptables[tool]))
	}
	// The tables iptables-nft created, now empty (iptables cannot remove a table).
	for _, t := range added(before.NftTables, readNftTables()) {
		if strings.HasPrefix(t, "(") {
			continue
		}
		if out, err := run("nft", "list", "table", t); err == nil && !strings.Contains(out, "counter") && !nftHasRules(out) {
			note(func() error { _, err := run("nft", "delete", "table", t); return err }())
		}
	}
	_, _ = run("conntrack", "-D", "-s", podCIDR)
	_, _ = run("conntrack", "-D", "-d", serviceCIDR)
	_, _ = run("conntrack", "-D", "-d", podCIDR)

	// Sysctls the kubelet and kube-proxy set (vm.overcommit_memory, kernel.panic...).
	now := readSysctls()
	for k, v := range before.Sysctls {
		if now[k] != v && now[k] != "" {
			if err := os.WriteFile(k, []byte(v), 0o644); err != nil {
				note(fmt.Errorf("restoring %s to %q: %w", sysctlName(k), v, err))
			} else {
				n.logf("restored %s to %s (was set to %s)", sysctlName(k), v, now[k])
			}
		}
	}

	// Directories outside our own that the components created or filled.
	for _, p := range watchedPaths {
		was := before.Paths[p]
		if was == "" {
			if _, err := os.Lstat(p); err == nil {
				note(os.RemoveAll(p))
			}
			continue
		}
		had := map[string]bool{}
		for _, e := range strings.Fields(was) {
			had[e] = true
		}
		entries, _ := os.ReadDir(p)
		for _, e := range entries {
			if !had[e.Name()] {
				note(os.RemoveAll(filepath.Join(p, e.Name())))
			}
		}
	}
	for _, c := range added(before.Cgroups, readCgroups()) {
		note(removeCgroup(c))
	}
	note(os.RemoveAll(n.dir))
	return errs
}

// nftHasRules reports whether `nft list table` output holds a rule, not only chains with
// their hook and policy lines.
func nftHasRules(listing string) bool {
	for _, l := range strings.Split(listing, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "", l == "}", strings.HasPrefix(l, "table "), strings.HasPrefix(l, "chain "),
			strings.HasPrefix(l, "type ") && strings.Contains(l, "hook"):
		default:
			return true
		}
	}
	return false
}

// clusterProcesses lists the processes that are the cluster's: in the kubelet's cgroups
// (containers), containerd's shims and runc, and whatever runs from the cluster's directory.
func clusterProcesses(dir string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		args := argsOf(pid)
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		switch {
		case strings.Contains(string(cg), "kubepods"),
			strings.Contains(args, dir),
			strings.HasPrefix(filepath.Base(exe), "containerd-shim") && strings.Contains(args, dir):
			out = append(out, pid)
		}
	}
	return out
}

// removeCgroup removes a cgroup directory and those below it, deepest first (a cgroup's
// control files go with its directory).
func removeCgroup(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeCgroup(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	var err2 error
	for i := 0; i < 20; i++ { // a cgroup whose last process just exited may be busy a moment
		if err2 = syscall.Rmdir(dir); err2 == nil || errors.Is(err2, syscall.ENOENT) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("removing cgroup %s: %w", dir, err2)
}

// restoreIptables deletes, in each table, the rules of built-in chains that were not there
// before and the chains the cluster created (KUBE-*, DOCROUTER-*, CNI-*).
func restoreIptables(tool string, before []string) error {
	out, err := exec.Command(tool + "-save").Output()
	if err != nil {
		return fmt.Errorf("%s-save: %w", tool, err)
	}
	had := map[string]bool{}
	table := ""
	for _, l := range before {
		if strings.HasPrefix(l, "*") {
			table = l[1:]
		}
		had[table+" "+l] = true
	}
	ours := func(chain string) bool {
		return strings.HasPrefix(chain, "KUBE-") || strings.HasPrefix(chain, "DOCROUTER-") || strings.HasPrefix(chain, "CNI-")
	}
	var errs []error
	chains := map[string][]string{}
	table = ""
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(iptablesCounters.ReplaceAllString(l, ""))
		switch {
		case strings.HasPrefix(l, "*"):
			table = l[1:]
		case strings.HasPrefix(l, ":"):
			name, _, _ := strings.Cut(l[1:], " ")
			if !had[table+" "+l] && ours(name) {
				chains[table] = append(chains[table], name)
			}
		case strings.HasPrefix(l, "-A "):
			f := splitRule(l)
			if len(f) < 2 || had[table+" "+l] || ours(f[1]) {
				continue
			}
			if _, err := run(tool, append([]string{"-w", "-t", table, "-D"}, f[1:]...)...); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for t, cs := range chains {
		for _, c := range cs {
			_, _ = run(tool, "-w", "-t", t, "-F", c)
		}
		for _, c := range cs {
			if _, err := run(tool, "-w", "-t", t, "-X", c); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// splitRule splits an iptables-save line into arguments, honouring its double quotes.
func splitRule(l string) []string {
	var out []string
	var cur strings.Builder
	quoted, escaped, any := false, false, false
	for _, r := range l {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\' && quoted:
			escaped = true
		case r == '"':
			quoted, any = !quoted, true
		case r == ' ' && !quoted:
			if cur.Len() > 0 || any {
				out = append(out, cur.String())
				cur.Reset()
				any = false
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 || any {
		out = append(out, cur.String())
	}
	return out
}
