package stack

import (
	"context"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/docrouter/webhook-operator/controllers"
	"github.com/docrouter/webhook-operator/dispatcher"
	"github.com/docrouter/webhook-operator/internal/history"
)

// setupOperator registers the controllers with mgr, as main.go does, delivering to any address
// (the tests' receivers are on loopback) and archiving into store.
func setupOperator(ctx context.Context, mgr ctrl.Manager, opts controllers.Options, store history.Store) error {
	_, err := controllers.Setup(ctx, mgr, opts, controllers.Deps{Sender: dispatcher.NewSender(dispatcher.SenderOptions{}), Store: store})
	return err
}
