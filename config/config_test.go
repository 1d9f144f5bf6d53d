// Package config holds the kustomize manifests. Its test renders config/default as
// `kubectl apply -k config/default` would, and checks that the result is a complete, working
// install: every kind present, every permission the controllers use granted to the
// ServiceAccount that runs them, every flag the Deployment passes known to the binary, the
// restricted security context, and alerts and dashboards that use real series.
package config

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/historyapi"
	"github.com/docrouter/webhook-operator/internal/metrics"
)

const installNamespace = "docrouter-system"

// object is one rendered manifest.
type object struct {
	Kind     string
	Name     string
	NS       string
	YAML     []byte
	Manifest map[string]any
}

// render builds a kustomization directory with the kustomize library.
func render(t *testing.T, dir string) []object {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var objs []object
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		var man map[string]any
		if err := yaml.Unmarshal(y, &man); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, object{Kind: r.GetKind(), Name: r.GetName(), NS: r.GetNamespace(), YAML: y, Manifest: man})
	}
	return objs
}

func decodeInto[T any](t *testing.T, o object) *T {
	t.Helper()
	v := new(T)
	if err := yaml.UnmarshalStrict(o.YAML, v); err != nil {
		t.Fatalf("%s %s: %v", o.Kind, o.Name, err)
	}
	return v
}

func ofKind(objs []object, kind string) []object {
	var out []object
	for _, o := range objs {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

func theDeployment(t *testing.T, objs []object) *appsv1.Deployment {
	t.Helper()
	deps := ofKind(objs, "Deployment")
	if len(deps) != 1 {
		t.Fatalf("want one Deployment, got %d", len(deps))
	}
	return decodeInto[appsv1.Deployment](t, deps[0])
}

func TestDefaultIsACompleteInstall(t *testing.T) {
	objs := render(t, "default")
	want := map[string]int{
		"Namespace": 1, "CustomResourceDefinition": 2, "ServiceAccount": 1, "ClusterRole": 1,
		"ClusterRoleBinding": 1, "Role": 1, "RoleBinding": 1, "Deployment": 1, "Service": 3,
		"APIService": 1,
	}
	for kind, n := range want {
		if got := len(ofKind(objs, kind)); got < n {
			t.Errorf("kind %s: want at least %d, got %d", kind, n, got)
		}
	}
	for _, o := range objs {
		switch o.Kind {
		case "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "APIService":
			if o.NS != "" {
				t.Errorf("%s %s is cluster-scoped but has namespace %q", o.Kind, o.Name, o.NS)
			}
		case "RoleBinding":
			// The binding to extension-apiserver-authentication-reader must be where that Role is.
			want := installNamespace
			if b := decodeInto[rbacv1.RoleBinding](t, o); b.RoleRef.Name == "extension-apiserver-authentication-reader" {
				want = "kube-system"
			}
			if o.NS != want {
				t.Errorf("%s %s is in namespace %q, want %q", o.Kind, o.Name, o.NS, want)
			}
		default:
			if o.NS != installNamespace {
				t.Errorf("%s %s is in namespace %q, want %q", o.Kind, o.Name, o.NS, installNamespace)
			}
		}
	}
	if ns := ofKind(objs, "Namespace"); len(ns) != 1 || ns[0].Name != installNamespace {
		t.Errorf("the install's Namespace is not %s: %v", installNamespace, ns)
	}
	crds := map[string]bool{}
	for _, o := range ofKind(objs, "CustomResourceDefinition") {
		crds[o.Name] = true
	}
	for _, name := range []string{"webhookendpoints.webhooks.docrouter.ai", "webhookdeliveries.webhooks.docrouter.ai"} {
		if !crds[name] {
			t.Errorf("CRD %s missing", name)
		}
	}

	// One replica with the embedded SQLite store on a volume that follows it.
	d := theDeployment(t, objs)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 {
		t.Errorf("replicas: want 1 (a SQLite file has one writer), got %v", d.Spec.Replicas)
	}
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		t.Errorf("strategy %q: an update must stop the Pod that holds the SQLite volume first (Recreate)", d.Spec.Strategy.Type)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if !slices.Contains(c.Args, "--history-database=sqlite:///var/lib/webhook-operator/history.db") {
		t.Errorf("the default install keeps history in SQLite: args %v", c.Args)
	}
	pvcs := ofKind(objs, "PersistentVolumeClaim")
	if len(pvcs) != 1 {
		t.Fatalf("want the history volume's PersistentVolumeClaim, got %d", len(pvcs))
	}
	mounted := false
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == pvcs[0].Name {
			for _, m := range c.VolumeMounts {
				mounted = mounted || (m.Name == v.Name && m.MountPath == "/var/lib/webhook-operator")
			}
		}
	}
	if !mounted {
		t.Errorf("the claim %s is not mounted at /var/lib/webhook-operator", pvcs[0].Name)
	}
	if fs := d.Spec.Template.Spec.SecurityContext.FSGroup; fs == nil || *fs != 65532 {
		t.Errorf("fsGroup %v: the non-root user could not write the history volume", fs)
	}
}

// The PostgreSQL overlay runs two replicas with leader election, the store's URL from a Secret
// (through the environment, never in the manifest), and no SQLite volume.
func TestPostgresOverlayRunsTwoReplicasWithTheURLFromASecret(t *testing.T) {
	objs := render(t, "overlays/postgres")
	d := theDeployment(t, objs)
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas: want 2, got %v", d.Spec.Replicas)
	}
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
		t.Errorf("strategy %q: two replicas update one at a time", d.Spec.Strategy.Type)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if !slices.Contains(c.Args, "--leader-elect") {
		t.Errorf("two replicas need --leader-elect: args %v", c.Args)
	}
	var fromSecret bool
	for _, e := range c.Env {
		if e.Name == "WEBHOOK_OPERATOR_HISTORY_DATABASE" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			fromSecret = e.ValueFrom.SecretKeyRef.Name == "webhook-operator-history-database" && e.ValueFrom.SecretKeyRef.Key == "url"
		}
	}
	if !fromSecret {
		t.Errorf("the database URL must come from Secret webhook-operator-history-database, key url: env %v", c.Env)
	}
	if n := len(ofKind(objs, "PersistentVolumeClaim")); n != 0 || len(d.Spec.Template.Spec.Volumes) != 0 || len(c.VolumeMounts) != 0 {
		t.Errorf("no SQLite volume with PostgreSQL: %d claims, volumes %v, mounts %v", n, d.Spec.Template.Spec.Volumes, c.VolumeMounts)
	}
}

// A rule as a set of (group, resource, verb) grants, or (URL, verb) for non-resource rules.
type grant struct{ group, resource, verb string }

func grants(rules []rbacv1.PolicyRule) map[grant]bool {
	out := map[grant]bool{}
	for _, r := range rules {
		for _, v := range r.Verbs {
			for _, u := range r.NonResourceURLs {
				out[grant{"", "url:" + u, v}] = true
			}
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					out[grant{g, res, v}] = true
				}
			}
		}
	}
	return out
}

func covers(have map[grant]bool, g grant) bool {
	for _, cand := range []grant{g, {g.group, g.resource, "*"}, {g.group, "*", g.verb}, {"*", "*", "*"}} {
		if have[cand] {
			return true
		}
	}
	return false
}

// Every permission that the controllers' RBAC markers ask for (config/rbac/role.yaml, which
// controller-gen generates) is bound to the ServiceAccount that runs the Deployment, and so are
// leader election and the metrics endpoint's authentication.
func TestServiceAccountHoldsEveryPermissionTheControllersUse(t *testing.T) {
	objs := render(t, "default")
	d := theDeployment(t, objs)
	sa := d.Spec.Template.Spec.ServiceAccountName
	if sa == "" || sa == "default" {
		t.Fatalf("the Deployment runs as ServiceAccount %q; want its own", sa)
	}
	found := false
	for _, o := range ofKind(objs, "ServiceAccount") {
		found = found || (o.Name == sa && o.NS == d.Namespace)
	}
	if !found {
		t.Fatalf("ServiceAccount %s/%s is not part of the install", d.Namespace, sa)
	}
	isSubject := func(subjects []rbacv1.Subject) bool {
		for _, s := range subjects {
			if s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == d.Namespace {
				return true
			}
		}
		return false
	}
	clusterRoles := map[string][]rbacv1.PolicyRule{}
	for _, o := range ofKind(objs, "ClusterRole") {
		clusterRoles[o.Name] = decodeInto[rbacv1.ClusterRole](t, o).Rules
	}
	roles := map[string][]rbacv1.PolicyRule{}
	for _, o := range ofKind(objs, "Role") {
		roles[o.Name] = decodeInto[rbacv1.Role](t, o).Rules
	}
	cluster := map[grant]bool{}
	for _, o := range ofKind(objs, "ClusterRoleBinding") {
		b := decodeInto[rbacv1.ClusterRoleBinding](t, o)
		if isSubject(b.Subjects) {
			rules, ok := clusterRoles[b.RoleRef.Name]
			// system: roles are the API server's own (system:auth-delegator).
			if !ok && !strings.HasPrefix(b.RoleRef.Name, "system:") {
				t.Errorf("ClusterRoleBinding %s refers to ClusterRole %s, which the install lacks", b.Name, b.RoleRef.Name)
			}
			for g := range grants(rules) {
				cluster[g] = true
			}
		}
	}
	inNamespace := map[grant]bool{}
	for _, o := range ofKind(objs, "RoleBinding") {
		b := decodeInto[rbacv1.RoleBinding](t, o)
		if isSubject(b.Subjects) && b.Namespace == d.Namespace {
			rules, ok := roles[b.RoleRef.Name]
			if b.RoleRef.Kind == "ClusterRole" {
				rules, ok = clusterRoles[b.RoleRef.Name]
			}
			if !ok {
				t.Errorf("RoleBinding %s refers to %s %s, which the install lacks", b.Name, b.RoleRef.Kind, b.RoleRef.Name)
			}
			for g := range grants(rules) {
				inNamespace[g] = true
			}
		}
	}

	generated, err := os.ReadFile(filepath.Join("rbac", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	if err := yaml.Unmarshal(generated, &role); err != nil {
		t.Fatal(err)
	}
	needed := grants(role.Rules)
	if len(needed) < 10 {
		t.Fatalf("config/rbac/role.yaml grants only %d permissions: is it generated?", len(needed))
	}
	for g := range needed {
		if !covers(cluster, g) {
			t.Errorf("the controllers need %s %s/%s cluster-wide, but ServiceAccount %s is not granted it", g.verb, g.group, g.resource, sa)
		}
	}
	for _, g := range []grant{
		{"authentication.k8s.io", "tokenreviews", "create"}, {"authorization.k8s.io", "subjectaccessreviews", "create"},
	} {
		if !covers(cluster, g) {
			t.Errorf("the metrics endpoint needs %s %s/%s", g.verb, g.group, g.resource)
		}
	}
	for _, verb := range []string{"get", "create", "update"} {
		if g := (grant{"coordination.k8s.io", "leases", verb}); !covers(inNamespace, g) && !covers(cluster, g) {
			t.Errorf("leader election needs %s leases in %s", verb, d.Namespace)
		}
	}
	if covers(cluster, grant{"", "secrets", "list"}) || covers(cluster, grant{"", "secrets", "watch"}) {
		t.Errorf("the operator must not list or watch every Secret of the cluster")
	}
	// A scraper gets /metrics through the metrics-reader role.
	if !covers(grants(clusterRoles["webhook-operator-metrics-reader"]), grant{"", "url:/metrics", "get"}) {
		t.Errorf("ClusterRole webhook-operator-metrics-reader must grant get /metrics")
	}
}

// buildFlags reads the `go build` line of the Dockerfile: the environment and the flags
// before -o, so that the test builds the binary exactly as the image does.
func buildFlags(t *testing.T) (env, flags []string) {
	t.Helper()
	df, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(df), "\n") {
		cmd, ok := strings.CutPrefix(line, "RUN ")
		if !ok || !strings.Contains(cmd, " go build ") {
			continue
		}
		before, after, _ := strings.Cut(cmd, " go build ")
		for _, kv := range strings.Fields(before) {
			if !strings.Contains(kv, "${") { // GOOS/GOARCH come from the build platform
				env = append(env, kv)
			}
		}
		after, _, _ = strings.Cut(after, " -o ")
		// Split on spaces outside double quotes.
		var cur strings.Builder
		quoted := false
		for _, r := range after + " " {
			switch {
			case r == '"':
				quoted = !quoted
			case r == ' ' && !quoted:
				if cur.Len() > 0 {
					flags = append(flags, cur.String())
					cur.Reset()
				}
			default:
				cur.WriteRune(r)
			}
		}
		return env, flags
	}
	t.Fatal("the Dockerfile has no `RUN ... go build` line")
	return nil, nil
}

// The binary, built as the Dockerfile builds it, is static (it runs on distroless/static), and
// knows every flag the Deployment passes to it.
func TestImageBinaryIsStaticAndKnowsTheDeploymentFlags(t *testing.T) {
	env, flags := buildFlags(t)
	for _, want := range []string{"CGO_ENABLED=0"} {
		if !slices.Contains(env, want) {
			t.Errorf("the Dockerfile builds without %s", want)
		}
	}
	for _, want := range []string{"-trimpath", "-ldflags", "-s -w"} {
		if !slices.Contains(flags, want) {
			t.Errorf("the Dockerfile builds without %s: %v", want, flags)
		}
	}
	bin := filepath.Join(t.TempDir(), "webhook-operator")
	cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", bin, ".")...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", flags, err, out)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the binary has a dynamic loader (PT_INTERP): it is not static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary links shared libraries %v", libs)
	}
	if f.Section(".symtab") != nil {
		t.Errorf("the binary keeps its symbol table: -ldflags \"-s -w\" was not applied")
	}

	// `manager -h` lists the flags; flag prints usage on stderr and exits 0.
	out, _ := exec.Command(bin, "manager", "-h").CombinedOutput()
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		known[m[1]] = true
	}
	if len(known) < 10 || !known["leader-elect"] {
		t.Fatalf("could not read the flags from `manager -h`:\n%s", out)
	}

	d := theDeployment(t, render(t, "default"))
	args := d.Spec.Template.Spec.Containers[0].Args
	if len(args) == 0 || args[0] != "manager" {
		t.Fatalf("the Deployment's first argument must be the manager subcommand: %v", args)
	}
	for _, a := range args[1:] {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || !known[name] {
			t.Errorf("the Deployment passes %q, which `webhook-operator manager` does not know", a)
		}
	}
	for _, want := range []string{"--leader-elect", "--metrics-bind-address=:8443", "--health-probe-bind-address=:8081", "--intake-bind-address=0.0.0.0:8090", "--history-api-bind-address=:8444"} {
		if !slices.Contains(args, want) {
			t.Errorf("the Deployment does not pass %s: %v", want, args)
		}
	}
}

func TestDeploymentRunsRestrictedWithProbesAndResources(t *testing.T) {
	objs := render(t, "default")
	d := theDeployment(t, objs)
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("want one container, got %d", len(pod.Containers))
	}
	c := pod.Containers[0]
	psc, sc := pod.SecurityContext, c.SecurityContext
	if psc == nil || sc == nil {
		t.Fatal("the pod and the container need a security context")
	}
	check := func(ok bool, what string) {
		if !ok {
			t.Errorf("security context: %s", what)
		}
	}
	check(psc.RunAsNonRoot != nil && *psc.RunAsNonRoot, "pod runAsNonRoot")
	check(sc.RunAsNonRoot != nil && *sc.RunAsNonRoot, "container runAsNonRoot")
	check(psc.RunAsUser != nil && *psc.RunAsUser == 65532, "runAsUser 65532 (distroless nonroot)")
	check(sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem, "readOnlyRootFilesystem")
	check(sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation, "allowPrivilegeEscalation false")
	check(sc.Capabilities != nil && slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) && len(sc.Capabilities.Add) == 0, "drop ALL capabilities, add none")
	check(psc.SeccompProfile != nil && psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault, "pod seccomp RuntimeDefault")
	check(sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault, "container seccomp RuntimeDefault")

	probe := func(p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.IntValue() != 8081 {
			t.Errorf("want an HTTP probe of %s on :8081, got %+v", path, p)
		}
	}
	probe(c.LivenessProbe, "/healthz")
	probe(c.ReadinessProbe, "/readyz")
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
		if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
			t.Errorf("no memory limit")
		}
	}

	// Both Services select the Deployment's pods and reach a port the container declares.
	ports := map[int32]bool{}
	for _, p := range c.Ports {
		ports[p.ContainerPort] = true
	}
	services := map[int32]bool{}
	for _, o := range ofKind(objs, "Service") {
		s := decodeInto[corev1.Service](t, o)
		for k, v := range s.Spec.Selector {
			if d.Spec.Template.Labels[k] != v {
				t.Errorf("Service %s selects %s=%s, which the pods do not carry", s.Name, k, v)
			}
		}
		for _, p := range s.Spec.Ports {
			services[p.Port] = true
			if !ports[int32(p.TargetPort.IntValue())] {
				t.Errorf("Service %s targets port %s, which the container does not declare", s.Name, p.TargetPort.String())
			}
		}
	}
	if !services[8443] || !services[8090] {
		t.Errorf("want a metrics Service on 8443 and an intake Service on 8090, got ports %v", services)
	}
}

var seriesName = regexp.MustCompile(`docrouter_[a-z_]+`)

// exported reports whether name is a series the operator exports (a histogram's too).
func exported(name string) bool {
	for _, suffix := range []string{"_bucket", "_sum", "_count", ""} {
		if base, ok := strings.CutSuffix(name, suffix); ok && slices.Contains(metrics.Names(), base) {
			return true
		}
	}
	return false
}

// The sample alerts and the dashboard parse, and use only series the operator exports.
func TestAlertsAndDashboardUseExportedSeries(t *testing.T) {
	objs := render(t, "prometheus")
	rules := ofKind(objs, "PrometheusRule")
	if len(rules) != 1 || len(ofKind(objs, "ServiceMonitor")) != 1 {
		t.Fatalf("want a PrometheusRule and a ServiceMonitor, got %d and %d", len(rules), len(ofKind(objs, "ServiceMonitor")))
	}
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert, Expr string
				}
			}
		}
	}
	if err := yaml.Unmarshal(rules[0].YAML, &rule); err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			alerts[r.Alert] = true
			names := seriesName.FindAllString(r.Expr, -1)
			if len(names) == 0 {
				t.Errorf("alert %s uses no operator series: %s", r.Alert, r.Expr)
			}
			for _, n := range names {
				if !exported(n) {
					t.Errorf("alert %s uses %s, which the operator does not export", r.Alert, n)
				}
			}
		}
	}
	for _, want := range []string{"DocRouterWebhookEndpointFailing", "DocRouterWebhookBacklogGrowing"} {
		if !alerts[want] {
			t.Errorf("alert %s missing", want)
		}
	}

	raw, err := os.ReadFile(filepath.Join("grafana", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	used := map[string]bool{}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, n := range seriesName.FindAllString(tg.Expr, -1) {
				if !exported(n) {
					t.Errorf("panel %q uses %s, which the operator does not export", p.Title, n)
				}
				used[strings.TrimSuffix(n, "_bucket")] = true
			}
		}
	}
	for _, n := range metrics.Names() {
		if !used[n] && n != metrics.BulkRetriedDeliveriesName {
			t.Errorf("the dashboard shows no panel of %s", n)
		}
	}
}

// The history API is registered and can work: the APIService names the group and version the
// operator serves, points at a Service of the install that reaches the port the Deployment
// serves the API on, verifies the certificate (the operator writes the caBundle), and the
// operator's ServiceAccount holds what an aggregated API server needs: system:auth-delegator,
// extension-apiserver-authentication-reader in kube-system, its certificate Secret and the
// APIService's caBundle. People who may view a namespace may read its history.
func TestHistoryAPIIsRegisteredAndPermitted(t *testing.T) {
	objs := render(t, "default")
	d := theDeployment(t, objs)
	sa := d.Spec.Template.Spec.ServiceAccountName

	services := ofKind(objs, "APIService")
	if len(services) != 1 || services[0].Name != historyv1alpha1.APIServiceName {
		t.Fatalf("want the APIService %s, got %v", historyv1alpha1.APIServiceName, services)
	}
	var apiService struct {
		Spec struct {
			Group, Version        string
			InsecureSkipTLSVerify bool
			CABundle              string
			Service               struct {
				Name, Namespace string
				Port            int32
			}
		}
	}
	if err := yaml.Unmarshal(services[0].YAML, &apiService); err != nil {
		t.Fatal(err)
	}
	spec := apiService.Spec
	if spec.Group != historyv1alpha1.GroupName || spec.Version != historyv1alpha1.GroupVersion.Version {
		t.Errorf("the APIService registers %s/%s, want %s", spec.Group, spec.Version, historyv1alpha1.GroupVersion)
	}
	if spec.InsecureSkipTLSVerify {
		t.Errorf("the APIService skips TLS verification")
	}
	if spec.CABundle != "" {
		t.Errorf("the APIService carries a caBundle; the operator writes it (its own CA)")
	}
	if spec.Service.Namespace != installNamespace || spec.Service.Name != historyapi.DefaultService {
		t.Errorf("the APIService points at Service %s/%s; the operator's certificate is for %s.%s.svc (--history-api-service default)",
			spec.Service.Namespace, spec.Service.Name, historyapi.DefaultService, installNamespace)
	}
	var target *corev1.ServicePort
	for _, o := range ofKind(objs, "Service") {
		if svc := decodeInto[corev1.Service](t, o); svc.Name == spec.Service.Name {
			for i, p := range svc.Spec.Ports {
				if p.Port == spec.Service.Port {
					target = &svc.Spec.Ports[i]
				}
			}
		}
	}
	if target == nil {
		t.Fatalf("no Service %s with port %d", spec.Service.Name, spec.Service.Port)
	}
	bind := ""
	for _, a := range d.Spec.Template.Spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--history-api-bind-address="); ok {
			bind = v
		}
	}
	if bind != fmt.Sprintf(":%d", target.TargetPort.IntValue()) {
		t.Errorf("the Service sends the history API to port %s, but the Deployment serves it on %q", target.TargetPort.String(), bind)
	}

	isSubject := func(subjects []rbacv1.Subject) bool {
		for _, s := range subjects {
			if s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == d.Namespace {
				return true
			}
		}
		return false
	}
	rules := map[string][]rbacv1.PolicyRule{}
	for _, o := range ofKind(objs, "ClusterRole") {
		rules["ClusterRole/"+o.Name] = decodeInto[rbacv1.ClusterRole](t, o).Rules
	}
	for _, o := range ofKind(objs, "Role") {
		rules["Role/"+o.NS+"/"+o.Name] = decodeInto[rbacv1.Role](t, o).Rules
	}
	delegator, reader := false, false
	var cluster, inNamespace []rbacv1.PolicyRule
	for _, o := range ofKind(objs, "ClusterRoleBinding") {
		b := decodeInto[rbacv1.ClusterRoleBinding](t, o)
		if isSubject(b.Subjects) {
			delegator = delegator || b.RoleRef.Name == "system:auth-delegator"
			cluster = append(cluster, rules["ClusterRole/"+b.RoleRef.Name]...)
		}
	}
	for _, o := range ofKind(objs, "RoleBinding") {
		b := decodeInto[rbacv1.RoleBinding](t, o)
		if !isSubject(b.Subjects) {
			continue
		}
		if b.Namespace == "kube-system" && b.RoleRef.Kind == "Role" && b.RoleRef.Name == "extension-apiserver-authentication-reader" {
			reader = true
		}
		if b.Namespace == d.Namespace && b.RoleRef.Kind == "Role" {
			inNamespace = append(inNamespace, rules["Role/"+b.Namespace+"/"+b.RoleRef.Name]...)
		}
	}
	if !delegator {
		t.Errorf("ServiceAccount %s is not bound to system:auth-delegator (TokenReviews and SubjectAccessReviews of the history API)", sa)
	}
	if !reader {
		t.Errorf("ServiceAccount %s is not bound to extension-apiserver-authentication-reader in kube-system (the front-proxy CA)", sa)
	}
	allows := func(rs []rbacv1.PolicyRule, group, resource, name, verb string) bool {
		for _, r := range rs {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) &&
				(len(r.ResourceNames) == 0 || slices.Contains(r.ResourceNames, name)) {
				return true
			}
		}
		return false
	}
	for _, verb := range []string{"create", "get", "update"} {
		if !allows(inNamespace, "", "secrets", historyapi.DefaultCertSecret, verb) {
			t.Errorf("the history API keeps its certificate in Secret %s, but may not %s it in %s", historyapi.DefaultCertSecret, verb, d.Namespace)
		}
	}
	for _, verb := range []string{"get", "patch"} {
		if !allows(cluster, "apiregistration.k8s.io", "apiservices", historyv1alpha1.APIServiceName, verb) {
			t.Errorf("the history API writes the caBundle of APIService %s, but may not %s it", historyv1alpha1.APIServiceName, verb)
		}
	}
	if allows(cluster, "", "secrets", "any-other-secret", "update") || allows(cluster, "", "secrets", "", "create") {
		t.Errorf("the operator must not write Secrets outside its own namespace")
	}

	viewer := false
	for _, o := range ofKind(objs, "ClusterRole") {
		r := decodeInto[rbacv1.ClusterRole](t, o)
		grantsRead := true
		for _, res := range []string{historyv1alpha1.RecordsResource, historyv1alpha1.StatsResource} {
			for _, verb := range []string{"get", "list", "watch"} {
				grantsRead = grantsRead && allows(r.Rules, historyv1alpha1.GroupName, res, "", verb)
			}
		}
		if !grantsRead {
			continue
		}
		viewer = true
		for _, role := range []string{"view", "edit", "admin"} {
			if r.Labels["rbac.authorization.k8s.io/aggregate-to-"+role] != "true" {
				t.Errorf("ClusterRole %s grants reading the history but does not aggregate to %s", r.Name, role)
			}
		}
		for _, verb := range []string{"create", "update", "patch", "delete"} {
			if allows(r.Rules, historyv1alpha1.GroupName, historyv1alpha1.RecordsResource, "", verb) {
				t.Errorf("ClusterRole %s grants %s on the read-only history", r.Name, verb)
			}
		}
	}
	if !viewer {
		t.Errorf("no ClusterRole grants get, list and watch of the history resources")
	}
}
