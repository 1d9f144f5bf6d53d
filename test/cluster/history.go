//go:build cluster

package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
)

const (
	historyAPIService = "v1alpha1.history.webhooks.docrouter.ai"
	historyGroupPath  = "/apis/history.webhooks.docrouter.ai/v1alpha1"
	historyService    = "webhook-operator-history-api"
	historyCertSecret = "webhook-operator-history-api-tls"
	historyClaim      = "webhook-operator-history"
	historyMount      = "/var/lib/webhook-operator"
)

// apiUser is a person of the cluster: a client certificate of the cluster's CA (what kubectl
// users of kubeadm clusters have), a kubeconfig for kubectl, and an HTTP client.
type apiUser struct {
	name, kubeconfig string
	cert             tls.Certificate
	http             *http.Client
}

// ensureUsers makes the history API's users once: jane, bound to the built-in view role in
// demo (which the history viewer role aggregates into), and bob, bound to nothing.
func (k *checks) ensureUsers(ctx context.Context) error {
	if k.users != nil {
		return nil
	}
	caPEM, err := os.ReadFile(k.n.ca.certPath("ca"))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	users := map[string]*apiUser{}
	for _, name := range []string{"jane", "bob"} {
		file := "user-" + name
		if err := k.n.ca.issue(file, name, nil, nil, nil); err != nil {
			return err
		}
		kc, err := k.n.ca.kubeconfig(file, k.n.server)
		if err != nil {
			return err
		}
		cert, err := tls.LoadX509KeyPair(k.n.ca.certPath(file), k.n.ca.keyPath(file))
		if err != nil {
			return err
		}
		users[name] = &apiUser{name: name, kubeconfig: kc, cert: cert, http: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}},
		}}}
	}
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "jane-view", Namespace: demoNS},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "jane"}},
	}
	if err := k.c.Create(ctx, rb); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	k.users = users
	k.logf("users of the cluster (client certificates of its CA): jane, bound to the ClusterRole view in %s; bob, bound to nothing", demoNS)
	return nil
}

// getJSON GETs url and decodes a 200 answer into out; it returns the status and, for another
// status, the body.
func getJSON(ctx context.Context, hc *http.Client, url string, out any) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return resp.StatusCode, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, strings.TrimSpace(string(b)), nil
	}
	return resp.StatusCode, "", json.Unmarshal(b, out)
}

func recordsPath(ns string) string {
	return historyGroupPath + "/namespaces/" + ns + "/webhookdeliveryrecords"
}

// describeRecord is a record as one line: its phase and every attempt.
func describeRecord(r *historyv1alpha1.WebhookDeliveryRecord) string {
	var attempts []string
	for _, a := range r.Status.History {
		attempts = append(attempts, fmt.Sprintf("#%d %s %d in %dms (%s)", a.Number, a.Result, a.StatusCode, a.DurationMilliseconds, a.Trigger))
	}
	return fmt.Sprintf("%s/%s: event %s, %s, %d attempt(s): %s; resourceVersion %s", r.Namespace, r.Name, r.Spec.Event.ID, r.Status.Phase,
		r.Status.Attempts, strings.Join(attempts, ", "), r.ResourceVersion)
}

// archived reports whether a record holds the delivery as the checks saw it: Succeeded after
// one attempt answered 200.
func archived(r *historyv1alpha1.WebhookDeliveryRecord) error {
	if r.Status.Phase != "Succeeded" || len(r.Status.History) != 1 || r.Status.History[0].StatusCode != http.StatusOK {
		return fmt.Errorf("the record is not the Succeeded delivery with its one 200 attempt: %s", describeRecord(r))
	}
	return nil
}

// record GETs a delivery's record through the API server as user u.
func (k *checks) record(ctx context.Context, u *apiUser, name string) (*historyv1alpha1.WebhookDeliveryRecord, error) {
	var r historyv1alpha1.WebhookDeliveryRecord
	code, body, err := getJSON(ctx, u.http, k.n.server+recordsPath(demoNS)+"/"+name, &r)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("kubectl get whdr %s -n %s as %s: %d %s", name, demoNS, u.name, code, body)
	}
	return &r, nil
}

// waitRecord waits until the record of a delivery is served through the API server to u and
// holds what was delivered.
func (k *checks) waitRecord(ctx context.Context, u *apiUser, name string, timeout time.Duration) (*historyv1alpha1.WebhookDeliveryRecord, error) {
	var r *historyv1alpha1.WebhookDeliveryRecord
	err := waitFor(ctx, "the record of "+name+" through the API server", timeout, func(ctx context.Context) (bool, error) {
		var err error
		if r, err = k.record(ctx, u, name); err != nil {
			return false, err
		}
		return archived(r) == nil, archived(r)
	})
	return r, err
}

// caBundle returns the APIService's caBundle, which must be the CA that the operator keeps in
// its certificate Secret.
func (k *checks) caBundle(ctx context.Context) ([]byte, string, error) {
	svc := &unstructured.Unstructured{}
	svc.SetAPIVersion("apiregistration.k8s.io/v1")
	svc.SetKind("APIService")
	if err := k.c.Get(ctx, types.NamespacedName{Name: historyAPIService}, svc); err != nil {
		return nil, "", err
	}
	enc, _, _ := unstructured.NestedString(svc.Object, "spec", "caBundle")
	bundle, err := base64.StdEncoding.DecodeString(enc)
	if err != nil || len(bundle) == 0 {
		return nil, "", fmt.Errorf("the APIService %s has no caBundle (%v): the operator did not write it", historyAPIService, err)
	}
	if skip, _, _ := unstructured.NestedBool(svc.Object, "spec", "insecureSkipTLSVerify"); skip {
		return nil, "", fmt.Errorf("the APIService %s skips TLS verification", historyAPIService)
	}
	available := ""
	conds, _, _ := unstructured.NestedSlice(svc.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Available" {
			available = fmt.Sprintf("Available=%v (%v)", m["status"], m["reason"])
		}
	}
	sec, err := k.cs.CoreV1().Secrets(installNS).Get(ctx, historyCertSecret, metav1.GetOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("the history API's certificate Secret: %w", err)
	}
	ca := bytes.TrimSpace(sec.Data["ca.crt"])
	if len(ca) == 0 || !bytes.Contains(bundle, ca) {
		return nil, "", fmt.Errorf("the APIService's caBundle does not hold the CA of Secret %s/%s", installNS, historyCertSecret)
	}
	return bundle, fmt.Sprintf("%s; its caBundle is the CA of Secret %s/%s (%s)", available, installNS, historyCertSecret, describeCA(ca)), nil
}

// describeCA names the first certificate of a PEM bundle: its subject and expiry.
func describeCA(b []byte) string {
	for rest := b; len(rest) > 0; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			return fmt.Sprintf("CN %s, until %s", c.Subject.CommonName, c.NotAfter.UTC().Format(time.RFC3339))
		}
	}
	return "no certificate"
}

// historyAPI: the APIService is Available through its Service, with the caBundle the operator
// wrote; each of the install's deliveries has its record, with its attempt, read through the
// cluster's API server with a user's own credentials (RBAC decides: view in the namespace
// reads, no binding is 403); and every replica serves those records itself, with the
// certificate that the caBundle verifies.
func (k *checks) historyAPI(ctx context.Context) error {
	if err := k.ensureUsers(ctx); err != nil {
		return err
	}
	jane, bob := k.users["jane"], k.users["bob"]
	bundle, about, err := k.caBundle(ctx)
	if err != nil {
		return err
	}
	k.logf("APIService %s: %s", historyAPIService, about)
	if len(k.delivered) == 0 {
		return errors.New("no delivery to find in the history")
	}
	t0 := time.Now()
	for _, name := range k.delivered {
		r, err := k.waitRecord(ctx, jane, name, time.Minute)
		if err != nil {
			return err
		}
		k.logf("as jane, through the API server: %s (%.1fs)", describeRecord(r), time.Since(t0).Seconds())
	}
	var list historyv1alpha1.WebhookDeliveryRecordList
	admin := k.adminHTTP()
	if code, body, err := getJSON(ctx, admin, k.n.server+recordsPath(demoNS), &list); err != nil || code != http.StatusOK {
		return fmt.Errorf("listing records in %s as the admin: %d %s %v", demoNS, code, body, err)
	}
	names := map[string]bool{}
	for _, r := range list.Items {
		names[r.Name] = true
	}
	for _, d := range k.delivered {
		if !names[d] {
			return fmt.Errorf("the admin's list of records in %s lacks %s", demoNS, d)
		}
	}
	k.logf("as the admin (system:masters), kubectl get whdr -n %s: %d records, this install's %d among them", demoNS, len(list.Items), len(k.delivered))
	for _, c := range []struct {
		u  *apiUser
		ns string
	}{{jane, installNS}, {bob, demoNS}} {
		code, body, err := getJSON(ctx, c.u.http, k.n.server+recordsPath(c.ns), &list)
		if err != nil {
			return err
		}
		if code != http.StatusForbidden {
			return fmt.Errorf("%s listing records in %s (not bound there) got %d, want 403: %s", c.u.name, c.ns, code, body)
		}
		var st metav1.Status
		_ = json.Unmarshal([]byte(body), &st)
		k.logf("as %s, kubectl get whdr -n %s: 403 %s", c.u.name, c.ns, st.Message)
	}

	// Every replica serves the records itself (the Service balances the aggregator's
	// connections between them), with the certificate that the caBundle verifies for the
	// Service's name.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle)
	direct := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: roots, ServerName: historyService + "." + installNS + ".svc", Certificates: []tls.Certificate{jane.cert},
	}}}
	pods, err := k.operatorPods(ctx)
	if err != nil {
		return err
	}
	for _, p := range pods {
		for _, name := range k.delivered {
			var r historyv1alpha1.WebhookDeliveryRecord
			url := fmt.Sprintf("https://%s:8444%s/%s", p.Status.PodIP, recordsPath(demoNS), name)
			code, body, err := getJSON(ctx, direct, url, &r)
			if err != nil {
				return fmt.Errorf("pod %s's history API (verifying its certificate with the caBundle): %w", p.Name, err)
			}
			if code != http.StatusOK {
				return fmt.Errorf("pod %s's history API answered %d to jane for %s: %s", p.Name, code, name, body)
			}
			if err := archived(&r); err != nil {
				return fmt.Errorf("pod %s: %w", p.Name, err)
			}
		}
		k.logf("pod %s (%s:8444) serves the %d records to jane itself, with a certificate for %s.%s.svc that the caBundle verifies",
			p.Name, p.Status.PodIP, len(k.delivered), historyService, installNS)
	}
	return nil
}

func (k *checks) adminHTTP() *http.Client {
	caPEM, _ := os.ReadFile(k.n.ca.certPath("ca"))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	cert, _ := tls.LoadX509KeyPair(k.n.ca.certPath("admin"), k.n.ca.keyPath("admin"))
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}}}
}

// sqliteVolume: the history's SQLite file is on the claim's volume (the hostPath directory of
// its PersistentVolume holds history.db), and it is the very file the operator's container
// has open at /var/lib/webhook-operator.
func (k *checks) sqliteVolume(ctx context.Context) error {
	dir := k.volumes[historyClaim]
	if dir == "" {
		return fmt.Errorf("the install has no claim %s", historyClaim)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var files []string
	for _, e := range entries {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		files = append(files, fmt.Sprintf("%s (%d bytes, %d:%d, %s)", e.Name(), fi.Size(), st.Uid, st.Gid, fi.Mode().Perm()))
	}
	db := filepath.Join(dir, "history.db")
	host, err := os.Stat(db)
	if err != nil {
		return fmt.Errorf("the volume %s holds no history.db: %v (it holds %s)", dir, err, strings.Join(files, ", "))
	}
	pods, err := k.operatorPods(ctx)
	if err != nil {
		return err
	}
	for _, p := range pods {
		if err := k.sameFile(p, host); err != nil {
			return err
		}
		k.logf("pod %s: %s/history.db is the volume's file (same device and inode)", p.Name, historyMount)
	}
	k.logf("the volume of claim %s, %s, holds: %s", historyClaim, dir, strings.Join(files, ", "))
	return nil
}

// sameFile checks that the pod's history.db is the host's file.
func (k *checks) sameFile(p corev1.Pod, host os.FileInfo) error {
	pid, err := k.containerPid(p)
	if err != nil {
		return err
	}
	in, err := os.Stat(fmt.Sprintf("/proc/%d/root%s/history.db", pid, historyMount))
	if err != nil {
		return fmt.Errorf("pod %s: %w", p.Name, err)
	}
	if !os.SameFile(in, host) {
		return fmt.Errorf("pod %s's %s/history.db is not the file on the volume", p.Name, historyMount)
	}
	return nil
}

// historyRestart: the record of the first delivery is still served, unchanged, after its
// pod was deleted and the Deployment's new pod opened the same file.
func (k *checks) historyRestart(ctx context.Context) error {
	jane := k.users["jane"]
	name := k.delivered[0]
	before, err := k.record(ctx, jane, name)
	if err != nil {
		return err
	}
	pods, err := k.operatorPods(ctx)
	if err != nil {
		return err
	}
	if len(pods) != 1 {
		return fmt.Errorf("want one operator pod, got %d", len(pods))
	}
	old := pods[0].Name
	t0 := time.Now()
	if err := k.cs.CoreV1().Pods(installNS).Delete(ctx, old, metav1.DeleteOptions{}); err != nil {
		return err
	}
	var fresh corev1.Pod
	if err := waitFor(ctx, "a new operator pod Ready", 2*time.Minute, func(ctx context.Context) (bool, error) {
		pods, err := k.operatorPods(ctx)
		if err != nil {
			return false, err
		}
		for _, p := range pods {
			if p.Name != old && podReady(p) {
				fresh = p
				return true, nil
			}
		}
		return false, fmt.Errorf("%s", k.podProblems(ctx, installNS, &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/component": "controller-manager"}}))
	}, k.n.procs["kubelet"]); err != nil {
		return err
	}
	ready := time.Since(t0)
	after, err := k.waitRecord(ctx, jane, name, time.Minute)
	if err != nil {
		return fmt.Errorf("after the restart: %w", err)
	}
	served := time.Since(t0)
	if fmt.Sprint(after.Status.History) != fmt.Sprint(before.Status.History) || after.Status.Phase != before.Status.Phase {
		return fmt.Errorf("the record changed across the restart:\nbefore %s\nafter  %s", describeRecord(before), describeRecord(after))
	}
	db := filepath.Join(k.volumes[historyClaim], "history.db")
	host, err := os.Stat(db)
	if err != nil {
		return err
	}
	if err := k.sameFile(fresh, host); err != nil {
		return err
	}
	k.logf("deleted pod %s; pod %s Ready after %.1fs, opened the volume's history.db, and serves the record %.1fs after the deletion, unchanged: %s",
		old, fresh.Name, ready.Seconds(), served.Seconds(), describeRecord(after))
	return nil
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return p.Status.Phase == corev1.PodRunning
		}
	}
	return false
}

// postgresClients: both replicas hold connections to the database, as the operator's role,
// from their pod addresses; the records are in its tables.
func (k *checks) postgresClients(ctx context.Context) error {
	pods, err := k.operatorPods(ctx)
	if err != nil {
		return err
	}
	rows, err := k.pg.query(ctx, "postgres", "SELECT host(client_addr), count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $2 GROUP BY 1 ORDER BY 1", postgresUser, postgresDB)
	if err != nil {
		return err
	}
	conns := map[string]string{}
	for _, r := range rows {
		conns[r[0]] = r[1]
	}
	var seen []string
	for _, p := range pods {
		n, ok := conns[p.Status.PodIP]
		if !ok {
			return fmt.Errorf("pod %s (%s) has no connection to the database; connections by address: %v", p.Name, p.Status.PodIP, conns)
		}
		seen = append(seen, fmt.Sprintf("%s from %s (%s)", n, p.Status.PodIP, p.Name))
	}
	counts, err := k.pg.query(ctx, postgresDB, "SELECT (SELECT count(*) FROM records), (SELECT count(*) FROM attempts)")
	if err != nil {
		return err
	}
	auth := 0
	if b, err := os.ReadFile(k.n.path("logs", "postgres.log")); err == nil {
		auth = strings.Count(string(b), `identity="`+postgresUser+`" method=scram-sha-256`)
	}
	k.logf("PostgreSQL: connections of role %s to %s: %s; %d connections authenticated with scram-sha-256 (its log); tables records %s, attempts %s",
		postgresUser, postgresDB, strings.Join(seen, ", "), auth, counts[0][0], counts[0][1])
	if auth == 0 {
		return errors.New("PostgreSQL's log has no connection authenticated with scram-sha-256")
	}
	return nil
}

// passwordNotLogged: the database password, in any form, is in no log of the operator's pods
// (kubectl logs) nor in the server's own; the operator names the database without it.
func (k *checks) passwordNotLogged(ctx context.Context) error {
	pods, err := k.operatorPods(ctx)
	if err != nil {
		return err
	}
	forms := k.pg.secretForms()
	for _, p := range pods {
		out, err := k.cs.CoreV1().Pods(installNS).GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("kubectl logs %s: %w", p.Name, err)
		}
		for _, f := range forms {
			if bytes.Contains(out, []byte(f)) {
				return fmt.Errorf("the log of pod %s holds the database password", p.Name)
			}
		}
		opened := ""
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, "history store opened") {
				opened = l
			}
		}
		if opened == "" || !strings.Contains(opened, "xxxxx@") {
			return fmt.Errorf("pod %s's log does not name the database with its password hidden: %q", p.Name, opened)
		}
		k.logf("kubectl logs %s: %d lines, no form of the password; it names the store so: %s", p.Name, bytes.Count(out, []byte("\n")), opened)
	}
	pgLog, err := os.ReadFile(k.n.path("logs", "postgres.log"))
	if err != nil {
		return err
	}
	for _, f := range forms {
		if bytes.Contains(pgLog, []byte(f)) {
			return errors.New("PostgreSQL's log holds the password")
		}
	}
	return nil
}

// kubectlAs logs `kubectl ARGS` run by user u (their kubeconfig).
func (k *checks) kubectlAs(u *apiUser, args ...string) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		return
	}
	out, _ := exec.Command("kubectl", append([]string{"--kubeconfig", u.kubeconfig}, args...)...).CombinedOutput()
	k.t.Logf("%s$ kubectl %s\n%s", u.name, strings.Join(args, " "), strings.TrimRight(string(out), "\n"))
}
