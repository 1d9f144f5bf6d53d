package stack

import (
	"context"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/docrouter/webhook-operator/controllers"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/history"
)

// setupOperator registers the controllers with mgr, as main.go does, delivering to any address
// (the tests' receivers are on loopback).
func setupOperator(ctx context.Context, mgr ctrl.Manager, opts controllers.Options, _ history.Store) error {
	return controllers.Setup(ctx, mgr, dispatcher.NewSender(dispatcher.SenderOptions{}), opts, nil)
}
