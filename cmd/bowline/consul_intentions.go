package main

import (
	"log/slog"

	"github.com/bowlinemesh/bowline/adapters/consul"
	"github.com/bowlinemesh/bowline/config"
)

// consulIntentions is the configuration source of `consul { intentions =
// true }`: Consul's intentions as authorization rules.
func consulIntentions(d *config.ConsulDecl, log *slog.Logger) (config.FileSource, error) {
	return consul.NewIntentions(consul.IntentionsConfig{Address: d.Address, Token: d.Token, Datacenter: d.Datacenter},
		log.With("component", "config"))
}
