// Package filter compiles and evaluates an endpoint's spec.filter: a CEL expression over the
// event as the receiver gets it (the wire payload's field names), such as
//
//	event.organization_id == "org-1" && "invoices" in event.document.tag_ids
//
// The expression is type-checked against the payload's schema (a misspelt field is a compile
// error, not an event silently dropped), must give a bool, and is bounded twice: at compile
// time its cost is estimated for the largest event the intake accepts and refused above
// CostLimit, and at run time its evaluation stops at CostLimit. The intake evaluates it in the
// fan-out; the endpoint reconciler compiles it to report an invalid one in the endpoint's Ready
// condition. Both keep compiled programs in a Cache, one per endpoint generation.
package filter

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/interpreter"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// CostLimit bounds one evaluation, in CEL cost units (about one per operation, one per ten
// characters a string function reads). An expression whose estimated worst case exceeds it is
// refused when it is compiled, and an evaluation that reaches it is stopped. The usual filter
// (a few comparisons, "x" in tag_ids) costs under 300 units and takes about 10 µs;
// BenchmarkMatch measures one of 21,000 units (a regular expression on each of 256 tags of 256
// characters) at about 3 ms on a loaded 2-CPU machine: the intake pays it per endpoint and
// event, so the limit keeps a filter to a few such loops at most.
const CostLimit = 100_000

// The intake's bounds on an event (internal/intake/event.go; a test there checks they agree).
// They size the worst case of the cost estimate.
const (
	MaxBodyBytes      = 256 << 10
	MaxEventIDLength  = 128
	MaxOrganizationID = 256
	MaxDocumentID     = 256
	MaxDocumentName   = 1024
	MaxTagIDs         = 256
	MaxTagIDLength    = 256
	maxEventTypeLen   = 32
)

// Program is a compiled filter. It is safe for concurrent use.
type Program struct {
	prg  cel.Program
	expr string
}

// Expression is the source the program was compiled from.
func (p *Program) Expression() string { return p.expr }

// The CEL types of the payload: the checker knows every field, so `event.orgnization_id` is a
// compile error. metadata and data are free-form JSON objects: map(string, dyn).
const (
	eventTypeName    = "docrouter.Event"
	documentTypeName = "docrouter.Document"
)

var (
	jsonObjectType = types.NewMapType(types.StringType, types.DynType)
	schemaFields   = map[string]map[string]*types.Type{
		eventTypeName: {
			"event_id": types.StringType, "event_type": types.StringType, "timestamp": types.IntType,
			"organization_id": types.StringType, "document": types.NewObjectType(documentTypeName), "data": jsonObjectType,
		},
		documentTypeName: {
			"document_id": types.StringType, "document_name": types.StringType,
			"tag_ids": types.NewListType(types.StringType), "metadata": jsonObjectType,
		},
	}
)

// schema declares the payload's two object types to the checker. At run time the event is a
// map with the same keys: the fields have no getters, so the interpreter selects them as map
// keys.
type schema struct{ *types.Registry }

func (s schema) FindStructType(name string) (*types.Type, bool) {
	if _, ok := schemaFields[name]; ok {
		return types.NewTypeTypeWithParam(types.NewObjectType(name)), true
	}
	return s.Registry.FindStructType(name)
}

func (s schema) FindStructFieldNames(name string) ([]string, bool) {
	if f, ok := schemaFields[name]; ok {
		names := make([]string, 0, len(f))
		for n := range f {
			names = append(names, n)
		}
		slices.Sort(names)
		return names, true
	}
	return s.Registry.FindStructFieldNames(name)
}

func (s schema) FindStructFieldType(name, field string) (*types.FieldType, bool) {
	if f, ok := schemaFields[name]; ok {
		t, ok := f[field]
		if !ok {
			return nil, false
		}
		return &types.FieldType{Type: t}, true
	}
	return s.Registry.FindStructFieldType(name, field)
}

// environment is built once: building a CEL environment costs far more than compiling one
// expression in it.
var environment = sync.OnceValues(func() (*cel.Env, error) {
	reg, err := types.NewRegistry()
	if err != nil {
		return nil, err
	}
	return cel.NewEnv(
		cel.CustomTypeProvider(schema{reg}),
		cel.OptionalTypes(), // event.data.?total.orValue(0) > 100
		cel.CrossTypeNumericComparisons(true),
		cel.Variable("event", types.NewObjectType(eventTypeName)),
		cel.ParserExpressionSizeLimit(webhooksv1alpha1.MaxFilterLength),
	)
})

// Compile type-checks expr, estimates its worst-case cost and builds its program. The error is
// a sentence for the endpoint's Ready condition: the compiler's message, with the position.
func Compile(expr string) (*Program, error) { return compile(expr, CostLimit) }

// compile is Compile with the run-time limit as a parameter, so that a test can show that the
// limit stops an evaluation: with the size hints, the estimate bounds every evaluation of an
// accepted expression, and the run-time limit is the safety net behind it.
func compile(expr string, runtimeLimit uint64) (*Program, error) {
	env, err := environment()
	if err != nil {
		return nil, fmt.Errorf("the filter environment cannot be built: %w", err)
	}
	ast, iss := env.CompileSource(common.NewStringSource(expr, "spec.filter"))
	if iss.Err() != nil {
		return nil, fmt.Errorf("spec.filter is not a valid CEL expression over the event: %s", strings.TrimSpace(iss.Err().Error()))
	}
	if !ast.OutputType().IsExactType(types.BoolType) {
		return nil, fmt.Errorf("spec.filter must be true or false for an event, but it gives a %s: compare it, such as event.data.flag == true",
			ast.OutputType())
	}
	est, err := env.EstimateCost(ast, sizes{})
	if err != nil {
		return nil, fmt.Errorf("spec.filter's cost cannot be estimated: %w", err)
	}
	if est.Max > CostLimit {
		return nil, fmt.Errorf("spec.filter may cost up to %s on the largest event the intake accepts (%d tag ids of %d characters, a %d KiB body), "+
			"above the limit of %d: do not loop over metadata or data (they may hold %d entries) nor over tag_ids inside another loop; "+
			"test a key with has(event.data.KEY) or event.data.?KEY.orValue(DEFAULT) instead",
			costString(est.Max), MaxTagIDs, MaxTagIDLength, MaxBodyBytes>>10, CostLimit, MaxBodyBytes/2)
	}
	prg, err := env.Program(ast, cel.CostLimit(runtimeLimit), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fmt.Errorf("spec.filter cannot be prepared: %w", err)
	}
	return &Program{prg: prg, expr: expr}, nil
}

func costString(c uint64) string {
	if c == ^uint64(0) {
		return "an unbounded amount"
	}
	return fmt.Sprintf("%d", c)
}

// Matches evaluates the program on an event. An error (a key of data that the event lacks, a
// value of another type than the expression expects, the cost limit) is a sentence; the event
// does not match then.
func (p *Program) Matches(in *Input) (bool, error) {
	act, err := in.activation()
	if err != nil {
		return false, err
	}
	v, _, err := p.prg.Eval(act)
	if err != nil {
		return false, fmt.Errorf("spec.filter failed on this event: %w", err)
	}
	b, ok := v.Value().(bool)
	if !ok {
		return false, fmt.Errorf("spec.filter gave %v on this event, not true or false", v)
	}
	return b, nil
}

// Input is one event, as CEL sees it, built once for every endpoint of the fan-out.
type Input struct {
	event *webhooksv1alpha1.Event
	once  sync.Once
	act   interpreter.Activation
	err   error
}

// NewInput prepares e for evaluation; its JSON objects are decoded on first use.
func NewInput(e *webhooksv1alpha1.Event) *Input { return &Input{event: e} }

func (in *Input) activation() (interpreter.Activation, error) {
	in.once.Do(func() {
		e := in.event
		metadata, err := decodeObject(e.Document.Metadata, "document.metadata")
		if err != nil {
			in.err = err
			return
		}
		data, err := decodeObject(e.Data, "data")
		if err != nil {
			in.err = err
			return
		}
		tags := e.Document.TagIDs
		if tags == nil {
			tags = []string{}
		}
		// The payload's shape (dispatcher.Payload): absent tag_ids and metadata are [] and {}.
		in.act, in.err = interpreter.NewActivation(map[string]any{"event": map[string]any{
			"event_id": e.ID, "event_type": e.Type, "timestamp": e.Timestamp, "organization_id": e.OrganizationID,
			"document": map[string]any{
				"document_id": e.Document.DocumentID, "document_name": e.Document.DocumentName,
				"tag_ids": tags, "metadata": metadata,
			},
			"data": data,
		}})
	})
	return in.act, in.err
}

// decodeObject decodes one of the event's free-form JSON objects; absent is empty.
func decodeObject(raw *apiextensionsv1.JSON, field string) (map[string]any, error) {
	out := map[string]any{}
	if raw == nil || len(raw.Raw) == 0 || string(raw.Raw) == "null" {
		return out, nil
	}
	if err := json.Unmarshal(raw.Raw, &out); err != nil {
		return nil, fmt.Errorf("the event's %s is not a JSON object: %w", field, err)
	}
	return out, nil
}
