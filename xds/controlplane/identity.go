package controlplane

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/identity"
)

// newIdentity loads the mesh CA: the operator's (identity { ca_cert_file,
// ca_key_file }) or the one generated in the data directory (in memory
// without one). The trust domain and the CA files are read at startup; the
// join tokens and the certificate lifetime follow the configuration.
func newIdentity(opts Options, store *config.Store, log *slog.Logger, reg prometheus.Registerer) (*identity.Authority, error) {
	startup, err := StartupConfig(opts.ConfigDir)
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(startup.Mesh.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("identity: trust domain %q: %w", startup.Mesh.TrustDomain, err)
	}
	o := identity.Options{TrustDomain: td, Store: &identity.MemStore{}, Log: log}
	if opts.DataDir != "" {
		o.Store = identity.DirStore{Dir: opts.DataDir}
	} else {
		log.Warn("identity: no data directory: the CA lives in memory and changes at every start")
	}
	if d := startup.Identity; d != nil {
		switch {
		case d.CACertFile != "":
			if o.Operator, err = identity.LoadOperatorCA(d.CACertFile, d.CAKeyFile, d.CARootFile); err != nil {
				return nil, err
			}
		case d.CARootFile != "":
			b, err := os.ReadFile(d.CARootFile)
			if err != nil {
				return nil, fmt.Errorf("identity: ca_root_file: %w", err)
			}
			if o.ExtraRoots, err = identity.ParseCerts(b); err != nil {
				return nil, fmt.Errorf("identity: ca_root_file %s: %w", d.CARootFile, err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ca, err := identity.New(ctx, o)
	if err != nil {
		return nil, err
	}
	current := func() *config.Config {
		if c := store.Current(); c != nil {
			return c
		}
		return startup
	}
	tokens := identity.NewJoinTokens(td, func() []identity.JoinToken { return joinTokens(current()) })
	return identity.NewAuthority(identity.AuthorityOptions{
		CA:         ca,
		Attestor:   identity.Attestors{tokens},
		TTL:        func() time.Duration { return current().CertTTL() },
		Log:        log,
		Registerer: reg,
	}), nil
}

// joinTokens converts the configuration's join tokens for the attestor.
func joinTokens(c *config.Config) []identity.JoinToken {
	decls := c.JoinTokens()
	out := make([]identity.JoinToken, 0, len(decls))
	for _, d := range decls {
		t := identity.JoinToken{Namespace: d.Namespace, Service: d.Service}
		if d.Token != "" {
			t.SHA256 = identity.HashToken(d.Token)
		} else if b, err := hex.DecodeString(d.TokenSHA256); err == nil && len(b) == len(t.SHA256) {
			copy(t.SHA256[:], b)
		} else {
			continue // the decoder refused it already
		}
		out = append(out, t)
	}
	return out
}

// wireIdentity serves the signing service on the xDS port and the CA's
// endpoints on the admin API.
func (cp *ControlPlane) wireIdentity() {
	identity.RegisterSignService(cp.grpc, cp.Identity)
	cp.Admin.HandleIdentity(cp.Identity)
}
