package filter

import (
	"slices"

	"github.com/google/cel-go/checker"
	"github.com/google/cel-go/common/types"
)

// sizes tells the cost estimator how large each part of an event can be: the intake's bounds.
// Without them CEL assumes any list or string may be unbounded, and every loop would be refused.
type sizes struct{}

// EstimateSize bounds the sizes of the event's fields, by path from the variable event.
func (sizes) EstimateSize(n checker.AstNode) *checker.SizeEstimate {
	p := n.Path()
	if len(p) < 2 || p[0] != "event" {
		return nil
	}
	bound := func(max uint64) *checker.SizeEstimate { return &checker.SizeEstimate{Min: 0, Max: max} }
	switch {
	case slices.Equal(p[1:], []string{"event_id"}):
		return bound(MaxEventIDLength)
	case slices.Equal(p[1:], []string{"event_type"}):
		return bound(maxEventTypeLen)
	case slices.Equal(p[1:], []string{"organization_id"}):
		return bound(MaxOrganizationID)
	case slices.Equal(p[1:], []string{"document", "document_id"}):
		return bound(MaxDocumentID)
	case slices.Equal(p[1:], []string{"document", "document_name"}):
		return bound(MaxDocumentName)
	case slices.Equal(p[1:], []string{"document", "tag_ids"}):
		return bound(MaxTagIDs)
	case slices.Equal(p[1:], []string{"document", "tag_ids", "@items"}):
		return bound(MaxTagIDLength)
	case p[1] == "data" || (len(p) > 2 && p[1] == "document" && p[2] == "metadata"):
		// Anything inside the body: a string is at most the body, and a list or an object holds
		// at most half as many entries as the body has bytes (each takes a value and a comma).
		switch n.Type().Kind() {
		case types.ListKind, types.MapKind:
			return bound(MaxBodyBytes / 2)
		}
		return bound(MaxBodyBytes)
	}
	return nil
}

// EstimateCallCost leaves every function to CEL's own estimates.
func (sizes) EstimateCallCost(string, string, *checker.AstNode, []checker.AstNode) *checker.CallEstimate {
	return nil
}
