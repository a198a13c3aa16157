package server

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
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

// Undecided claims (an attestor's backend failed) are tried again, first
// after retryMin, then with a doubling wait up to retryMax, at most
// retryParallel at a time, while their proxy stays connected.
const (
	retryMin      = time.Second
	retryMax      = time.Minute
	retryParallel = 16
)

// identityState is the server's record of the identities it serves over
// SDS: soft state, rebuilt as proxies connect.
type identityState struct {
	ids     map[string]spiffeid.ID   // proxy id -> proven identity
	renewAt map[string]time.Time     // proxy id -> when its certificate is renewed
	pending map[string]*pendingClaim // proxy id -> a claim to try again
	wake    chan struct{}
	retry   chan struct{}
}

// pendingClaim is a sidecar's claim that no attestor could decide.
type pendingClaim struct {
	claim   identity.Claim
	next    time.Time
	backoff time.Duration
}

// initIdentity prepares the identity state; New calls it.
func (s *Server) initIdentity() {
	s.ident = identityState{ids: map[string]spiffeid.ID{}, renewAt: map[string]time.Time{}, pending: map[string]*pendingClaim{},
		wake: make(chan struct{}, 1), retry: make(chan struct{}, 1)}
	if s.opts.Identity != nil {
		s.in.TrustBundle = s.opts.Identity.RootsPEM()
	}
}

// attestation is the outcome of a sidecar's claim; retry holds a claim
// that no attestor could decide.
type attestation struct {
	id    spiffeid.ID
	ok    bool
	retry *identity.Claim
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
	claim := identity.Claim{Namespace: spec.Service.Namespace, Service: spec.Service.Name, Token: token}
	sid, err := s.opts.Identity.Attest(ctx, claim, identity.ViaXDS)
	switch {
	case err == nil:
		return &attestation{id: sid, ok: true}
	case errors.Is(err, identity.ErrUnproven):
		return &attestation{}
	default:
		return &attestation{retry: &claim}
	}
}

// attachIdentityLocked gives a newly connected sidecar the certificate of its
// proven identity (before its first build). An unproven one gets none; an
// undecided one gets none for now and its claim is tried again
// (retryClaims).
func (s *Server) attachIdentityLocked(p *proxy, att *attestation) {
	delete(s.ident.pending, p.id)
	if att == nil || s.opts.Identity == nil {
		return
	}
	if att.retry != nil {
		s.ident.pending[p.id] = &pendingClaim{claim: *att.retry, next: time.Now().Add(retryMin), backoff: retryMin}
		select {
		case s.ident.retry <- struct{}{}:
		default:
		}
		return
	}
	if !att.ok {
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
	retried := make(chan struct{})
	go func() { defer close(retried); s.retryClaims(ctx) }()
	go func() {
		defer close(done)
		defer func() { <-retried }()
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
		s.parts = nil // built with the previous bundle
	}
	used := map[spiffeid.ID]bool{}
	var next time.Time
	shared := s.partsLocked()
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

// retryClaims tries the undecided claims of connected sidecars again when
// they are due, until ctx ends. A claim proven now gives its proxy the
// certificate (and a rebuild); a refused one is dropped (the refusal is
// counted by the authority, as every attempt is); one still undecided
// waits twice as long.
func (s *Server) retryClaims(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := s.retryDue(ctx, time.Now())
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-s.ident.retry:
		case <-timer.C:
		}
	}
}

// retryDue attests the due claims (outside the lock) and returns when the
// next one is due.
func (s *Server) retryDue(ctx context.Context, now time.Time) time.Time {
	s.mu.Lock()
	due := map[string]*pendingClaim{}
	for pid, pc := range s.ident.pending {
		if _, ok := s.proxies[pid]; !ok {
			delete(s.ident.pending, pid)
			continue
		}
		if !now.Before(pc.next) {
			due[pid] = pc
		}
	}
	s.mu.Unlock()

	type outcome struct {
		id  spiffeid.ID
		err error
	}
	var (
		g        errgroup.Group
		mu       sync.Mutex
		outcomes = make(map[string]outcome, len(due))
	)
	g.SetLimit(retryParallel)
	for pid, pc := range due {
		g.Go(func() error {
			actx, cancel := context.WithTimeout(ctx, attestTimeout)
			defer cancel()
			id, err := s.opts.Identity.Attest(actx, pc.claim, identity.ViaXDS)
			mu.Lock()
			outcomes[pid] = outcome{id, err}
			mu.Unlock()
			return nil
		})
	}
	_ = g.Wait()

	s.mu.Lock()
	defer s.mu.Unlock()
	shared := s.partsLocked()
	for pid, o := range outcomes {
		p, live := s.proxies[pid]
		if pc := s.ident.pending[pid]; !live || pc != due[pid] {
			continue // gone, or connected again with a claim of its own
		}
		switch {
		case o.err == nil:
			delete(s.ident.pending, pid)
			s.ident.ids[pid] = o.id
			if s.refreshCertLocked(p) {
				s.rebuildLocked(p, shared, time.Now())
			}
			s.log.Info("identity: claim proven on a later attempt", "proxy", pid, "spiffe_id", o.id.String())
			select {
			case s.ident.wake <- struct{}{}:
			default:
			}
		case errors.Is(o.err, identity.ErrUnproven):
			delete(s.ident.pending, pid)
		case ctx.Err() == nil:
			pc := s.ident.pending[pid]
			pc.backoff = min(2*pc.backoff, retryMax)
			pc.next = time.Now().Add(pc.backoff)
		}
	}
	var next time.Time
	for _, pc := range s.ident.pending {
		if next.IsZero() || pc.next.Before(next) {
			next = pc.next
		}
	}
	return next
}
