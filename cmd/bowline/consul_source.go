package main

import (
	"log/slog"

	"github.com/bowlinemesh/bowline/adapters/consul"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// consulSources builds the Consul discovery source of a `consul` block and,
// when the block sets kv_prefix, the Consul KV configuration source (nil
// otherwise). An empty token falls back to CONSUL_HTTP_TOKEN in the adapter.
func consulSources(d *config.ConsulDecl, trustDomain string, log *slog.Logger) (discovery.Source, config.FileSource, error) {
	src, err := consul.New(consul.Config{
		Address:     d.Address,
		Token:       d.Token,
		Datacenter:  d.Datacenter,
		TrustDomain: trustDomain,
		MaxConns:    d.MaxConns,
	}, log.With("component", "consul"))
	if err != nil {
		return nil, nil, err
	}
	if d.KVPrefix == "" {
		return src, nil, nil
	}
	kv, err := consul.NewKV(consul.KVConfig{
		Address:    d.Address,
		Token:      d.Token,
		Datacenter: d.Datacenter,
		Prefix:     d.KVPrefix,
	}, log.With("component", "config"))
	if err != nil {
		return nil, nil, err
	}
	return src, kv, nil
}
