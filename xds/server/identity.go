package server

import (
	"context"
	"crypto/sha256"
	"fmt"
	"maps"
	"slices"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// Node metadata for identities, written by `bowline bootstrap`.
const (
	// MetaToken is an Envoy sidecar's proof of identity (a join token). The
	// sidecar receives its certificate over SDS only once it is proven.
	MetaToken = "token"
	// MetaCertProvider is, for proxyless gRPC, the certificate provider
	// instance of the bootstrap that holds the workload's certificate.
	MetaCertProvider = "cert_provider"
)

// Identity is what the server needs from the mesh CA (identity.Authority).
type Identity interface {
	// Attest checks a claim; refusals are logged and counted by it.
	Attest(ctx context.Context, c identity.Claim, via string) (spiffeid.ID, error)
	// Certificate returns the identity's current certificate and key,
	// reissued at half-life.
	Certificate(id spiffeid.ID) (*identity.Certificate, error)
	// Forget drops an identity no proxy uses any more.
	Forget(id spiffeid.ID)
	// RootsPEM is the trust bundle.
	RootsPEM() []byte
	// Subscribe signals changes of the bundle or of the signing CA.
	Subscribe() (<-chan struct{}, func())
}

var _ Identity = (*identity.Authority)(nil)

// attestTimeout bounds one attestation (an attestor may call its backend).
const attestTimeout = 10 * time.Second

// identityState is the server's record of the identities it serves over
// SDS: soft state, rebuilt as proxies connect.
type identityState struct {
	ids     map[string]spiffeid.ID // proxy id -> proven identity
	renewAt map[string]time.Time   // proxy id -> when its certificate is renewed
	wake    chan struct{}
}

// initIdentity prepares the identity state; New calls it.
func (s *Server) initIdentity() {
	s.ident = identityState{ids: map[string]spiffeid.ID{}, renewAt: map[string]time.Time{}, wake: make(chan struct{}, 1)}
	if s.opts.Identity != nil {
		s.in.TrustBundle = s.opts.Identity.RootsPEM()
	}
}

// attestation is the outcome of a sidecar's claim.
type attestation struct {
	id spiffeid.ID
	ok bool
}

// certProviderFromNode reads a proxyless gRPC client's certificate provider.
func certProviderFromNode(fields map[string]*structpb.Value) *translate.ProxyTLS {
	if v := fields[MetaCertProvider].GetStringValue(); v != "" {
		return &translate.ProxyTLS{CertProvider: v}
	}
	return nil
}

// attestStream checks the identity claim of a sidecar on its stream's first
// request. It runs before the server's lock is taken, as an attestor may
// take time. Streams already attached, proxyless gRPC (which gets its
// certificate from the signing service, not over xDS) and sidecars that
// present no token in a service whose mTLS is disabled are not attested.
func (s *Server) attestStream(id int64, node *core.Node) *attestation {
	if s.opts.Identity == nil {
		return nil
	}
	s.mu.Lock()
	st := s.streams[id]
	attached := st != nil && st.nodeID != ""
	cfg := s.in.Config
	s.mu.Unlock()
	if attached || node.GetId() == "" {
		return nil
	}
	spec, err := ProxyFromNode(node)
	if err != nil || spec.Kind != translate.KindSidecar {
		return nil
	}
	token := node.GetMetadata().GetFields()[MetaToken].GetStringValue()
	if token == "" && cfg.MTLSModeFor(spec.Service.Namespace, spec.Service.Name) == config.MTLSDisabled {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), attestTimeout)
	defer cancel()
	sid, err := s.opts.Identity.Attest(ctx, identity.Claim{Namespace: spec.Service.Namespace, Service: spec.Service.Name, Token: token}, identity.ViaXDS)
	if err != nil {
		return &attestation{}
	}
	return &attestation{id: sid, ok: true}
}

// attachIdentityLocked gives a newly connected sidecar the certificate of its
// proven identity (before its first build). An unproven one gets none.
func (s *Server) attachIdentityLocked(p *proxy, att *attestation) {
	if att == nil || !att.ok || s.opts.Identity == nil {
		return
	}
	s.ident.ids[p.id] = att.id
	s.refreshCertLocked(p)
	select {
	case s.ident.wake <- struct{}{}:
	default:
	}
}

// refreshCertLocked puts the identity's current certificate in the proxy's
// spec and reports whether it changed.
func (s *Server) refreshCertLocked(p *proxy) bool {
	id, ok := s.ident.ids[p.id]
	if !ok {
		return false
	}
	cert, err := s.opts.Identity.Certificate(id)
	if err != nil {
		s.log.Error("identity: certificate not issued; the proxy keeps its previous one", "proxy", p.id, "spiffe_id", id.String(), "err", err)
		s.ident.renewAt[p.id] = time.Now().Add(10 * time.Second) // try again soon
		return false
	}
	s.ident.renewAt[p.id] = cert.RenewAt()
	if p.spec.TLS != nil && string(p.spec.TLS.CertChain) == string(cert.ChainPEM) {
		return false
	}
	p.spec.TLS = &translate.ProxyTLS{SPIFFEID: id.String(), CertChain: cert.ChainPEM, PrivateKey: cert.KeyPEM}
	return true
}

// tlsKey is the part of a proxy's sharing key that its identity adds.
func tlsKey(t *translate.ProxyTLS) string {
	if t == nil {
		return ""
	}
	h := sha256.Sum256(t.CertChain)
	return fmt.Sprintf("|tls:%s:%s:%x", t.CertProvider, t.SPIFFEID, h[:8])
}

// startIdentity follows the CA: it renews the certificates of connected
// sidecars at half-life and, when the trust bundle or the signing CA
// changes, rebuilds every proxy that has an identity. It returns a function
// that waits for it to stop (after ctx ends).
func (s *Server) startIdentity(ctx context.Context) func() {
	done := make(chan struct{})
	if s.opts.Identity == nil {
		close(done)
		return func() {}
	}
	changes, cancel := s.opts.Identity.Subscribe()
	go func() {
		defer close(done)
		defer cancel()
		timer := time.NewTimer(time.Hour)
		defer timer.Stop()
		for {
			next := s.renewDue(time.Now(), false)
			wait := time.Hour
			if !next.IsZero() {
				wait = max(time.Until(next), 0)
			}
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-changes:
				s.renewDue(time.Now(), true)
			case <-s.ident.wake:
			case <-timer.C:
			}
		}
	}()
	return func() { <-done }
}

// renewDue renews the certificates that reached their half-life (all of
// them, and the bundle, when the CA changed), rebuilds those proxies, forgets
// disconnected ones, and returns the next renewal time.
func (s *Server) renewDue(now time.Time, caChanged bool) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if caChanged {
		s.in.TrustBundle = s.opts.Identity.RootsPEM()
	}
	used := map[spiffeid.ID]bool{}
	var next time.Time
	shared := map[string]*built{}
	for _, pid := range slices.Sorted(maps.Keys(s.ident.ids)) {
		p, ok := s.proxies[pid]
		if !ok {
			delete(s.ident.renewAt, pid)
			continue
		}
		used[s.ident.ids[pid]] = true
		if caChanged || !now.Before(s.ident.renewAt[pid]) {
			changed := s.refreshCertLocked(p)
			if changed || caChanged {
				s.rebuildLocked(p, shared, now)
			}
		}
		if at := s.ident.renewAt[pid]; next.IsZero() || at.Before(next) {
			next = at
		}
	}
	for pid, id := range s.ident.ids {
		if _, ok := s.proxies[pid]; !ok {
			delete(s.ident.ids, pid)
			if !used[id] {
				s.opts.Identity.Forget(id)
			}
		}
	}
	if caChanged {
		// Proxies without an identity (proxyless gRPC with TLS) do not hold
		// the bundle; nothing else to rebuild.
		s.log.Info("identity: trust bundle or signing CA changed; certificates reissued", "proxies", len(used))
	}
	return next
}
