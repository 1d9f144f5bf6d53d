// Package dispatcher holds everything about a webhook on the wire: the payload, its signature,
// the HTTP sender and how a result is classified, and the retry schedule.
//
// It deliberately imports neither controller-runtime nor the API types: plain inputs (URL, body
// bytes, key, headers, timeout) go in and a typed Result comes out, so it is testable with
// net/http/httptest alone. The controllers translate objects into these inputs.
package dispatcher
