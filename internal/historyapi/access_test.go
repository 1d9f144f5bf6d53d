package historyapi_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	historyv1alpha1 "github.com/docrouter/webhook-operator/api/history/v1alpha1"
	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/aggregation"
	"github.com/docrouter/webhook-operator/internal/history"
	"github.com/docrouter/webhook-operator/internal/historyapi"
	"github.com/docrouter/webhook-operator/internal/pki"
)

var recordsGVR = historyv1alpha1.GroupVersion.WithResource(historyv1alpha1.RecordsResource)

// An informer (client-go's reflector, which uses watch-list streaming by default: initial
// events, then a bookmark that ends them) syncs the namespace's records and then follows new
// ones, as a controller or the console would.
func (a *api) testInformer(t *testing.T) {
	ns := env.Namespace(t)
	var initial []history.Record
	for i := range 120 {
		initial = append(initial, delivery{ns: ns, endpoint: "signed", eventID: fmt.Sprintf("%s-%d", ns, i), codes: []int32{200}}.record())
	}
	writeAll(t, a.store, initial)
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	factory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(dyn, time.Hour, ns, nil)
	inf := factory.ForResource(recordsGVR).Informer()
	added := make(chan string, 1000)
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: func(obj any) {
		added <- obj.(*unstructured.Unstructured).GetName()
	}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	synced, syncCancel := context.WithTimeout(ctx, 30*time.Second)
	defer syncCancel()
	if !cache.WaitForCacheSync(synced.Done(), inf.HasSynced) {
		t.Fatal("the informer did not sync within 30s")
	}
	if n := len(inf.GetStore().ListKeys()); n != len(initial) {
		t.Errorf("the informer holds %d records after syncing, want %d", n, len(initial))
	}
	late := delivery{ns: ns, endpoint: "signed", eventID: ns + "-late", codes: []int32{200}}.record()
	writeAll(t, a.store, []history.Record{late})
	deadline := time.After(15 * time.Second)
	for {
		select {
		case name := <-added:
			if name == late.Name {
				return
			}
		case <-deadline:
			t.Fatalf("the informer did not see %s within 15s", late.Name)
		}
	}
}

// RBAC decides, with the callers' own credentials: a user without a grant in the namespace
// gets 403; a user bound to the built-in view role there reads (the history viewer role
// aggregates into it); a user bound to view in another namespace gets 403 here. Through the
// API server (front-proxy headers) and directly with a ServiceAccount token (TokenReview).
func (a *api) testAuthorization(t *testing.T) {
	ctx := context.Background()
	ns, ns2 := env.Namespace(t), env.Namespace(t)
	r := delivery{ns: ns, endpoint: "signed", eventID: ns + "-rbac", codes: []int32{200}}.record()
	writeAll(t, a.store, []history.Record{r})
	nobody, viewer, elsewhere := user(t, "nobody-"+ns), user(t, "viewer-"+ns), user(t, "elsewhere-"+ns)
	bindView(t, ns, viewer.Name)
	bindView(t, ns2, elsewhere.Name)

	read := func(u *testUser, namespace string) error {
		rc := recordsClient(t, u.Config())
		if _, err := listRecords(ctx, rc, namespace, metav1.ListOptions{}); err != nil {
			return err
		}
		return rc.Get().Namespace(namespace).Resource("webhookdeliveryrecords").Name(r.Name).Do(ctx).Error()
	}
	// The view role gets the history rules from kube-controller-manager's aggregation, and
	// denials are cached for 10 s: wait until the viewer reads.
	err := wait.PollUntilContextTimeout(ctx, time.Second, 60*time.Second, true, func(context.Context) (bool, error) {
		return read(viewer, ns) == nil, nil
	})
	if err != nil {
		t.Fatalf("a user bound to view in %s could not read its records within 60s: %v", ns, read(viewer, ns))
	}
	forbidden := func(who string, err error) {
		t.Helper()
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "webhookdeliveryrecords") {
			t.Errorf("%s: want 403 on webhookdeliveryrecords, got %v", who, err)
		}
	}
	forbidden("a user without a grant", read(nobody, ns))
	forbidden("a user bound to view in another namespace", read(elsewhere, ns))
	forbidden("the viewer, in a namespace where it has no grant", read(viewer, ns2))
	if _, err := listRecords(ctx, recordsClient(t, viewer.Config()), "", metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the viewer listing every namespace: want 403, got %v", err)
	}
	if err := read(elsewhere, ns2); !apierrors.IsNotFound(err) {
		t.Errorf("the user bound in %s reading there: want the list to work and the record to be absent (404), got %v", ns2, err)
	}
	// Records are read-only, for everyone.
	err = recordsClient(t, env.Config).Delete().Namespace(ns).Resource("webhookdeliveryrecords").Name(r.Name).Do(ctx).Error()
	if !apierrors.IsMethodNotSupported(err) {
		t.Errorf("deleting a record as cluster admin: want 405, got %v", err)
	}

	// Directly, with a bearer token: the server asks the cluster (TokenReview, then
	// SubjectAccessReview).
	cs := kubernetes.NewForConfigOrDie(env.Config)
	token := func(name string) string {
		t.Helper()
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tok, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](600)}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tok.Status.Token
	}
	reader, stranger := token("reader"), token("stranger")
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "reader-view"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "reader", Namespace: ns}},
	}
	if err := env.Client.Create(ctx, rb); err != nil {
		t.Fatal(err)
	}
	direct := directClient(t)
	url := fmt.Sprintf("https://localhost:%d/apis/%s/namespaces/%s/webhookdeliveryrecords", a.port, historyv1alpha1.GroupVersion, ns)
	status := func(token string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := direct.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		return resp.StatusCode
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, 30*time.Second, true, func(context.Context) (bool, error) {
		return status(reader) == http.StatusOK, nil
	})
	if err != nil {
		t.Errorf("a ServiceAccount bound to view, directly with its token: got %d, want 200", status(reader))
	}
	if got := status(stranger); got != http.StatusForbidden {
		t.Errorf("a ServiceAccount without a grant, directly: got %d, want 403", got)
	}
	if got := status("not-a-token"); got != http.StatusUnauthorized {
		t.Errorf("a made-up token, directly: got %d, want 401", got)
	}
}

// directClient reaches the history API on its port, verifying its certificate against the CA
// the operator keeps (the one in the APIService's caBundle) for the Service's DNS name, as the
// aggregator does.
func directClient(t *testing.T) *http.Client {
	t.Helper()
	var sec corev1.Secret
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: installNamespace, Name: historyapi.DefaultCertSecret}, &sec); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(sec.Data["ca.crt"]) {
		t.Fatal("the certificate Secret holds no CA")
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, ServerName: historyapi.DefaultService + "." + installNamespace + ".svc",
	}}}
}

// kubectl, as users run it with their own kubeconfig: the table, -o wide, a field selector,
// -o yaml with every attempt, the webhooks category, explain, and -w.
func (a *api) testKubectl(t *testing.T) {
	bin, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl is not on the PATH: %v", err)
	}
	ns := env.Namespace(t)
	viewer := user(t, "kubectl-viewer-"+ns)
	bindView(t, ns, viewer.Name)
	dir := t.TempDir()
	kc, err := viewer.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	kubectl := func(args ...string) (string, error) {
		cmd := exec.Command(bin, append([]string{"--kubeconfig", kubeconfig, "--cache-dir", filepath.Join(dir, "cache")}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	codes := make([]int32, 25)
	for i := range codes {
		codes[i] = 503
	}
	failed := delivery{ns: ns, endpoint: "failing", eventID: ns + "-f", phase: webhooksv1alpha1.PhaseFailed, codes: codes}.record()
	ok := delivery{ns: ns, endpoint: "signed", eventID: ns + "-ok", codes: []int32{200}}.record()
	writeAll(t, a.store, []history.Record{failed, ok})
	if err := a.store.MarkRemoved(context.Background(), []history.Key{{Namespace: ns, Name: failed.Name}}, time.Now()); err != nil {
		t.Fatal(err)
	}

	var out string
	err = wait.PollUntilContextTimeout(context.Background(), time.Second, 60*time.Second, true, func(context.Context) (bool, error) {
		out, err = kubectl("get", "whdr", "-n", ns)
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("kubectl get whdr: %v\n%s", err, out)
	}
	header := regexp.MustCompile(`(?m)^NAME\s+ENDPOINT\s+EVENT\s+PHASE\s+ATTEMPTS\s+CODE\s+NEXT ATTEMPT\s+COMPLETED\s+AGE$`)
	if !header.MatchString(out) || !strings.Contains(out, failed.Name) || !strings.Contains(out, ok.Name) {
		t.Errorf("kubectl get whdr:\n%s", out)
	}
	if !regexp.MustCompile(`(?m)^` + failed.Name + `\s+failing\s+llm.completed\s+Failed\s+25\s+503\s+\d{4}-`).MatchString(out) {
		t.Errorf("kubectl get whdr: no row for the failed delivery with its columns:\n%s", out)
	}
	out, _ = kubectl("get", "whdr", "-n", ns, "-o", "wide")
	if !regexp.MustCompile(`(?m)^NAME\s+.*\s+EVENT ID\s+LAST ERROR\s+AGE$`).MatchString(out) || !strings.Contains(out, "HTTP 503: failing on purpose") {
		t.Errorf("kubectl get whdr -o wide:\n%s", out)
	}
	out, _ = kubectl("get", "whdr", "-n", ns, "--field-selector", "status.phase=Failed", "-o", "name")
	if strings.TrimSpace(out) != "webhookdeliveryrecord.history.webhooks.docrouter.ai/"+failed.Name {
		t.Errorf("kubectl get whdr --field-selector status.phase=Failed -o name:\n%s", out)
	}
	out, _ = kubectl("get", "whdr", failed.Name, "-n", ns, "-o", "yaml")
	if n := strings.Count(out, "- durationMilliseconds:"); n != 25 || !strings.Contains(out, "removedTime:") {
		t.Errorf("kubectl get whdr NAME -o yaml: %d attempts in status.history (want 25), removedTime shown: %v\n%s", n, strings.Contains(out, "removedTime:"), out)
	}
	out, _ = kubectl("get", "webhooks", "-n", ns, "-o", "name")
	if !strings.Contains(out, "webhookdeliveryrecord.history.webhooks.docrouter.ai/"+ok.Name) {
		t.Errorf("kubectl get webhooks (the category) does not list the records:\n%s", out)
	}
	// explain reads the OpenAPI that the API server aggregates from the history API.
	err = wait.PollUntilContextTimeout(context.Background(), time.Second, 60*time.Second, true, func(context.Context) (bool, error) {
		out, err = kubectl("explain", "webhookdeliveryrecord.status.history")
		return err == nil && strings.Contains(out, "every attempt"), nil
	})
	if err != nil {
		t.Errorf("kubectl explain webhookdeliveryrecord.status.history:\n%s", out)
	}
	if out, err = kubectl("explain", "webhookdeliveryrecord"); err != nil || !strings.Contains(out, "WebhookDeliveryRecord") || !strings.Contains(out, "spec") {
		t.Errorf("kubectl explain webhookdeliveryrecord: %v\n%s", err, out)
	}

	// kubectl get whdr -w prints a record that arrives.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--kubeconfig", kubeconfig, "--cache-dir", filepath.Join(dir, "cache"), "get", "whdr", "-n", ns, "-w")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	late := delivery{ns: ns, endpoint: "signed", eventID: ns + "-late", codes: []int32{200}}.record()
	wrote := false
	for {
		select {
		case l, open := <-lines:
			if !open {
				t.Fatal("kubectl get whdr -w ended")
			}
			if strings.HasPrefix(l, ok.Name) && !wrote { // the list is printed: now a new record
				writeAll(t, a.store, []history.Record{late})
				wrote = true
			}
			if strings.HasPrefix(l, late.Name) {
				if !strings.Contains(l, "Succeeded") {
					t.Errorf("kubectl get whdr -w printed %q", l)
				}
				return
			}
		case <-ctx.Done():
			t.Fatalf("kubectl get whdr -w did not print %s within 30s", late.Name)
		}
	}
}

// Every replica serves the same certificate, the one in the install's Secret whose CA is the
// APIService's caBundle: a second replica reads the Secret the first one wrote.
func (a *api) testReplicasShareTheCertificate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, a.cfg, a.store, ln)
	served := func(port int) []byte {
		t.Helper()
		var cert []byte
		err := wait.PollUntilContextTimeout(context.Background(), 200*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
			conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{InsecureSkipVerify: true}) // reads the certificate served; compared with the Secret below
			if err != nil {
				return false, nil
			}
			defer conn.Close()
			cert = conn.ConnectionState().PeerCertificates[0].Raw
			return true, nil
		})
		if err != nil {
			t.Fatalf("nothing serves TLS on port %d", port)
		}
		return cert
	}
	var sec corev1.Secret
	if err := env.Client.Get(context.Background(), client.ObjectKey{Namespace: installNamespace, Name: historyapi.DefaultCertSecret}, &sec); err != nil {
		t.Fatal(err)
	}
	want, err := pki.ParseCert(sec.Data[corev1.TLSCertKey])
	if err != nil {
		t.Fatal(err)
	}
	first, second := served(a.port), served(ln.Addr().(*net.TCPAddr).Port)
	if !bytes.Equal(first, want.Raw) || !bytes.Equal(second, want.Raw) {
		t.Errorf("the replicas serve different certificates, or not the Secret's")
	}
	u, err := dynamic.NewForConfigOrDie(env.Config).Resource(aggregation.APIServiceGVR).Get(context.Background(), historyv1alpha1.APIServiceName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	caBundle, _, _ := unstructured.NestedString(u.Object, "spec", "caBundle")
	if caBundle != base64.StdEncoding.EncodeToString(append(bytes.TrimSpace(sec.Data["ca.crt"]), '\n')) {
		t.Errorf("the APIService's caBundle is not the Secret's CA")
	}
}
