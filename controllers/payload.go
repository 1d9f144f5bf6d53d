package controllers

import webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"

// PayloadBody is the body that every attempt of a delivery of event sends: the bytes that are
// signed and POSTed. The console and the kubectl plugin show it with it, so that what a user
// reads is what the receiver got.
func PayloadBody(event webhooksv1alpha1.Event) ([]byte, error) {
	return payloadFor(event).Body()
}
