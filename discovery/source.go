package discovery

import "context"

// Source is a discovery adapter. Run blocks until ctx is cancelled, sending the
// source's full state on updates each time it changes. A source that loses its
// registry sends a State with Err set and no services: the catalog then keeps
// the last good state (fail-static) and reports the source as degraded.
type Source interface {
	Name() string
	Run(ctx context.Context, updates chan<- State) error
}

// State is the full state of one source at one moment.
type State struct {
	// Source is the name of the source (filled in by the catalog when empty).
	Source string
	// Services is the complete set of services the source knows. Ignored when
	// Err is set. The catalog keeps them and never modifies them: a source
	// must not modify them once sent either, and may send the same ones again
	// in a later state (the catalog merges again only the services that are
	// not the very ones it merged last time).
	Services []*Service
	// Err reports that the source cannot currently reach its registry.
	Err error
}
