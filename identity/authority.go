package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Ways a claim reaches the authority (the "via" label of the metrics).
const (
	ViaXDS  = "xds"  // an Envoy sidecar's token in its node metadata
	ViaSign = "sign" // a signing request (bowline bootstrap grpc --cert-dir)
)

// AuthorityOptions configure an Authority.
type AuthorityOptions struct {
	CA       *CA
	Attestor Attestor
	// TTL returns the lifetime of new certificates (default 24h); it is
	// called for every certificate so that configuration changes apply.
	TTL        func() time.Duration
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Authority is the CA as the rest of the server sees it: it attests claims
// (counting and logging the failures), issues and renews the certificates of
// the identities served over SDS, signs CSRs, and serves the trust bundle.
type Authority struct {
	ca       *CA
	attestor Attestor
	ttl      func() time.Duration
	log      *slog.Logger
	failures *prometheus.CounterVec
	issued   *prometheus.CounterVec

	mu        sync.Mutex
	workloads map[spiffeid.ID]*Certificate
}

// NewAuthority returns an authority.
func NewAuthority(o AuthorityOptions) *Authority {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.TTL == nil {
		o.TTL = func() time.Duration { return 24 * time.Hour }
	}
	if o.Attestor == nil {
		o.Attestor = Attestors(nil)
	}
	a := &Authority{
		ca: o.CA, attestor: o.Attestor, ttl: o.TTL, log: o.Log, workloads: map[spiffeid.ID]*Certificate{},
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bowline_identity_attestation_failures_total",
			Help: "Identity claims refused: no proof, a wrong proof, or a proof for another identity. No certificate was given.",
		}, []string{"via", "reason"}),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bowline_identity_certificates_issued_total",
			Help: "Workload certificates issued, by delivery (sds: key made by the server; csr: key kept by the workload).",
		}, []string{"via"}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(a.failures, a.issued)
	}
	return a
}

// CA returns the authority's CA.
func (a *Authority) CA() *CA { return a.ca }

// TrustDomain is the mesh's trust domain.
func (a *Authority) TrustDomain() spiffeid.TrustDomain { return a.ca.TrustDomain() }

// RootsPEM is the trust bundle.
func (a *Authority) RootsPEM() []byte { return a.ca.RootsPEM() }

// Subscribe signals changes of the trust bundle or of the signing CA.
func (a *Authority) Subscribe() (<-chan struct{}, func()) { return a.ca.Subscribe() }

// Issued lists the unexpired certificates issued (never their keys).
func (a *Authority) Issued() []IssuedCert { return a.ca.Issued() }

// Attest checks a claim. A refusal is logged (never with the token) and
// counted in bowline_identity_attestation_failures_total.
func (a *Authority) Attest(ctx context.Context, c Claim, via string) (spiffeid.ID, error) {
	id, err := a.attestor.Attest(ctx, c)
	if err == nil {
		return id, nil
	}
	reason := "error"
	switch {
	case c.Token == "":
		reason = "no_token"
	case errors.Is(err, ErrMismatch):
		reason = "mismatch"
	case errors.Is(err, ErrUnproven):
		reason = "unproven"
	}
	a.failures.WithLabelValues(via, reason).Inc()
	a.log.Warn("identity: claim refused; no certificate given", "claim", c.String(), "via", via, "reason", reason, "err", err)
	return spiffeid.ID{}, err
}

// Certificate returns the current certificate (with its key) of an identity
// served over SDS: one per identity, shared by its proxies, reissued once it
// has lived half its life or when another CA certificate signs now.
func (a *Authority) Certificate(id spiffeid.ID) (*Certificate, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.ca.now()
	if c, ok := a.workloads[id]; ok && now.Before(c.RenewAt()) && c.Issuer == a.ca.SignerSerial() {
		return c, nil
	}
	c, err := a.ca.Issue(id, a.ttl())
	if err != nil {
		return nil, err
	}
	a.issued.WithLabelValues("sds").Inc()
	a.workloads[id] = c
	return c, nil
}

// Forget drops an identity's certificate (its last proxy left).
func (a *Authority) Forget(id spiffeid.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.workloads, id)
}

// Sign attests a claim and signs the DER CSR of its workload.
func (a *Authority) Sign(ctx context.Context, c Claim, csrDER []byte) (*Certificate, error) {
	id, err := a.Attest(ctx, c, ViaSign)
	if err != nil {
		return nil, err
	}
	cert, err := a.ca.SignCSR(csrDER, id, a.ttl())
	if err != nil {
		return nil, err
	}
	a.issued.WithLabelValues("csr").Inc()
	a.log.Info("identity: certificate signed", "spiffe_id", id.String(), "serial", cert.Serial, "not_after", cert.NotAfter)
	return cert, nil
}

// Rotate runs one phase of a root rotation, waiting at least one
// certificate lifetime between phases unless forced.
func (a *Authority) Rotate(ctx context.Context, phase Phase, force bool) (RotationStatus, error) {
	if err := a.ca.Rotate(ctx, phase, a.ttl(), force); err != nil {
		return a.ca.Status(), err
	}
	return a.ca.Status(), nil
}

// String names the authority in logs.
func (a *Authority) String() string {
	return fmt.Sprintf("identity authority for %s", a.ca.TrustDomain().Name())
}
