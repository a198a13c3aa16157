package main

import (
	"log/slog"

	"github.com/bowlinemesh/bowline/adapters/nomad"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// nomadSource builds the Nomad discovery source of a `nomad` block.
func nomadSource(d *config.NomadDecl, trustDomain string, log *slog.Logger) (discovery.Source, error) {
	return nomad.New(nomad.Config{
		Address:     d.Address,
		Token:       d.Token,
		Namespace:   d.Namespace,
		Region:      d.Region,
		CAFile:      d.CAFile,
		CertFile:    d.CertFile,
		KeyFile:     d.KeyFile,
		TrustDomain: trustDomain,
	}, log.With("component", "nomad"))
}
