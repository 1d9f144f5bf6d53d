package intake

import (
	"testing"

	"github.com/docrouter/webhook-operator/internal/filter"
)

// The filter's cost estimate sizes the largest event with the intake's bounds: they must agree,
// or an expression could be accepted that costs more than its estimate on a real event.
func TestFilterSizeHintsAreTheIntakeBounds(t *testing.T) {
	for _, b := range []struct {
		name          string
		intake, hints int
	}{
		{"body bytes", MaxBodyBytes, filter.MaxBodyBytes},
		{"event id length", maxEventIDLength, filter.MaxEventIDLength},
		{"organization id length", maxOrganizationID, filter.MaxOrganizationID},
		{"document id length", maxDocumentID, filter.MaxDocumentID},
		{"document name length", maxDocumentName, filter.MaxDocumentName},
		{"tag ids", maxTagIDs, filter.MaxTagIDs},
		{"tag id length", maxTagIDLength, filter.MaxTagIDLength},
	} {
		if b.intake != b.hints {
			t.Errorf("%s: the intake accepts %d, the filter's estimate assumes %d", b.name, b.intake, b.hints)
		}
	}
}
