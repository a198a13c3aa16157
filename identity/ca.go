package identity

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const (
	// rootLifetime is the validity of a generated root.
	rootLifetime = 10 * 365 * 24 * time.Hour
	// clockSkew backdates certificates so that peers whose clocks are a
	// little behind accept them.
	clockSkew = time.Minute
	// maxIssued bounds the record of issued certificates.
	maxIssued = 100_000
)

// Options configure a CA.
type Options struct {
	// TrustDomain is the mesh's trust domain (mesh { trust_domain }).
	TrustDomain spiffeid.TrustDomain
	// Store keeps the generated CA (default: a MemStore).
	Store Store
	// Operator, when set, is used instead of the generated CA.
	Operator *OperatorCA
	// ExtraRoots are trusted besides the CA's own roots.
	ExtraRoots []*x509.Certificate
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *slog.Logger
}

// OperatorCA is a CA supplied by the operator: a root or an intermediate.
type OperatorCA struct {
	// CertPEM is the signing certificate, optionally followed by the
	// intermediates above it and the root.
	CertPEM []byte
	// KeyPEM is the signing certificate's private key.
	KeyPEM []byte
	// RootsPEM are the roots to trust; empty means the last certificate of
	// CertPEM, which must then be self-signed.
	RootsPEM []byte
}

// LoadOperatorCA reads an operator-supplied CA from files (rootFile may be
// empty).
func LoadOperatorCA(certFile, keyFile, rootFile string) (*OperatorCA, error) {
	o := &OperatorCA{}
	var err error
	if o.CertPEM, err = os.ReadFile(certFile); err != nil {
		return nil, fmt.Errorf("identity: CA certificate: %w", err)
	}
	if o.KeyPEM, err = os.ReadFile(keyFile); err != nil {
		return nil, fmt.Errorf("identity: CA key: %w", err)
	}
	if rootFile != "" {
		if o.RootsPEM, err = os.ReadFile(rootFile); err != nil {
			return nil, fmt.Errorf("identity: CA roots: %w", err)
		}
	}
	return o, nil
}

// Certificate is a workload certificate (an X.509-SVID) the CA issued.
type Certificate struct {
	ID     spiffeid.ID
	Serial string
	// Chain is the leaf followed by the intermediates up to (not including)
	// a root; ChainPEM is the same in PEM.
	Chain    []*x509.Certificate
	ChainPEM []byte
	// KeyPEM is the private key when the CA generated it (Issue); empty for
	// a signed CSR, whose key never leaves the workload.
	KeyPEM   []byte
	IssuedAt time.Time
	NotAfter time.Time
	// Issuer is the serial of the CA certificate that signed it.
	Issuer string
}

// RenewAt is when the certificate has lived half its life and is reissued.
func (c *Certificate) RenewAt() time.Time {
	return c.IssuedAt.Add(c.NotAfter.Sub(c.IssuedAt) / 2)
}

// IssuedCert describes an issued certificate, without its key (GET /v1/certs).
type IssuedCert struct {
	Serial    string    `json:"serial"`
	SPIFFEID  string    `json:"spiffe_id"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// Via says how it was delivered: "sds" (key made by the server, sent to
	// an Envoy sidecar) or "csr" (signed for a workload that keeps its key).
	Via    string `json:"via"`
	Issuer string `json:"issuer"`
}

// CA signs workload certificates and keeps the trust bundle. It is safe for
// concurrent use.
type CA struct {
	td       spiffeid.TrustDomain
	store    Store
	now      func() time.Time
	log      *slog.Logger
	operator bool
	extra    []*x509.Certificate

	mu            sync.RWMutex
	state         *State // the stored state (generated CA)
	signer        crypto.Signer
	signing       *x509.Certificate
	intermediates []*x509.Certificate // sent with every leaf
	roots         []*x509.Certificate
	next          *x509.Certificate
	issued        map[string]IssuedCert
	subs          map[chan struct{}]struct{}
}

// New loads the CA: the operator's when Options.Operator is set, else the
// one in the store, generating and saving an ECDSA P-256 root on first start.
func New(ctx context.Context, o Options) (*CA, error) {
	if o.TrustDomain.IsZero() {
		return nil, errors.New("identity: a trust domain is required")
	}
	if o.Store == nil {
		o.Store = &MemStore{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	ca := &CA{td: o.TrustDomain, store: o.Store, now: o.Now, log: o.Log, extra: o.ExtraRoots,
		issued: map[string]IssuedCert{}, subs: map[chan struct{}]struct{}{}}
	if o.Operator != nil {
		ca.operator = true
		if err := ca.installOperator(o.Operator); err != nil {
			return nil, err
		}
		ca.log.Info("identity: using the operator's CA", "subject", ca.signing.Subject.String(), "serial", serialOf(ca.signing),
			"not_after", ca.signing.NotAfter, "roots", len(ca.roots))
		return ca, nil
	}
	st, err := o.Store.Load(ctx)
	if errors.Is(err, ErrNoState) {
		cert, key, err := newRoot(o.TrustDomain, o.Now())
		if err != nil {
			return nil, err
		}
		keyPEM, err := EncodeKey(key)
		if err != nil {
			return nil, err
		}
		certPEM := EncodeCerts([]*x509.Certificate{cert})
		st = &State{Cert: certPEM, Key: keyPEM, Roots: certPEM}
		if err := o.Store.Save(ctx, st); err != nil {
			return nil, err
		}
		ca.log.Info("identity: generated a new CA root", "trust_domain", o.TrustDomain.Name(), "serial", serialOf(cert), "not_after", cert.NotAfter)
	} else if err != nil {
		return nil, err
	}
	if err := ca.installState(st); err != nil {
		return nil, err
	}
	return ca, nil
}

// installState makes a stored state the CA's. Callers hold mu (or own ca).
func (ca *CA) installState(st *State) error {
	certs, err := ParseCerts(st.Cert)
	if err != nil {
		return fmt.Errorf("identity: stored CA certificate: %w", err)
	}
	key, err := ParseKey(st.Key)
	if err != nil {
		return fmt.Errorf("identity: stored CA key: %w", err)
	}
	roots, err := ParseCerts(st.Roots)
	if err != nil {
		return fmt.Errorf("identity: stored trust bundle: %w", err)
	}
	var next *x509.Certificate
	if len(st.NextCert) > 0 {
		nc, err := ParseCerts(st.NextCert)
		if err != nil {
			return fmt.Errorf("identity: stored next root: %w", err)
		}
		nk, err := ParseKey(st.NextKey)
		if err != nil {
			return fmt.Errorf("identity: stored next root key: %w", err)
		}
		if !publicKeysEqual(nc[0].PublicKey, nk.Public()) {
			return errors.New("identity: the stored next root does not match its key")
		}
		next = nc[0]
	}
	if err := ca.setSigner(certs, key, roots); err != nil {
		return err
	}
	ca.state, ca.next = st.Clone(), next
	return nil
}

func (ca *CA) installOperator(o *OperatorCA) error {
	certs, err := ParseCerts(o.CertPEM)
	if err != nil {
		return fmt.Errorf("identity: operator CA certificate: %w", err)
	}
	key, err := ParseKey(o.KeyPEM)
	if err != nil {
		return fmt.Errorf("identity: operator CA key: %w", err)
	}
	var roots []*x509.Certificate
	if len(o.RootsPEM) > 0 {
		if roots, err = ParseCerts(o.RootsPEM); err != nil {
			return fmt.Errorf("identity: operator CA roots: %w", err)
		}
	} else if last := certs[len(certs)-1]; selfSigned(last) {
		roots = []*x509.Certificate{last}
	} else {
		return errors.New("identity: the operator CA certificate file does not end with a root; set ca_root_file")
	}
	return ca.setSigner(certs, key, roots)
}

// setSigner checks and installs a signing chain (signing certificate first),
// its key and the roots.
func (ca *CA) setSigner(chain []*x509.Certificate, key crypto.Signer, roots []*x509.Certificate) error {
	signing := chain[0]
	if !signing.IsCA || signing.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("identity: certificate %s is not a CA that may sign certificates", signing.Subject)
	}
	if !publicKeysEqual(signing.PublicKey, key.Public()) {
		return errors.New("identity: the CA certificate does not match its key")
	}
	var intermediates []*x509.Certificate
	for _, c := range chain {
		if !selfSigned(c) {
			intermediates = append(intermediates, c)
		}
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, c := range intermediates {
		inter.AddCert(c)
	}
	if _, err := signing.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}, CurrentTime: ca.now()}); err != nil {
		return fmt.Errorf("identity: the CA certificate does not chain to a trusted root: %w", err)
	}
	all := slices.Clone(roots)
	for _, r := range ca.extra {
		if !slices.ContainsFunc(all, r.Equal) {
			all = append(all, r)
		}
	}
	ca.signer, ca.signing, ca.intermediates, ca.roots = key, signing, intermediates, all
	return nil
}

func selfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil
}

func serialOf(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

func randomSerial() (*big.Int, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("identity: serial: %w", err)
	}
	b[0] &= 0x7f
	b[0] |= 0x01 // never zero, never negative
	return new(big.Int).SetBytes(b[:]), nil
}

// newRoot generates a self-signed ECDSA P-256 root for the trust domain.
func newRoot(td spiffeid.TrustDomain, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: generate CA key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Bowline"}, CommonName: "Bowline CA " + td.Name() + " " + now.UTC().Format("2006-01-02T15:04:05Z")},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(rootLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: parse CA certificate: %w", err)
	}
	return cert, key, nil
}

// TrustDomain is the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Roots returns the trust bundle's certificates.
func (ca *CA) Roots() []*x509.Certificate {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return slices.Clone(ca.roots)
}

// RootsPEM returns the trust bundle as PEM.
func (ca *CA) RootsPEM() []byte { return EncodeCerts(ca.Roots()) }

// Bundle returns the trust bundle as a SPIFFE X.509 bundle.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, ca.Roots())
}

// SignerSerial is the serial of the certificate that signs leaves now.
func (ca *CA) SignerSerial() string {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return serialOf(ca.signing)
}

// Issue generates an ECDSA P-256 key and a certificate for id.
func (ca *CA) Issue(id spiffeid.ID, ttl time.Duration) (*Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: generate key: %w", err)
	}
	c, err := ca.sign(key.Public(), id, ttl, "sds", nil)
	if err != nil {
		return nil, err
	}
	if c.KeyPEM, err = EncodeKey(key); err != nil {
		return nil, err
	}
	return c, nil
}

// ErrBadCSR wraps every reason a certificate signing request is refused.
var ErrBadCSR = errors.New("identity: bad certificate signing request")

// SignCSR signs the public key of a DER certificate signing request for id.
// Only the key is taken from the request: the identity is the one proven.
func (ca *CA) SignCSR(csrDER []byte, id spiffeid.ID, ttl time.Duration) (*Certificate, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA keys must use P-256 or P-384", ErrBadCSR)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%w: RSA keys must have at least 2048 bits", ErrBadCSR)
		}
	default:
		return nil, fmt.Errorf("%w: unsupported key type %T (use ECDSA or RSA)", ErrBadCSR, csr.PublicKey)
	}
	return ca.sign(csr.PublicKey, id, ttl, "csr", nil)
}

// sign issues a leaf for id; hosts (IP addresses or DNS names) become IP and
// DNS SANs besides the SPIFFE ID (the xDS server's certificate, servercert.go).
func (ca *CA) sign(pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration, via string, hosts []string) (*Certificate, error) {
	if !id.MemberOf(ca.td) || id.Path() == "" {
		return nil, fmt.Errorf("identity: %s is not a workload of trust domain %s", id, ca.td.Name())
	}
	if ttl <= 0 {
		return nil, errors.New("identity: a certificate lifetime is required")
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	ca.mu.RLock()
	signer, signing, intermediates, roots := ca.signer, ca.signing, ca.intermediates, ca.roots
	ca.mu.RUnlock()

	now := ca.now()
	notAfter := now.Add(ttl)
	if notAfter.After(signing.NotAfter) {
		notAfter = signing.NotAfter // a leaf never outlives its CA
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"Bowline"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signing, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("identity: sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: parse certificate: %w", err)
	}
	notAfter = leaf.NotAfter // as encoded: whole seconds
	chain := append([]*x509.Certificate{leaf}, intermediates...)
	// What is served must be a valid X.509-SVID for the mesh's bundle.
	if _, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(ca.td, roots), x509svid.WithTime(now)); err != nil {
		return nil, fmt.Errorf("identity: issued certificate does not verify: %w", err)
	}
	c := &Certificate{
		ID: id, Serial: serialOf(leaf), Chain: chain, ChainPEM: EncodeCerts(chain),
		IssuedAt: now, NotAfter: notAfter, Issuer: serialOf(signing),
	}
	ca.record(IssuedCert{Serial: c.Serial, SPIFFEID: id.String(), NotBefore: leaf.NotBefore, NotAfter: notAfter, Via: via, Issuer: c.Issuer})
	return c, nil
}

// record remembers an issued certificate until it expires.
func (ca *CA) record(ic IssuedCert) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	now := ca.now()
	for s, c := range ca.issued {
		if now.After(c.NotAfter) {
			delete(ca.issued, s)
		}
	}
	if len(ca.issued) >= maxIssued {
		// Forget the certificates that expire first.
		all := make([]IssuedCert, 0, len(ca.issued))
		for _, c := range ca.issued {
			all = append(all, c)
		}
		slices.SortFunc(all, func(a, b IssuedCert) int { return a.NotAfter.Compare(b.NotAfter) })
		for _, c := range all[:len(all)-maxIssued+1] {
			delete(ca.issued, c.Serial)
		}
	}
	ca.issued[ic.Serial] = ic
}

// Issued lists the unexpired certificates this CA issued, soonest expiry
// first (then by serial).
func (ca *CA) Issued() []IssuedCert {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	now := ca.now()
	out := make([]IssuedCert, 0, len(ca.issued))
	for _, c := range ca.issued {
		if !now.After(c.NotAfter) {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b IssuedCert) int {
		if c := a.NotAfter.Compare(b.NotAfter); c != 0 {
			return c
		}
		return bytes.Compare([]byte(a.Serial), []byte(b.Serial))
	})
	return out
}

// Subscribe returns a channel that receives a value whenever the trust
// bundle or the signing certificate changes, and a function to unsubscribe.
func (ca *CA) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	ca.mu.Lock()
	ca.subs[ch] = struct{}{}
	ca.mu.Unlock()
	return ch, func() {
		ca.mu.Lock()
		delete(ca.subs, ch)
		ca.mu.Unlock()
	}
}

// notifyLocked wakes the subscribers (without blocking).
func (ca *CA) notifyLocked() {
	for ch := range ca.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
