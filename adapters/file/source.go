// Package file is the built-in discovery source: services declared in HCL
// `service` blocks in the configuration directory. It follows the config
// store, so a file is reloaded when it changes and a rejected file keeps its
// last valid services in the mesh.
package file

import (
	"context"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// ConfigFeed publishes the configuration in force (config.Store does).
type ConfigFeed interface {
	Subscribe() (<-chan *config.Config, func())
}

// Source turns the `service` blocks of the configuration into discovery state.
type Source struct {
	feed ConfigFeed
}

var _ discovery.Source = (*Source)(nil)

// New returns a source following feed.
func New(feed ConfigFeed) *Source { return &Source{feed: feed} }

// Name implements discovery.Source.
func (s *Source) Name() string { return "file" }

// Run implements discovery.Source.
func (s *Source) Run(ctx context.Context, updates chan<- discovery.State) error {
	ch, cancel := s.feed.Subscribe()
	defer cancel()
	lastVersion := ""
	var conv converter
	for {
		select {
		case <-ctx.Done():
			return nil
		case cfg := <-ch:
			if cfg.Version == lastVersion {
				continue
			}
			lastVersion = cfg.Version
			select {
			case updates <- discovery.State{Services: conv.convert(cfg)}:
			case <-ctx.Done():
				return nil
			}
		}
	}
}
