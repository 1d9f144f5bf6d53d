package controllers

import (
	"fmt"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/types"
)

// These tests need no API server: the limiter is memory only.

func nn(name string) types.NamespacedName { return types.NamespacedName{Namespace: "ns", Name: name} }

// A step is one call on the limiter: acquire (tryAcquire of delivery for endpoint, with the
// endpoint's limit, and whether it must get a slot) or release (of endpoint, and which delivery
// it must wake, "" for none).
type inflightStep struct {
	op       string // acquire, release
	endpoint string
	delivery string
	limit    int
	want     bool   // acquire: got a slot
	wakes    string // release: the delivery woken
}

func acquire(endpoint, delivery string, limit int, want bool) inflightStep {
	return inflightStep{op: "acquire", endpoint: endpoint, delivery: delivery, limit: limit, want: want}
}

func release(endpoint, wakes string) inflightStep {
	return inflightStep{op: "release", endpoint: endpoint, wakes: wakes}
}

// An endpoint has at most its limit of attempts in flight, and all endpoints together at most the
// total; a delivery turned away waits in a line (its endpoint's, or the shared one of the total)
// and is woken, in the order it came, when a slot frees: first the next of the releasing
// endpoint's line, then the next of the shared line.
func TestInflightLimiter(t *testing.T) {
	tests := []struct {
		name  string
		total int
		steps []inflightStep
	}{
		{"an endpoint has at most its limit in flight; the others are not held up", 0, []inflightStep{
			acquire("a", "a1", 2, true),
			acquire("a", "a2", 2, true),
			acquire("a", "a3", 2, false),
			acquire("b", "b1", 2, true),
			acquire("b", "b2", 2, true),
		}},
		{"limit 0 means no limit", 0, []inflightStep{
			acquire("a", "a1", 0, true),
			acquire("a", "a2", 0, true),
			acquire("a", "a3", 0, true),
			acquire("a", "a4", 0, true),
			release("a", ""),
		}},
		{"a released slot can be taken again", 0, []inflightStep{
			acquire("a", "a1", 1, true),
			acquire("a", "a2", 1, false),
			release("a", "a2"),
			acquire("a", "a2", 1, true),
			acquire("a", "a3", 1, false),
		}},
		{"the total caps all endpoints together", 3, []inflightStep{
			acquire("a", "a1", 0, true),
			acquire("b", "b1", 0, true),
			acquire("c", "c1", 5, true),
			acquire("d", "d1", 5, false),
			acquire("a", "a2", 0, false),
			release("c", "d1"),
			acquire("d", "d1", 5, true),
			acquire("e", "e1", 5, false),
		}},
		{"an endpoint's line is woken in order, one per released slot", 0, []inflightStep{
			acquire("a", "a1", 1, true),
			acquire("a", "a2", 1, false),
			acquire("a", "a3", 1, false),
			acquire("a", "a4", 1, false),
			release("a", "a2"),
			acquire("a", "a2", 1, true),
			release("a", "a3"),
			acquire("a", "a3", 1, true),
			release("a", "a4"),
			acquire("a", "a4", 1, true),
			release("a", ""),
		}},
		{"the shared line is woken in order", 2, []inflightStep{
			acquire("a", "a1", 0, true),
			acquire("b", "b1", 0, true),
			acquire("c", "c1", 0, false),
			acquire("d", "d1", 0, false),
			release("a", "c1"),
			release("b", "d1"),
		}},
		{"a delivery turned away again is in its line once", 0, []inflightStep{
			acquire("a", "a1", 1, true),
			acquire("a", "a2", 1, false),
			acquire("a", "a2", 1, false),
			acquire("a", "a3", 1, false),
			acquire("a", "a2", 1, false),
			release("a", "a2"),
			acquire("a", "a2", 1, true),
			release("a", "a3"),
			acquire("a", "a3", 1, true),
			release("a", ""),
		}},
		{"a delivery turned away by the total again is in the shared line once", 1, []inflightStep{
			acquire("a", "a1", 0, true),
			acquire("b", "b1", 0, false),
			acquire("b", "b1", 0, false),
			acquire("c", "c1", 0, false),
			release("a", "b1"),
			acquire("b", "b1", 0, true),
			release("b", "c1"),
			acquire("c", "c1", 0, true),
			release("c", ""),
		}},
		{"a release wakes the endpoint's own line before the shared line", 3, []inflightStep{
			acquire("a", "a1", 1, true),
			acquire("a", "a2", 1, false), // a's line
			acquire("b", "b1", 0, true),
			acquire("b", "b2", 0, true),
			acquire("c", "c1", 0, false), // the shared line
			release("a", "a2"),
			release("b", "c1"),
		}},
		{"a release of an endpoint with an empty line wakes the shared line, not another endpoint's line", 3, []inflightStep{
			acquire("a", "a1", 1, true),
			acquire("a", "a2", 1, false), // a's line
			acquire("b", "b1", 0, true),
			acquire("b", "b2", 0, true),
			acquire("c", "c1", 0, false), // the shared line
			release("b", "c1"),
			release("b", ""),
			release("a", "a2"),
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var woken []types.NamespacedName
			l := newInflightLimiter(tc.total, func(d types.NamespacedName) { woken = append(woken, d) })
			for i, s := range tc.steps {
				step := fmt.Sprintf("step %d (%s of %s)", i+1, s.op, s.endpoint)
				if s.op == "acquire" {
					step = fmt.Sprintf("step %d (acquire of %s for %s, limit %d)", i+1, s.endpoint, s.delivery, s.limit)
				}
				switch s.op {
				case "acquire":
					if got := l.tryAcquire(nn(s.endpoint), nn(s.delivery), s.limit); got != s.want {
						t.Fatalf("%s: tryAcquire = %v, want %v", step, got, s.want)
					}
				case "release":
					before := len(woken)
					l.release(nn(s.endpoint))
					got := woken[before:]
					var want []types.NamespacedName
					if s.wakes != "" {
						want = []types.NamespacedName{nn(s.wakes)}
					}
					if !slices.Equal(got, want) {
						t.Fatalf("%s: woke %v, want %v", step, got, want)
					}
				default:
					t.Fatalf("unknown step %q", s.op)
				}
			}
		})
	}
}

// Without a wake callback a release still frees the slot.
func TestInflightLimiterWithoutWake(t *testing.T) {
	l := newInflightLimiter(1, nil)
	if !l.tryAcquire(nn("a"), nn("a1"), 1) || l.tryAcquire(nn("a"), nn("a2"), 1) {
		t.Fatal("the first attempt should get the slot and the second wait")
	}
	l.release(nn("a"))
	if !l.tryAcquire(nn("a"), nn("a2"), 1) {
		t.Fatal("the released slot was not freed")
	}
}
