package main

import (
	"log/slog"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/adapters/kubernetes"
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
	if c := cfg.Consul; c != nil {
		src, kv, err := consulSources(c, cfg.Mesh.TrustDomain, log)
		if err != nil {
			return nil, nil, err
		}
		sources = append(sources, src)
		if kv != nil {
			fileSources = append(fileSources, kv)
		}
		if c.Intentions {
			in, err := consulIntentions(c, log) // consul_intentions.go
			if err != nil {
				return nil, nil, err
			}
			fileSources = append(fileSources, in)
		}
	}
	if n := cfg.Nomad; n != nil {
		src, err := nomadSource(n, cfg.Mesh.TrustDomain, log)
		if err != nil {
			return nil, nil, err
		}
		sources = append(sources, src)
	}
	if k := cfg.Kubernetes; k != nil {
		client, err := kubernetes.NewClientset(k.Kubeconfig)
		if err != nil {
			return nil, nil, err
		}
		sources = append(sources, kubernetes.New(client, kubernetes.Config{TrustDomain: cfg.Mesh.TrustDomain, Namespaces: k.Namespaces},
			log.With("component", "kubernetes")))
	}
	return sources, fileSources, nil
}
