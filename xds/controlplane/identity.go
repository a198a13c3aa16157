package controlplane

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/identity"
)

// AttestorsFunc returns the attestors, besides join tokens, that a startup
// configuration turns on (identity { attest { … } }). They are tried after
// the join tokens, in the order returned.
type AttestorsFunc func(startup *config.Config, env AttestEnv) ([]identity.Attestor, error)

// AttestEnv is what the server offers the attestors.
type AttestEnv struct {
	TrustDomain spiffeid.TrustDomain
	// ServiceIdentities returns the SPIFFE IDs of a service's endpoints in
	// the current catalog snapshot (none for an unknown service).
	ServiceIdentities func(namespace, service string) []string
	Log               *slog.Logger
}

// serviceIdentities reads a service's endpoint identities from the catalog.
func serviceIdentities(cat *discovery.Catalog) func(namespace, service string) []string {
	return func(namespace, service string) []string {
		svc, ok := cat.Snapshot().Service(discovery.ServiceKey{Namespace: namespace, Name: service})
		if !ok {
			return nil
		}
		out := make([]string, 0, len(svc.Endpoints))
		for _, e := range svc.Endpoints {
			if e.Identity != "" {
				out = append(out, e.Identity)
			}
		}
		return out
	}
}

// newIdentity loads the mesh CA: the operator's (identity { ca_cert_file,
// ca_key_file }) or the one generated in the data directory (in memory
// without one). The trust domain and the CA files are read at startup; the
// join tokens and the certificate lifetime follow the configuration; the
// other attestors (opts.Attestors) are built at startup.
func newIdentity(opts Options, store *config.Store, cat *discovery.Catalog, log *slog.Logger, reg prometheus.Registerer) (*identity.Authority, error) {
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
	attestors := identity.Attestors{identity.NewJoinTokens(td, func() []identity.JoinToken { return joinTokens(current()) })}
	if opts.Attestors != nil {
		more, err := opts.Attestors(startup, AttestEnv{TrustDomain: td, ServiceIdentities: serviceIdentities(cat), Log: log})
		if err != nil {
			return nil, err
		}
		for _, a := range more {
			log.Info("identity: attestor on", "attestor", a.Name())
		}
		attestors = append(attestors, more...)
	}
	return identity.NewAuthority(identity.AuthorityOptions{
		CA:         ca,
		Attestor:   attestors,
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

// xdsCredentials are the xDS server's transport credentials: TLS with a
// certificate of the mesh CA when opts.XDSTLS is set (reissued at
// half-life), else none (plaintext).
func (cp *ControlPlane) xdsCredentials() (grpc.ServerOption, error) {
	if !cp.opts.XDSTLS {
		return grpc.EmptyServerOption{}, nil
	}
	// The configured address (which may be a name), the address bound, and
	// the operator's extra names.
	extra := slices.Clone(cp.opts.XDSTLSHosts)
	if host, _, err := net.SplitHostPort(cp.xdsLis.Addr().String()); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			extra = append(extra, host)
		}
	}
	hosts, err := identity.ServerHosts(cp.opts.XDSAddr, extra)
	if err != nil {
		return nil, err
	}
	cert, err := identity.NewServerCertificate(cp.Identity.CA(), hosts, func() time.Duration { return cp.currentConfig().CertTTL() }, cp.log.With("component", "identity"))
	if err != nil {
		return nil, fmt.Errorf("xds: TLS: %w", err)
	}
	return grpc.Creds(credentials.NewTLS(cert.TLSConfig())), nil
}

// currentConfig is the configuration in force (an empty one before the
// first is loaded).
func (cp *ControlPlane) currentConfig() *config.Config {
	if c := cp.Store.Current(); c != nil {
		return c
	}
	return &config.Config{}
}
