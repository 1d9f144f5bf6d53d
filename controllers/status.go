package controllers

import (
	"context"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
)

// patchStatus merge-patches the status of obj from base, its copy as read, and writes nothing
// when nothing changed. Both reconcilers write status only through it: a merge patch of the
// fields that changed never collides with a user annotating the object, as an Update would.
func patchStatus[T client.Object](ctx context.Context, c client.Client, base, obj T) error {
	patch := client.MergeFrom(base)
	data, err := patch.Data(obj)
	if err != nil {
		return err
	}
	if string(data) == "{}" {
		return nil
	}
	return c.Status().Patch(ctx, obj, client.RawPatch(patch.Type(), data))
}

// waitError says why an object cannot be acted on now: a condition its owner can fix (a
// missing endpoint or Secret, a paused or disabled endpoint), reported in its conditions
// rather than retried as an API failure. Callers match it with errors.As.
type waitError struct {
	// Reason and Message become the object's Ready condition.
	Reason, Message string
	// RequeueAfter is when to look again; 0 when a watch brings the change (an endpoint that is
	// unpaused or re-enabled wakes its deliveries).
	RequeueAfter time.Duration
}

func (e *waitError) Error() string { return e.Message }
