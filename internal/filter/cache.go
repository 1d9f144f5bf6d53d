package filter

import (
	"container/list"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	webhooksv1alpha1 "github.com/docrouter/webhook-operator/api/v1alpha1"
)

// DefaultCacheSize bounds the programs a Cache keeps: one per endpoint with a filter.
const DefaultCacheSize = 4096

// Cache keeps the compiled filter of each endpoint, keyed by the endpoint's UID and generation:
// an expression is compiled once per generation of its endpoint, not once per event. It holds
// at most size entries, the least recently used going first (an endpoint that was deleted
// leaves that way). It is safe for concurrent use.
type Cache struct {
	size int

	mu      sync.Mutex
	order   *list.List // front: most recently used; values are *cacheEntry
	entries map[types.UID]*list.Element
}

type cacheEntry struct {
	uid        types.UID
	generation int64
	expr       string
	program    *Program
	err        error
}

// NewCache makes a cache of at most size programs (DefaultCacheSize when size <= 0).
func NewCache(size int) *Cache {
	if size <= 0 {
		size = DefaultCacheSize
	}
	return &Cache{size: size, order: list.New(), entries: map[types.UID]*list.Element{}}
}

// For is the compiled spec.filter of ep: nil and no error when it has none, the compile error
// (a sentence) when it does not compile.
func (c *Cache) For(ep *webhooksv1alpha1.WebhookEndpoint) (*Program, error) {
	expr := ep.Spec.Filter
	if expr == "" {
		return nil, nil
	}
	c.mu.Lock()
	if el, ok := c.entries[ep.UID]; ok {
		e := el.Value.(*cacheEntry)
		if e.generation == ep.Generation && e.expr == expr {
			c.order.MoveToFront(el)
			c.mu.Unlock()
			return e.program, e.err
		}
	}
	c.mu.Unlock()

	// Compiled outside the lock: two callers may compile the same expression once each, which
	// is cheaper than holding every other endpoint's evaluation behind one compilation.
	program, err := Compile(expr)

	c.mu.Lock()
	defer c.mu.Unlock()
	e := &cacheEntry{uid: ep.UID, generation: ep.Generation, expr: expr, program: program, err: err}
	if el, ok := c.entries[ep.UID]; ok {
		el.Value = e
		c.order.MoveToFront(el)
	} else {
		c.entries[ep.UID] = c.order.PushFront(e)
	}
	for c.order.Len() > c.size {
		oldest := c.order.Back()
		delete(c.entries, oldest.Value.(*cacheEntry).uid)
		c.order.Remove(oldest)
	}
	return program, err
}

// Len is the number of programs held.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
