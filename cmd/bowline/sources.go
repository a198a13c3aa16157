package main

import (
	"log/slog"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// sourcesFor lists, in one place, the discovery sources and extra
// configuration sources that the startup configuration enables. The file
// registry is always on. Registry blocks (consul, nomad, kubernetes) are read
// at startup: changing them needs a restart.
func sourcesFor(cfg *config.Config, store *config.Store, log *slog.Logger) ([]discovery.Source, []config.FileSource, error) {
	sources := []discovery.Source{file.New(store)}
	var fileSources []config.FileSource
	// consul: adapters/consul (and Consul KV as a config source).
	// nomad: adapters/nomad.
	// kubernetes: adapters/kubernetes.
	return sources, fileSources, nil
}
