package filter_test

import (
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
	"github.com/docrouter/webhook-operator/internal/filter"
)

// invoice is an llm.completed event of org-1 for a document tagged invoices.
func invoice() *webhooksv1alpha1.Event {
	return &webhooksv1alpha1.Event{
		ID: "evt-1", Type: webhooksv1alpha1.EventLLMCompleted, Timestamp: 1640995200, OrganizationID: "org-1",
		Document: webhooksv1alpha1.Document{
			DocumentID: "doc-123", DocumentName: "invoice.pdf", TagIDs: []string{"invoices", "2026"},
			Metadata: &apiextensionsv1.JSON{Raw: []byte(`{"source": "email", "pages": 3}`)},
		},
		Data: &apiextensionsv1.JSON{Raw: []byte(`{"invoice_total": 1250.5, "currency": "EUR", "lines": [{"sku": "A-1"}, {"sku": "B-2"}]}`)},
	}
}

// bare is an event without tags, metadata or data.
func bare() *webhooksv1alpha1.Event {
	return &webhooksv1alpha1.Event{ID: "evt-2", Type: webhooksv1alpha1.EventDocumentUploaded, Timestamp: 1, OrganizationID: "org-2"}
}

// Expressions over the payload's field names decide as a receiver reading the payload would.
func TestMatches(t *testing.T) {
	for _, tc := range []struct {
		expr        string
		event       *webhooksv1alpha1.Event
		want        bool
		errContains string
	}{
		{`event.organization_id == "org-1" && "invoices" in event.document.tag_ids`, invoice(), true, ""},
		{`event.organization_id == "org-1" && "invoices" in event.document.tag_ids`, bare(), false, ""},
		{`event.event_type == "llm.completed" && event.event_id.startsWith("evt-")`, invoice(), true, ""},
		{`event.timestamp > 1600000000`, invoice(), true, ""},
		{`event.document.document_name.endsWith(".pdf") && event.document.document_id == "doc-123"`, invoice(), true, ""},
		{`event.document.metadata.source == "email" && event.document.metadata.pages == 3`, invoice(), true, ""},
		{`event.data.invoice_total > 1000 && event.data.currency == "EUR"`, invoice(), true, ""},
		{`event.data.invoice_total > 2000`, invoice(), false, ""},
		{`event.data.lines[1].sku == "B-2"`, invoice(), true, ""},
		{`event.document.tag_ids.exists(t, t.startsWith("20"))`, invoice(), true, ""},
		// An event without data or metadata has empty objects: has() is false, ?. gives the default.
		{`has(event.data.invoice_total)`, bare(), false, ""},
		{`event.data.?invoice_total.orValue(0) > 100`, bare(), false, ""},
		{`event.data.?invoice_total.orValue(0) > 100`, invoice(), true, ""},
		{`size(event.document.tag_ids) == 0 && size(event.document.metadata) == 0`, bare(), true, ""},
		// A key the event lacks, used without has(), is an error for this event, not a match.
		{`event.data.invoice_total > 100`, bare(), false, "no such key: invoice_total"},
		{`event.data.currency > 3`, invoice(), false, "no such overload"},
	} {
		t.Run(tc.expr, func(t *testing.T) {
			p, err := filter.Compile(tc.expr)
			if err != nil {
				t.Fatalf("compile: %v", err)
			}
			got, err := p.Matches(filter.NewInput(tc.event))
			if tc.errContains != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errContains) {
					t.Fatalf("want an error containing %q, got %v (match %v)", tc.errContains, err, got)
				}
				if got {
					t.Fatal("an expression that fails must not match")
				}
				return
			}
			if err != nil {
				t.Fatalf("evaluate: %v", err)
			}
			if got != tc.want {
				t.Fatalf("matches = %v, want %v", got, tc.want)
			}
		})
	}
}

// What does not compile is refused with the compiler's message, which points at the mistake.
func TestCompileRefuses(t *testing.T) {
	for _, tc := range []struct {
		expr string
		says []string
	}{
		{`event.organisation_id == "org-1"`, []string{"not a valid CEL expression", "undefined field 'organisation_id'", "spec.filter:1:6"}},
		{`event.document.tags.exists(t, t == "x")`, []string{"undefined field 'tags'"}},
		{`event.organization_id == `, []string{"not a valid CEL expression", "Syntax error"}},
		{`organization_id == "org-1"`, []string{"undeclared reference to 'organization_id'"}},
		{`event.timestamp == "yesterday"`, []string{"found no matching overload for '_==_' applied to '(int, string)'"}},
		{`event.organization_id`, []string{"must be true or false for an event, but it gives a string"}},
		{`event.data.flag`, []string{"must be true or false", "gives a dyn", "event.data.flag == true"}},
	} {
		t.Run(tc.expr, func(t *testing.T) {
			_, err := filter.Compile(tc.expr)
			if err == nil {
				t.Fatal("compiled; want an error")
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}

// The estimated cost on the largest event the intake accepts decides: a single loop over the
// tags passes, a loop inside a loop, or one over data, is refused with a sentence.
func TestCompileRefusesExpressionsOverTheCostLimit(t *testing.T) {
	for _, expr := range []string{
		`"invoices" in event.document.tag_ids`,
		`event.document.tag_ids.exists(t, t.startsWith("inv") || t.endsWith("-2026"))`,
		`event.document.tag_ids.all(t, t.matches("^[a-z0-9-]+$"))`,
		`event.document.metadata.source == "email" && event.data.?invoice_total.orValue(0) > 1000`,
	} {
		if _, err := filter.Compile(expr); err != nil {
			t.Errorf("%s: want it accepted, got %v", expr, err)
		}
	}
	for _, expr := range []string{
		`event.document.tag_ids.all(a, event.document.tag_ids.all(b, a == b || a != b))`,
		`event.document.tag_ids.exists(a, event.document.tag_ids.exists(b, a + b == "invoices2026"))`,
		`event.data.exists(k, k.startsWith("invoice_"))`,
		`event.data.lines.exists(l, l.sku == "B-2")`,
	} {
		_, err := filter.Compile(expr)
		if err == nil {
			t.Errorf("%s: compiled; want it refused for its cost", expr)
			continue
		}
		for _, s := range []string{"may cost up to", "above the limit of 100000", "256 tag ids of 256 characters, a 256 KiB body"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: error %q does not say %q", expr, err, s)
			}
		}
	}
}

// One Input serves every endpoint's program.
func TestInputIsSharedAcrossPrograms(t *testing.T) {
	in := filter.NewInput(invoice())
	for _, expr := range []string{`event.organization_id == "org-1"`, `"2026" in event.document.tag_ids`} {
		p, err := filter.Compile(expr)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := p.Matches(in); !ok || err != nil {
			t.Fatalf("%s: %v %v", expr, ok, err)
		}
	}
}

func endpoint(uid string, generation int64, expr string) *webhooksv1alpha1.WebhookEndpoint {
	return &webhooksv1alpha1.WebhookEndpoint{
		ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid), Generation: generation},
		Spec:       webhooksv1alpha1.WebhookEndpointSpec{Filter: expr},
	}
}

// One compilation per endpoint generation; a new generation compiles again; the cache holds
// at most its size, dropping the least recently used.
func TestCacheCompilesOncePerGenerationAndIsBounded(t *testing.T) {
	c := filter.NewCache(2)
	if p, err := c.For(endpoint("a", 1, "")); p != nil || err != nil {
		t.Fatalf("no filter: want nil, nil; got %v, %v", p, err)
	}
	p1, err := c.For(endpoint("a", 1, `event.organization_id == "org-1"`))
	if err != nil {
		t.Fatal(err)
	}
	again, _ := c.For(endpoint("a", 1, `event.organization_id == "org-1"`))
	if again != p1 {
		t.Fatal("the same generation compiled again")
	}
	p2, _ := c.For(endpoint("a", 2, `event.organization_id == "org-2"`))
	if p2 == p1 || p2.Expression() != `event.organization_id == "org-2"` {
		t.Fatal("a new generation did not get its own program")
	}
	if ok, _ := p2.Matches(filter.NewInput(bare())); !ok {
		t.Fatal("generation 2's filter does not match org-2")
	}
	_, bad := c.For(endpoint("b", 1, `event.nope`))
	if bad == nil || !strings.Contains(bad.Error(), "undefined field 'nope'") {
		t.Fatalf("want the compile error, got %v", bad)
	}
	if _, again := c.For(endpoint("b", 1, `event.nope`)); again == nil || again.Error() != bad.Error() {
		t.Fatalf("the compile error is kept for the generation, got %v", again)
	}
	_, _ = c.For(endpoint("c", 1, `true`))
	if n := c.Len(); n != 2 {
		t.Fatalf("cache of size 2 holds %d", n)
	}
	// "a" was least recently used: it is compiled anew.
	if p, _ := c.For(endpoint("a", 2, `event.organization_id == "org-2"`)); p == p2 {
		t.Fatal("the least recently used entry was not evicted")
	}
}

func BenchmarkMatch(b *testing.B) {
	for _, tc := range []struct{ name, expr string }{
		{"org and tag", `event.organization_id == "org-1" && "invoices" in event.document.tag_ids`},
		{"data field", `event.data.?invoice_total.orValue(0) > 1000 && event.document.metadata.source == "email"`},
	} {
		p, err := filter.Compile(tc.expr)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if ok, err := p.Matches(filter.NewInput(invoice())); !ok || err != nil {
					b.Fatal(ok, err)
				}
			}
		})
	}
	// The worst an accepted expression may cost: a loop over 256 tags of 256 characters.
	p, err := filter.Compile(`event.document.tag_ids.all(t, t.matches("^[a-z0-9-]+$"))`)
	if err != nil {
		b.Fatal(err)
	}
	ev := invoice()
	ev.Document.TagIDs = nil
	for range filter.MaxTagIDs {
		ev.Document.TagIDs = append(ev.Document.TagIDs, strings.Repeat("a", filter.MaxTagIDLength))
	}
	b.Run("256 tags of 256 characters", func(b *testing.B) {
		for b.Loop() {
			if ok, err := p.Matches(filter.NewInput(ev)); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
}

func BenchmarkCompile(b *testing.B) {
	for b.Loop() {
		if _, err := filter.Compile(`event.organization_id == "org-1" && "invoices" in event.document.tag_ids`); err != nil {
			b.Fatal(err)
		}
	}
}
