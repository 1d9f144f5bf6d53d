//go:build cluster

package cluster

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

const (
	installNS  = "docrouter-system"
	deployName = "webhook-operator-controller-manager"
	leaseName  = "webhook-operator.webhooks.docrouter.ai"
	demoNS     = "demo"
	signingKey = "cluster-test-signing-secret"
)

// checks are what a user of the install sees, in order; each needs the ones before it.
type checks struct {
	t     *testing.T
	n     *node
	cs    kubernetes.Interface
	c     client.Client
	image string
	// installs are run one after the other in the same cluster, each uninstalled before the
	// next (installs.go).
	installs []*installation

	// The install being checked, and what its checks found.
	cur                    *installation
	objs                   []*unstructured.Unstructured
	receiverURL, intakeURL string
	// replicas is what the installed Deployment asks for (1 in config/default, 2 in
	// config/overlays/postgres).
	replicas int32
	// delivered are the deliveries of the events this install's checks published, in order.
	delivered []string
	// volumes are the hostPath directories of the install's claims, by claim name.
	volumes map[string]string

	// The history API's users (history.go), made once.
	users map[string]*apiUser
	// pg is the PostgreSQL server of the install that needs one.
	pg *postgres
}

type step struct {
	name string
	fn   func(context.Context) error
}

func (k *checks) run(ctx context.Context) {
	for i, in := range k.installs {
		k.cur, k.objs, k.receiverURL, k.intakeURL, k.replicas, k.delivered, k.volumes = in, nil, "", "", 0, nil, map[string]string{}
		steps := in.steps(k)
		if i < len(k.installs)-1 {
			steps = append(steps, step{"uninstall", k.uninstall})
		}
		t0 := time.Now()
		ok := k.t.Run(in.name, func(t *testing.T) {
			for _, s := range steps {
				if s.name == "uninstall" {
					k.show()
				}
				t1 := time.Now()
				ok := t.Run(s.name, func(t *testing.T) {
					if err := s.fn(ctx); err != nil {
						t.Fatal(err)
					}
				})
				k.logf("check %s/%q: %.1fs", in.name, s.name, time.Since(t1).Seconds())
				if !ok {
					t.FailNow()
				}
			}
			if i == len(k.installs)-1 {
				k.show()
			}
		})
		k.logf("install %s (%s): %.1fs", in.name, in.overlay, time.Since(t0).Seconds())
		if !ok {
			return
		}
	}
	k.kubectl("get", "nodes", "-o", "wide")
	k.kubectl("get", "pods", "-A", "-o", "wide")
}

// show logs what a user of the install sees with kubectl.
func (k *checks) show() {
	k.operatorErrors()
	k.kubectl("get", "deployments,services,leases,persistentvolumeclaims", "-n", installNS)
	k.kubectl("get", "pods", "-n", installNS, "-o", "wide")
	k.kubectl("get", "apiservice", historyAPIService)
	k.kubectl("get", "webhookendpoints,webhookdeliveries", "-n", demoNS)
	if u := k.users["jane"]; u != nil {
		k.kubectlAs(u, "get", "whdr", "-n", demoNS)
		if len(k.delivered) > 0 {
			k.kubectlAs(u, "get", "whdr", k.delivered[0], "-n", demoNS, "-o", "yaml")
		}
	}
	if u := k.users["bob"]; u != nil {
		k.kubectlAs(u, "get", "whdr", "-n", demoNS)
	}
}

// operatorErrors logs the error lines of the operator pods' logs (kubectl logs), for whoever
// reads the run: the checks decide, but an error a user would see is worth a look.
func (k *checks) operatorErrors() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := k.operatorPods(ctx)
	if err != nil {
		return
	}
	for _, p := range pods {
		out, err := k.cs.CoreV1().Pods(installNS).GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			continue
		}
		var errs []string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, `"level":"error"`) {
				errs = append(errs, l)
			}
		}
		n := len(errs)
		if n > 5 {
			errs = append(errs[:5], "...")
		}
		k.logf("kubectl logs %s: %d lines, %d at level error\n%s", p.Name, strings.Count(string(out), "\n"), n, strings.Join(errs, "\n"))
	}
}

// eventID names the n-th event the current install's checks publish.
func (k *checks) eventID(n int) string { return fmt.Sprintf("%s-event-%d", k.cur.name, n) }

func (k *checks) logf(format string, args ...any) { k.t.Logf(format, args...) }

// imageRef reads the image's name from a docker-save tarball's manifest.json.
func imageRef(tarball string) (string, error) {
	f, err := os.Open(tarball)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			return "", fmt.Errorf("%s has no manifest.json: %w", tarball, err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return "", err
		}
		if len(m) == 0 || len(m[0].RepoTags) == 0 {
			return "", fmt.Errorf("%s names no image", tarball)
		}
		return m[0].RepoTags[0], nil
	}
}

func (k *checks) install(ctx context.Context) error {
	objs, kust, err := render(k.cur.overlay, k.image)
	if err != nil {
		return err
	}
	k.objs = objs
	k.logf("installing %s (%d objects) with this kustomization on top:\n%s", k.cur.overlay, len(objs), kust)
	for _, o := range objs {
		if o.GetKind() == "Deployment" && o.GetName() == deployName {
			r, found, err := unstructured.NestedInt64(o.Object, "spec", "replicas")
			if err != nil {
				return err
			}
			k.replicas = 1
			if found {
				k.replicas = int32(r)
			}
		}
	}
	if k.replicas == 0 {
		return fmt.Errorf("the install has no Deployment %s/%s", installNS, deployName)
	}
	// What must exist before the operator starts (the database's Secret), in its namespace,
	// as the overlay's instructions say: kubectl create namespace, create secret, apply -k.
	if k.cur.before != nil {
		for _, o := range objs {
			if o.GetKind() == "Namespace" {
				if err := apply(ctx, k.c, []*unstructured.Unstructured{o.DeepCopy()}); err != nil {
					return err
				}
			}
		}
		if err := k.cur.before(k)(ctx); err != nil {
			return err
		}
	}
	if err := apply(ctx, k.c, objs); err != nil {
		return err
	}
	// The cluster has no storage provisioner: each claim of the install gets a volume of its
	// own, a directory under the cluster's, writable by the operator's user.
	for _, o := range objs {
		if o.GetKind() == "PersistentVolumeClaim" {
			if err := k.volumeFor(ctx, o); err != nil {
				return err
			}
		}
	}
	// Every APIService of the install becomes Available through its Service.
	for _, o := range objs {
		if o.GetKind() != "APIService" {
			continue
		}
		name := o.GetName()
		if err := waitFor(ctx, "APIService "+name+" Available", 3*time.Minute, func(ctx context.Context) (bool, error) {
			svc := &unstructured.Unstructured{}
			svc.SetAPIVersion("apiregistration.k8s.io/v1")
			svc.SetKind("APIService")
			if err := k.c.Get(ctx, types.NamespacedName{Name: name}, svc); err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(svc.Object, "status", "conditions")
			for _, c := range conds {
				if m, ok := c.(map[string]any); ok && m["type"] == "Available" {
					return m["status"] == "True", fmt.Errorf("%v: %v", m["reason"], m["message"])
				}
			}
			return false, nil
		}); err != nil {
			return err
		}
		k.logf("APIService %s is Available", name)
	}
	return nil
}

// volumeFor creates a hostPath PersistentVolume bound to the claim, in CLUSTER_DIR/volumes.
func (k *checks) volumeFor(ctx context.Context, claim *unstructured.Unstructured) error {
	var pvc corev1.PersistentVolumeClaim
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(claim.Object, &pvc); err != nil {
		return err
	}
	dir := k.n.path("volumes", pvc.Namespace+"-"+pvc.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chown(dir, 65532, 65532); err != nil {
		return err
	}
	size := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "test-cluster-" + pvc.Namespace + "-" + pvc.Name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              ptr.Deref(pvc.Spec.StorageClassName, ""),
			ClaimRef:                      &corev1.ObjectReference{Namespace: pvc.Namespace, Name: pvc.Name},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: ptr.To(corev1.HostPathDirectory)}},
		},
	}
	if err := k.c.Create(ctx, pv); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	k.volumes[pvc.Name] = dir
	k.logf("PersistentVolumeClaim %s/%s: bound to a hostPath volume in %s", pvc.Namespace, pvc.Name, dir)
	return nil
}

// restricted is the security context the restricted Pod Security level asks for.
func restricted() (*corev1.PodSecurityContext, *corev1.SecurityContext) {
	return &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
		&corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true), RunAsNonRoot: ptr.To(true),
			Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		}
}

// The install's namespace enforces the restricted level, and the API server's PodSecurity
// admission applies it: a pod that runs as root with privilege escalation is refused there,
// while the operator's pods are admitted.
func (k *checks) podSecurity(ctx context.Context) error {
	ns, err := k.cs.CoreV1().Namespaces().Get(ctx, installNS, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if lvl := ns.Labels["pod-security.kubernetes.io/enforce"]; lvl != "restricted" {
		return fmt.Errorf("namespace %s enforces Pod Security level %q, want restricted", installNS, lvl)
	}
	bad := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "not-restricted", Namespace: installNS},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: k.image, ImagePullPolicy: corev1.PullNever}}},
	}
	_, err = k.cs.CoreV1().Pods(installNS).Create(ctx, bad, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err == nil || !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `violates PodSecurity "restricted:latest"`) {
		return fmt.Errorf("a pod without the restricted security context was not refused by PodSecurity admission: %v", err)
	}
	k.logf("a pod without a security context is refused: %v", err)
	return k.waitDeployment(ctx, installNS, deployName, k.replicas, 3*time.Minute)
}

func (k *checks) waitDeployment(ctx context.Context, ns, name string, replicas int32, timeout time.Duration) error {
	t0 := time.Now()
	err := waitFor(ctx, fmt.Sprintf("Deployment %s/%s with %d ready replicas", ns, name, replicas), timeout, func(ctx context.Context) (bool, error) {
		d, err := k.cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if d.Status.ReadyReplicas == replicas && d.Status.UpdatedReplicas == replicas && d.Status.Replicas == replicas {
			return true, nil
		}
		return false, fmt.Errorf("%d of %d replicas ready; %s", d.Status.ReadyReplicas, replicas, k.podProblems(ctx, ns, d.Spec.Selector))
	}, k.n.procs["kubelet"])
	if err == nil {
		k.logf("Deployment %s/%s: %d replicas ready after %.1fs", ns, name, replicas, time.Since(t0).Seconds())
	}
	return err
}

// podProblems says why the selected pods are not ready, from their status and Events.
func (k *checks) podProblems(ctx context.Context, ns string, sel *metav1.LabelSelector) string {
	pods, err := k.cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(sel)})
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, p := range pods.Items {
		s := p.Name + " " + string(p.Status.Phase)
		for _, cs := range p.Status.ContainerStatuses {
			if w := cs.State.Waiting; w != nil {
				s += " waiting: " + w.Reason + " " + w.Message
			}
			if cs.RestartCount > 0 {
				s += fmt.Sprintf(" (%d restarts)", cs.RestartCount)
			}
		}
		evs, _ := k.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + p.Name})
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning {
				s += "; " + e.Reason + ": " + e.Message
			}
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		rss, _ := k.cs.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{LabelSelector: metav1.FormatLabelSelector(sel)})
		for _, rs := range rss.Items {
			for _, c := range rs.Status.Conditions {
				out = append(out, "ReplicaSet "+rs.Name+": "+c.Reason+": "+c.Message)
			}
		}
		return "no pods: " + strings.Join(out, "; ")
	}
	return strings.Join(out, "; ")
}

func (k *checks) operatorPods(ctx context.Context) ([]corev1.Pod, error) {
	pods, err := k.cs.CoreV1().Pods(installNS).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=controller-manager"})
	if err != nil {
		return nil, err
	}
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	return live, nil
}

// Both replicas run, are Ready (their /readyz probe passes) and have not restarted.
func (k *checks) replicasReady(ctx context.Context) error {
	pods, err := k.operatorPods(ctx)
	if err != nil {
		return err
	}
	if int32(len(pods)) != k.replicas {
		return fmt.Errorf("want %d operator pods, got %d", k.replicas, len(pods))
	}
	for _, p := range pods {
		ready := false
		for _, c := range p.Status.Conditions {
			ready = ready || (c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue)
		}
		if p.Status.Phase != corev1.PodRunning || !ready {
			return fmt.Errorf("pod %s is %s, Ready=%v", p.Name, p.Status.Phase, ready)
		}
		for _, c := range p.Status.ContainerStatuses {
			if c.RestartCount != 0 {
				return fmt.Errorf("pod %s: container %s restarted %d times", p.Name, c.Name, c.RestartCount)
			}
			if c.Image != "docker.io/"+k.image && c.Image != k.image {
				return fmt.Errorf("pod %s runs image %s, want %s", p.Name, c.Image, k.image)
			}
		}
		k.logf("pod %s on %s: Running, Ready, IP %s", p.Name, p.Spec.NodeName, p.Status.PodIP)
	}
	return nil
}

// containerPid finds the host pid of a pod's container from containerd's tasks.
func (k *checks) containerPid(p corev1.Pod) (int, error) {
	if len(p.Status.ContainerStatuses) == 0 {
		return 0, fmt.Errorf("pod %s has no container status", p.Name)
	}
	id := strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	out, err := run("ctr", "--address", k.n.containerdSock, "-n", "k8s.io", "tasks", "ls")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
			var pid int
			_, err := fmt.Sscan(f[1], &pid)
			return pid, err
		}
	}
	return 0, fmt.Errorf("containerd runs no task for container %s of pod %s", id, p.Name)
}

// What the kernel enforces on the operator's process: its root file system is mounted
// read-only (a write into it fails with EROFS), and it runs as 65532 with no capability, no
// new privileges and the runtime's seccomp filter.
func (k *checks) readOnlyRoot(ctx context.Context) error {
	pods, err := k.operatorPods(ctx)
	if err != nil {
		return err
	}
	for _, p := range pods {
		pid, err := k.containerPid(p)
		if err != nil {
			return err
		}
		probe := fmt.Sprintf("/proc/%d/root/written-by-test-cluster", pid)
		if err := os.WriteFile(probe, []byte("x"), 0o644); err == nil {
			_ = os.Remove(probe)
			return fmt.Errorf("pod %s: a file could be written to the container's root file system", p.Name)
		} else if !errors.Is(err, syscall.EROFS) {
			return fmt.Errorf("pod %s: writing to the root file system failed, but not as read-only: %w", p.Name, err)
		}
		mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		if err != nil {
			return err
		}
		rootOpts := ""
		for _, l := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(l); len(f) > 5 && f[4] == "/" {
				rootOpts = f[5]
			}
		}
		if !slices.Contains(strings.Split(rootOpts, ","), "ro") {
			return fmt.Errorf("pod %s: the container's / is mounted %q, not read-only", p.Name, rootOpts)
		}
		st, err := procStatus(pid)
		if err != nil {
			return err
		}
		for field, want := range map[string]string{"Uid": "65532", "Gid": "65532", "CapEff": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2"} {
			if got := strings.Fields(st[field]); len(got) == 0 || got[0] != want {
				return fmt.Errorf("pod %s: the operator's process has %s %q, want %s", p.Name, field, st[field], want)
			}
		}
		// The CA bundle that HTTPS deliveries verify receivers with, as the container sees it.
		bundle, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/ssl/certs/ca-certificates.crt", pid))
		if err != nil {
			return fmt.Errorf("pod %s: the container has no CA bundle: %w", p.Name, err)
		}
		cas := x509.NewCertPool()
		if !cas.AppendCertsFromPEM(bundle) || strings.Count(string(bundle), "BEGIN CERTIFICATE") < 50 {
			return fmt.Errorf("pod %s: /etc/ssl/certs/ca-certificates.crt holds no public CAs", p.Name)
		}
		k.logf("pod %s: / mounted %s (a write fails: %v); uid 65532, CapEff 0, NoNewPrivs 1, Seccomp 2 (filter); %d CAs in /etc/ssl/certs/ca-certificates.crt",
			p.Name, rootOpts, syscall.EROFS, strings.Count(string(bundle), "BEGIN CERTIFICATE"))
	}
	return nil
}

func procStatus(pid int) (map[string]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out, nil
}

// ensureNamespace creates a namespace that enforces the restricted level and waits for its
// default ServiceAccount (pods created before it exists are refused).
func (k *checks) ensureNamespace(ctx context.Context, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"pod-security.kubernetes.io/enforce": "restricted"}}}
	if _, err := k.cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return waitFor(ctx, "the default ServiceAccount of "+name, time.Minute, func(ctx context.Context) (bool, error) {
		_, err := k.cs.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
}

// podSpec runs the operator's image with args (a subcommand), restricted.
func (k *checks) podSpec(sa string, args []string, volumes []corev1.Volume, mounts []corev1.VolumeMount) corev1.PodSpec {
	psc, sc := restricted()
	return corev1.PodSpec{
		ServiceAccountName:           sa,
		AutomountServiceAccountToken: ptr.To(false),
		SecurityContext:              psc,
		Volumes:                      volumes,
		Containers: []corev1.Container{{
			Name: "main", Image: k.image, ImagePullPolicy: corev1.PullNever, Args: args,
			SecurityContext: sc, VolumeMounts: mounts,
		}},
	}
}

func (k *checks) serviceURL(ctx context.Context, ns, name, path string) (string, error) {
	svc, err := k.cs.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if len(svc.Spec.Ports) == 0 {
		return "", fmt.Errorf("the Service %s/%s has no port", ns, name)
	}
	return fmt.Sprintf("http://%s:%d%s", svc.Spec.ClusterIP, svc.Spec.Ports[0].Port, path), nil
}

// A receiver in the cluster (the image's `receiver`, verifying signatures) behind a Service,
// an endpoint pointing at that Service, and a publisher Pod whose projected ServiceAccount
// token the intake reviews (TokenReview, SubjectAccessReview) before it creates the delivery:
// the delivery succeeds and the receiver logs the event with a verified signature.
func (k *checks) delivery(ctx context.Context) error {
	if err := k.ensureNamespace(ctx, demoNS); err != nil {
		return err
	}
	objs := []client.Object{
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "receiver", Namespace: demoNS}, StringData: map[string]string{"signing-secret": signingKey}},
		&appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Name: "receiver", Namespace: demoNS},
			Spec: appsv1.DeploymentSpec{
				Replicas: ptr.To(int32(1)),
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "receiver"}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "receiver"}},
					Spec: func() corev1.PodSpec {
						s := k.podSpec("default", []string{"receiver", "--listen", "0.0.0.0:9000", "--secret-file", "/etc/receiver/signing-secret"},
							[]corev1.Volume{{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "receiver"}}}},
							[]corev1.VolumeMount{{Name: "secret", MountPath: "/etc/receiver", ReadOnly: true}})
						s.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 9000}}
						s.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(9000)}}, PeriodSeconds: 1}
						return s
					}(),
				},
			},
		},
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: "receiver", Namespace: demoNS},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "receiver"}, Ports: []corev1.ServicePort{{Port: 9000, TargetPort: intstr.FromInt32(9000)}}},
		},
		// The publisher of docs/publishing.md: create webhookevents in its namespace.
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "pipeline", Namespace: demoNS}},
		&rbacv1.Role{
			ObjectMeta: metav1.ObjectMeta{Name: "publish-events", Namespace: demoNS},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"webhooks.docrouter.ai"}, Resources: []string{"webhookevents"}, Verbs: []string{"create"}}},
		},
		&rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "pipeline-publish-events", Namespace: demoNS},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "publish-events"},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "pipeline", Namespace: demoNS}},
		},
	}
	for _, o := range objs {
		if err := k.c.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating %T %s: %w", o, o.GetName(), err)
		}
	}
	if err := k.waitDeployment(ctx, demoNS, "receiver", 1, 2*time.Minute); err != nil {
		return err
	}
	var err error
	if k.receiverURL, err = k.serviceURL(ctx, demoNS, "receiver", "/hooks/cluster"); err != nil {
		return err
	}
	if k.intakeURL, err = k.serviceURL(ctx, installNS, "webhook-operator-intake", ""); err != nil {
		return err
	}
	ep := &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{Name: "in-cluster", Namespace: demoNS},
		Spec: webhooksv1alpha1.WebhookEndpointSpec{
			URL: k.receiverURL, AllowInsecureHTTP: true, EventTypes: []string{"*"},
			SigningSecretRef: &webhooksv1alpha1.SecretKeyRef{Name: "receiver", Key: "signing-secret"},
		},
	}
	if err := k.c.Create(ctx, ep); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	k.logf("receiver Service %s, intake Service %s", k.receiverURL, k.intakeURL)
	return k.publishAndReceive(ctx, k.eventID(1))
}

// publishAndReceive runs a publisher Pod for one event and waits for its delivery.
func (k *checks) publishAndReceive(ctx context.Context, eventID string) error {
	t0 := time.Now()
	name := "publish-" + eventID
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: demoNS},
		Spec: func() corev1.PodSpec {
			s := k.podSpec("pipeline", []string{"publish", "--intake", k.intakeURL, "-n", demoNS, "--token-file", "/var/run/secrets/docrouter/token",
				"--type", "document.uploaded", "--event-id", eventID, "--document-id", "doc-" + eventID, "--document-name", "invoice.pdf"},
				[]corev1.Volume{{Name: "token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
					ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To(int64(600))},
				}}}}}},
				[]corev1.VolumeMount{{Name: "token", MountPath: "/var/run/secrets/docrouter", ReadOnly: true}})
			s.RestartPolicy = corev1.RestartPolicyNever
			return s
		}(),
	}
	if _, err := k.cs.CoreV1().Pods(demoNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return err
	}
	var phase corev1.PodPhase
	if err := waitFor(ctx, "publisher pod "+name+" finished", 2*time.Minute, func(ctx context.Context) (bool, error) {
		p, err := k.cs.CoreV1().Pods(demoNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		phase = p.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, fmt.Errorf("phase %s; %s", phase, k.podProblems(ctx, demoNS, &metav1.LabelSelector{}))
	}); err != nil {
		return err
	}
	out, err := k.cs.CoreV1().Pods(demoNS).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		return fmt.Errorf("reading the publisher's log (kubectl logs, through the kubelet): %w", err)
	}
	if phase != corev1.PodSucceeded {
		return fmt.Errorf("the publisher pod failed: %s", out)
	}
	var acc struct {
		EventID    string `json:"event_id"`
		Deliveries []struct {
			Name    string `json:"name"`
			Created bool   `json:"created"`
		} `json:"deliveries"`
	}
	if err := json.Unmarshal(out, &acc); err != nil || len(acc.Deliveries) != 1 || !acc.Deliveries[0].Created || acc.EventID != eventID {
		return fmt.Errorf("the intake's answer to the publisher is not one created delivery for %s: %s (%v)", eventID, out, err)
	}
	k.logf("publisher pod %s: the intake answered %s", name, strings.Join(strings.Fields(string(out)), " "))

	var d webhooksv1alpha1.WebhookDelivery
	if err := waitFor(ctx, "delivery "+acc.Deliveries[0].Name+" Succeeded", time.Minute, func(ctx context.Context) (bool, error) {
		if err := k.c.Get(ctx, types.NamespacedName{Namespace: demoNS, Name: acc.Deliveries[0].Name}, &d); err != nil {
			return false, err
		}
		if d.Status.Phase == webhooksv1alpha1.PhaseFailed {
			return false, fmt.Errorf("the delivery failed: %s", d.Status.LastError)
		}
		return d.Status.Phase == webhooksv1alpha1.PhaseSucceeded, fmt.Errorf("phase %q, attempts %d, last error %q", d.Status.Phase, d.Status.Attempts, d.Status.LastError)
	}); err != nil {
		return err
	}
	line, err := k.receiverLine(ctx, eventID)
	if err != nil {
		return err
	}
	k.delivered = append(k.delivered, d.Name)
	k.logf("delivered %s in %.1fs (publisher pod created to delivery Succeeded, HTTP %d); the receiver logged: %s",
		d.Name, time.Since(t0).Seconds(), d.Status.LastStatusCode, line)
	return nil
}

// receiverLine returns the receiver's log line for the event, which must say its signature
// was verified.
func (k *checks) receiverLine(ctx context.Context, eventID string) (string, error) {
	var line string
	err := waitFor(ctx, "the receiver logging "+eventID, 30*time.Second, func(ctx context.Context) (bool, error) {
		pods, err := k.cs.CoreV1().Pods(demoNS).List(ctx, metav1.ListOptions{LabelSelector: "app=receiver"})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			out, err := k.cs.CoreV1().Pods(demoNS).GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
			if err != nil {
				return false, err
			}
			sc := bufio.NewScanner(strings.NewReader(string(out)))
			for sc.Scan() {
				if strings.Contains(sc.Text(), "event="+eventID+" ") {
					line = sc.Text()
					return true, nil
				}
			}
		}
		return false, nil
	})
	if err != nil {
		return "", err
	}
	if !strings.Contains(line, " 200 ") || !strings.Contains(line, "verified=signature") {
		return "", fmt.Errorf("the receiver did not accept %s with a verified signature: %s", eventID, line)
	}
	return line, nil
}

func (k *checks) lease(ctx context.Context) (*coordinationv1.Lease, error) {
	return k.cs.CoordinationV1().Leases(installNS).Get(ctx, leaseName, metav1.GetOptions{})
}

// holderPod is the pod name in a Lease holder identity (POD_UUID).
func holderPod(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	name, _, _ := strings.Cut(*l.Spec.HolderIdentity, "_")
	return name
}

// Deleting the leader's Pod: another replica holds the Lease within the Lease duration, a new
// event is delivered, and the Deployment is back to two Ready pods. An install of one replica
// has no other replica to hand over to.
func (k *checks) handover(ctx context.Context) error {
	if k.replicas < 2 {
		k.logf("the install runs %d replica: no handover to check", k.replicas)
		return nil
	}
	l, err := k.lease(ctx)
	if err != nil {
		return err
	}
	leader := holderPod(l)
	pods, err := k.operatorPods(ctx)
	if err != nil {
		return err
	}
	if leader == "" || !slices.ContainsFunc(pods, func(p corev1.Pod) bool { return p.Name == leader }) {
		return fmt.Errorf("want a leader among two pods; the Lease is held by %q", leader)
	}
	duration := time.Duration(ptr.Deref(l.Spec.LeaseDurationSeconds, 15)) * time.Second
	k.logf("leader %s (Lease duration %s); deleting its pod", leader, duration)
	t0 := time.Now()
	if err := k.cs.CoreV1().Pods(installNS).Delete(ctx, leader, metav1.DeleteOptions{}); err != nil {
		return err
	}
	var holder string
	if err := waitFor(ctx, "another replica taking the Lease", duration+10*time.Second, func(ctx context.Context) (bool, error) {
		l, err := k.lease(ctx)
		if err != nil {
			return false, err
		}
		holder = holderPod(l)
		return holder != "" && holder != leader, nil
	}); err != nil {
		return err
	}
	took := time.Since(t0)
	k.logf("the Lease moved from %s to %s %.1fs after the leader's pod was deleted", leader, holder, took.Seconds())
	if took > duration {
		return fmt.Errorf("the handover took %.1fs, more than the Lease duration %s", took.Seconds(), duration)
	}
	if err := k.publishAndReceive(ctx, k.eventID(2)); err != nil {
		return fmt.Errorf("after the handover: %w", err)
	}
	return k.waitDeployment(ctx, installNS, deployName, k.replicas, 2*time.Minute)
}

// Metrics through the metrics Service (HTTPS 8443, the operator's self-signed certificate, as
// docs/operations.md scrapes them): 401 without a token, 403 with the token of a
// ServiceAccount not bound to the metrics-reader role, and the operator's series with one that is.
func (k *checks) metrics(ctx context.Context) error {
	for _, sa := range []string{"scraper", "stranger"} {
		if _, err := k.cs.CoreV1().ServiceAccounts(demoNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "test-cluster-scraper"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "webhook-operator-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "scraper", Namespace: demoNS}},
	}
	if err := k.c.Create(ctx, crb); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	token := func(sa string) (string, error) {
		tr, err := k.cs.CoreV1().ServiceAccounts(demoNS).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(600))}}, metav1.CreateOptions{})
		if err != nil {
			return "", err
		}
		return tr.Status.Token, nil
	}
	scraper, err := token("scraper")
	if err != nil {
		return err
	}
	stranger, err := token("stranger")
	if err != nil {
		return err
	}
	svc, err := k.cs.CoreV1().Services(installNS).Get(ctx, "webhook-operator-controller-manager-metrics-service", metav1.GetOptions{})
	if err != nil {
		return err
	}
	url := fmt.Sprintf("https://%s:8443/metrics", svc.Spec.ClusterIP)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the operator's self-signed metrics certificate
		DisableKeepAlives: true,                                  // each scrape a new connection, balanced anew by the Service
	}}
	scrape := func(tok string) (int, string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		return resp.StatusCode, string(b), err
	}
	for _, c := range []struct {
		who, tok string
		want     int
	}{{"no token", "", http.StatusUnauthorized}, {"the token of demo/stranger (not bound)", stranger, http.StatusForbidden}} {
		code, _, err := scrape(c.tok)
		if err != nil {
			return err
		}
		if code != c.want {
			return fmt.Errorf("scraping %s with %s answered %d, want %d", url, c.who, code, c.want)
		}
		k.logf("scraping %s with %s: %d", url, c.who, code)
	}
	// The Service spreads connections over both replicas: scrape until the series every
	// replica has, the intake's (on the replica that took the last publish) and the
	// deliveries' (on the leader, which delivered the event published after the handover)
	// were all seen.
	want := map[string]bool{
		`docrouter_webhook_attempts_in_flight `:                                             false,
		`docrouter_webhook_attempts_total{class="2xx",namespace="demo"} `:                   false,
		`docrouter_webhook_deliveries_finished_total{namespace="demo",result="succeeded"} `: false,
		`docrouter_webhook_events_published_total{type="document.uploaded"} `:               false,
	}
	var seen []string
	err = waitFor(ctx, "the operator's series in the scrapes", 30*time.Second, func(ctx context.Context) (bool, error) {
		code, body, err := scrape(scraper)
		if err != nil {
			return false, err
		}
		if code != http.StatusOK {
			return false, fmt.Errorf("scraping with demo/scraper's token (bound to webhook-operator-metrics-reader) answered %d: %s", code, body)
		}
		missing := 0
		for _, l := range strings.Split(body, "\n") {
			for s := range want {
				if strings.HasPrefix(l, s) && !want[s] {
					want[s] = true
					seen = append(seen, l)
				}
			}
		}
		for _, ok := range want {
			if !ok {
				missing++
			}
		}
		return missing == 0, fmt.Errorf("%d series not seen yet: %v", missing, want)
	})
	if err != nil {
		return err
	}
	k.logf("scraping with demo/scraper's token: 200, with\n%s", strings.Join(seen, "\n"))
	return nil
}

// A pod has no route beyond the cluster's networks: publishing to the machine's uplink gateway
// fails at once with "network is unreachable" (no packet is sent), as any other address
// outside the bridge and the service range would.
func (k *checks) isolation(ctx context.Context) error {
	gw := ""
	for _, r := range readRoutes() {
		if f := strings.Fields(r); len(f) >= 4 && f[0] == "-4" && f[1] == "default" && f[2] == "via" {
			gw = f[3]
		}
	}
	if gw == "" {
		k.logf("this machine has no IPv4 default route: nothing to check")
		return nil
	}
	name := "reach-the-uplink"
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: demoNS},
		Spec: func() corev1.PodSpec {
			s := k.podSpec("default", []string{"publish", "--intake", "http://" + gw + ":80", "-n", demoNS, "--type", "webhook.test", "--timeout", "10s"}, nil, nil)
			s.RestartPolicy = corev1.RestartPolicyNever
			return s
		}(),
	}
	if _, err := k.cs.CoreV1().Pods(demoNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return err
	}
	var phase corev1.PodPhase
	if err := waitFor(ctx, "pod "+name+" finished", time.Minute, func(ctx context.Context) (bool, error) {
		p, err := k.cs.CoreV1().Pods(demoNS).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		phase = p.Status.Phase
		return phase == corev1.PodSucceeded || phase == corev1.PodFailed, nil
	}); err != nil {
		return err
	}
	out, err := k.cs.CoreV1().Pods(demoNS).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		return err
	}
	if phase != corev1.PodFailed || !strings.Contains(string(out), "network is unreachable") {
		return fmt.Errorf("a pod connecting to the uplink gateway %s did not fail with \"network is unreachable\" (%s): %s", gw, phase, out)
	}
	k.logf("a pod connecting to the machine's uplink gateway %s: %s", gw, strings.TrimSpace(string(out)))
	return nil
}
