package filter

import (
	"strings"
	"testing"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// The run-time cost limit is wired into the program: an evaluation that reaches it stops with
// an error, and the event does not match. (With CostLimit no accepted expression reaches it on
// an event the intake accepts: the compile-time estimate bounds them; this lowers the limit.)
func TestEvaluationStopsAtTheRuntimeLimit(t *testing.T) {
	p, err := compile(`event.document.tag_ids.exists(t, t == "last")`, 20)
	if err != nil {
		t.Fatal(err)
	}
	ev := &webhooksv1alpha1.Event{ID: "e", Type: webhooksv1alpha1.EventLLMCompleted}
	for range 50 {
		ev.Document.TagIDs = append(ev.Document.TagIDs, "tag")
	}
	ev.Document.TagIDs = append(ev.Document.TagIDs, "last")
	ok, err := p.Matches(NewInput(ev))
	if ok || err == nil || !strings.Contains(err.Error(), "cost limit exceeded") {
		t.Fatalf("want the cost limit to stop the evaluation, got match %v, error %v", ok, err)
	}
	ev.Document.TagIDs = []string{"last"}
	if ok, err := p.Matches(NewInput(ev)); !ok || err != nil {
		t.Fatalf("within the limit: want a match, got %v, %v", ok, err)
	}
}
