//go:build cluster

package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// up brings the cluster up: certificates, the bridge, etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, containerd with the images imported, the kubelet
// and kube-proxy, and returns when the node is Ready and Services work.
func (n *node) up(ctx context.Context, images []string) (kubernetes.Interface, error) {
	step := func(what string) func() {
		t0 := time.Now()
		return func() { n.logf("%s: %.1fs", what, time.Since(t0).Seconds()) }
	}
	done := step("certificates")
	pki := n.path("pki")
	ca, err := newAuthority(pki, "ca")
	if err != nil {
		return nil, err
	}
	front, err := newAuthority(pki, "front-proxy-ca")
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(nodeIP)
	svcIP := net.ParseIP("10.96.0.1") // the kubernetes Service: the first address of the range
	for _, c := range []struct {
		name, cn string
		orgs     []string
		ips      []net.IP
		dns      []string
	}{
		{"apiserver", "kube-apiserver", nil, []net.IP{ip, svcIP}, []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil},
		{"admin", "test-cluster-admin", []string{"system:masters"}, nil, nil},
		{"kube-controller-manager", "system:kube-controller-manager", nil, nil, nil},
		{"kube-scheduler", "system:kube-scheduler", nil, nil, nil},
		{"kube-proxy", "system:kube-proxy", nil, nil, nil},
		{"kubelet-client", "system:node:" + nodeName, []string{"system:nodes"}, nil, nil},
		// kubectl logs and exec reach the kubelet on the node IP; the API server checks this.
		{"kubelet", "system:node:" + nodeName, []string{"system:nodes"}, []net.IP{ip}, []string{nodeName}},
	} {
		if err := ca.issue(c.name, c.cn, c.orgs, c.ips, c.dns); err != nil {
			return nil, err
		}
	}
	if err := front.issue("front-proxy-client", "front-proxy-client", nil, nil, nil); err != nil {
		return nil, err
	}
	saPub, saKey, err := serviceAccountKey(pki)
	if err != nil {
		return nil, err
	}
	server := fmt.Sprintf("https://%s:%d", nodeIP, apiPort)
	kc := map[string]string{}
	for _, name := range []string{"admin", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet-client"} {
		if kc[name], err = ca.kubeconfig(name, server); err != nil {
			return nil, err
		}
	}
	n.adminConfig = kc["admin"]
	n.ca, n.server = ca, server
	done()

	done = step("network (bridge " + bridgeName + " " + nodeIP + "/24, services " + serviceCIDR + " routed to it)")
	if err := n.network(); err != nil {
		return nil, err
	}
	done()

	done = step("etcd")
	etcdPort, err := n.port("etcd")
	if err != nil {
		return nil, err
	}
	peerPort, err := n.port("etcd-peer")
	if err != nil {
		return nil, err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	etcd, err := n.start("etcd", filepath.Join(n.assets, "etcd"),
		"--data-dir", n.path("etcd"), "--name", nodeName,
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("%s=http://127.0.0.1:%d", nodeName, peerPort),
		"--unsafe-no-fsync", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	plain := &http.Client{Timeout: 2 * time.Second}
	if err := waitFor(ctx, "etcd healthy", time.Minute, func(ctx context.Context) (bool, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, etcdURL+"/health", nil)
		resp, err := plain.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	}, etcd); err != nil {
		return nil, err
	}
	done()

	done = step("kube-apiserver")
	crt := func(name string) string { return ca.certPath(name) }
	key := func(name string) string { return ca.keyPath(name) }
	api, err := n.start("kube-apiserver", filepath.Join(n.assets, "kube-apiserver"),
		"--advertise-address", nodeIP, "--bind-address", nodeIP, fmt.Sprintf("--secure-port=%d", apiPort),
		"--etcd-servers", etcdURL,
		"--service-cluster-ip-range", serviceCIDR,
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", saPub, "--service-account-signing-key-file", saKey,
		"--tls-cert-file", crt("apiserver"), "--tls-private-key-file", key("apiserver"),
		"--client-ca-file", crt("ca"),
		"--authorization-mode", "Node,RBAC",
		// PodSecurity is on by default; named here because the checks rely on it.
		"--enable-admission-plugins", "NodeRestriction,PodSecurity",
		"--kubelet-client-certificate", crt("apiserver-kubelet-client"), "--kubelet-client-key", key("apiserver-kubelet-client"),
		"--kubelet-certificate-authority", crt("ca"), "--kubelet-preferred-address-types", "InternalIP",
		// The aggregation layer, for APIServices.
		"--requestheader-client-ca-file", front.certPath("front-proxy-ca"), "--requestheader-allowed-names", "front-proxy-client",
		"--requestheader-username-headers", "X-Remote-User", "--requestheader-group-headers", "X-Remote-Group",
		"--requestheader-extra-headers-prefix", "X-Remote-Extra-",
		"--proxy-client-cert-file", front.certPath("front-proxy-client"), "--proxy-client-key-file", front.keyPath("front-proxy-client"),
		"--allow-privileged=false", "--profiling=false", "--cert-dir", n.path("apiserver"))
	if err != nil {
		return nil, err
	}
	caPool := x509.NewCertPool()
	caPEM, err := os.ReadFile(crt("ca"))
	if err != nil {
		return nil, err
	}
	caPool.AppendCertsFromPEM(caPEM)
	adminCert, err := tls.LoadX509KeyPair(crt("admin"), key("admin"))
	if err != nil {
		return nil, err
	}
	admin := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool, Certificates: []tls.Certificate{adminCert}}}}
	if err := waitFor(ctx, "kube-apiserver ready", 2*time.Minute, httpsReady(admin, server+"/readyz"), etcd, api); err != nil {
		return nil, err
	}
	done()

	done = step("kube-controller-manager and kube-scheduler")
	kcmPort, err := n.port("kube-controller-manager")
	if err != nil {
		return nil, err
	}
	schedPort, err := n.port("kube-scheduler")
	if err != nil {
		return nil, err
	}
	kcm, err := n.start("kube-controller-manager", filepath.Join(n.assets, "kube-controller-manager"),
		"--kubeconfig", kc["kube-controller-manager"],
		"--authentication-kubeconfig", kc["kube-controller-manager"], "--authorization-kubeconfig", kc["kube-controller-manager"],
		"--bind-address", "127.0.0.1", fmt.Sprintf("--secure-port=%d", kcmPort), "--cert-dir", n.path("kcm"),
		"--service-account-private-key-file", saKey, "--root-ca-file", crt("ca"),
		"--use-service-account-credentials=true", "--service-cluster-ip-range", serviceCIDR,
		"--leader-elect=false", "--profiling=false")
	if err != nil {
		return nil, err
	}
	sched, err := n.start("kube-scheduler", filepath.Join(n.assets, "kube-scheduler"),
		"--kubeconfig", kc["kube-scheduler"],
		"--authentication-kubeconfig", kc["kube-scheduler"], "--authorization-kubeconfig", kc["kube-scheduler"],
		"--bind-address", "127.0.0.1", fmt.Sprintf("--secure-port=%d", schedPort), "--cert-dir", n.path("scheduler"),
		"--leader-elect=false", "--profiling=false")
	if err != nil {
		return nil, err
	}
	done()

	done = step("containerd and the images")
	n.containerdSock = n.path("containerd", "containerd.sock")
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docrouter/pause:v1"
  # These machines lack CAP_SYS_RESOURCE: without it every sandbox fails in runc.
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[5]q

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[6]q
    max_conf_num = 1
`, n.path("containerd", "root"), n.path("containerd", "state"), n.containerdSock, n.path("containerd", "opt"),
		n.path("containerd", "runc"), n.path("cni", "net.d"))
	if err := os.WriteFile(n.path("containerd", "config.toml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	ctrd, err := n.start("containerd", "containerd", "--config", n.path("containerd", "config.toml"), "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	if err := waitFor(ctx, "containerd serving", time.Minute, func(ctx context.Context) (bool, error) {
		_, err := run("ctr", "--address", n.containerdSock, "version")
		return err == nil, err
	}, ctrd); err != nil {
		return nil, err
	}
	for _, img := range images {
		out, err := run("ctr", "--address", n.containerdSock, "-n", "k8s.io", "images", "import", img)
		if err != nil {
			return nil, fmt.Errorf("importing %s into containerd: %w", img, err)
		}
		n.logf("imported %s: %s", filepath.Base(img), strings.Join(strings.Fields(out), " "))
	}
	done()

	done = step("kubelet, node Ready")
	healthz, err := n.port("kubelet-healthz")
	if err != nil {
		return nil, err
	}
	kubeletCfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# These machines run cgroup v1, with no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%[1]s
address: %[2]s
port: %[3]d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %[4]d
tlsCertFile: %[5]s
tlsPrivateKeyFile: %[6]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[7]s}
authorization: {mode: Webhook}
clusterDomain: cluster.local
# No host resolv.conf in pods: no DNS query leaves the machine.
resolvConf: ""
podLogsDir: %[8]s
failSwapOn: false
rotateCertificates: false
serverTLSBootstrap: false
# The machine is shared: no eviction or image garbage collection for disk the others use.
evictionHard: {memory.available: 100Mi, nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 30
`, n.containerdSock, nodeIP, kubeletPort, healthz, crt("kubelet"), key("kubelet"), crt("ca"), n.path("pod-logs"))
	if err := os.WriteFile(n.path("kubelet", "config.yaml"), []byte(kubeletCfg), 0o600); err != nil {
		return nil, err
	}
	kubelet, err := n.start("kubelet", filepath.Join(n.assets, "kubelet"),
		"--config", n.path("kubelet", "config.yaml"), "--kubeconfig", kc["kubelet-client"],
		"--root-dir", n.path("kubelet"), "--node-ip", nodeIP, "--hostname-override", nodeName, "--v=1")
	if err != nil {
		return nil, err
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", n.adminConfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, err
	}
	if err := waitFor(ctx, "node "+nodeName+" Ready", 2*time.Minute, func(ctx context.Context) (bool, error) {
		node, err := cs.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					return true, nil
				}
				return false, fmt.Errorf("node %s: Ready=%s: %s", nodeName, c.Status, c.Message)
			}
		}
		return false, nil
	}, kubelet, ctrd, api, kcm, sched); err != nil {
		return nil, err
	}
	done()

	done = step("kube-proxy, Services routed")
	proxyHealth, err := n.port("kube-proxy-healthz")
	if err != nil {
		return nil, err
	}
	proxyMetrics, err := n.port("kube-proxy-metrics")
	if err != nil {
		return nil, err
	}
	proxyCfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: %[1]s}
hostnameOverride: %[2]s
clusterCIDR: %[3]s
detectLocalMode: ClusterCIDR
healthzBindAddress: 127.0.0.1:%[4]d
metricsBindAddress: 127.0.0.1:%[5]d
# NodePorts on the bridge only, never on the machine's own interfaces.
nodePortAddresses: [%[6]s/32]
iptables: {localhostNodePorts: false, masqueradeAll: false, syncPeriod: 10s}
# Zeros leave the machine's conntrack settings as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, kc["kube-proxy"], nodeName, podCIDR, proxyHealth, proxyMetrics, nodeIP)
	if err := os.WriteFile(n.path("kube-proxy.yaml"), []byte(proxyCfg), 0o600); err != nil {
		return nil, err
	}
	proxy, err := n.start("kube-proxy", filepath.Join(n.assets, "kube-proxy"), "--config", n.path("kube-proxy.yaml"))
	if err != nil {
		return nil, err
	}
	// The kubernetes Service answers through kube-proxy's rules once they are synced.
	if err := waitFor(ctx, "the kubernetes Service (10.96.0.1:443) reaching the API server", time.Minute,
		httpsReady(admin, "https://10.96.0.1:443/readyz"), proxy, api); err != nil {
		return nil, err
	}
	done()
	return cs, nil
}

// down stops the cluster in order: the controllers first (nothing recreates pods), then every
// pod (the kubelet stops their containers and the CNI plugin unplugs them), the kubelet and
// kube-proxy (whose rules `kube-proxy --cleanup` removes), the control plane and containerd.
func (n *node) down(ctx context.Context, cs kubernetes.Interface) {
	t0 := time.Now()
	n.stop("kube-controller-manager", 10*time.Second)
	n.stop("kube-scheduler", 10*time.Second)
	if cs != nil && n.procs["kube-apiserver"] != nil && n.procs["kubelet"] != nil {
		zero := int64(0)
		nss, err := cs.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, ns := range nss.Items {
				_ = cs.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
			}
		}
		if err := waitFor(ctx, "the kubelet stopping every container", 60*time.Second, func(ctx context.Context) (bool, error) {
			out, err := run("ctr", "--address", n.containerdSock, "-n", "k8s.io", "tasks", "ls", "-q")
			if err != nil {
				return false, err
			}
			return strings.TrimSpace(out) == "", fmt.Errorf("still running: %s", strings.Join(strings.Fields(out), " "))
		}); err != nil {
			n.logf("%v", err)
		}
	}
	n.stop("kubelet", 20*time.Second)
	n.stop("kube-proxy", 10*time.Second)
	// The history database of the PostgreSQL install, once its clients are gone: a fast
	// shutdown (SIGINT), which removes its socket, lock file and shared memory.
	n.stopPostgres()
	if _, err := os.Stat(filepath.Join(n.assets, "kube-proxy")); err == nil {
		if out, err := run(filepath.Join(n.assets, "kube-proxy"), "--cleanup"); err != nil {
			n.logf("kube-proxy --cleanup: %v\n%s", err, out)
		}
	}
	n.stop("kube-apiserver", 20*time.Second)
	n.stop("etcd", 10*time.Second)
	n.stop("containerd", 20*time.Second)
	for name := range n.procs {
		n.stop(name, 5*time.Second)
	}
	n.logf("components stopped: %.1fs", time.Since(t0).Seconds())
}
