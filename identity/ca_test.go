package identity_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/identity"
)

var td = spiffeid.RequireTrustDomainFromString("mesh.example")

// clock is a settable clock for the CA.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newCA(t *testing.T, clk *clock, store identity.Store) *identity.CA {
	t.Helper()
	ca, err := identity.New(context.Background(), identity.Options{TrustDomain: td, Store: store, Now: clk.Now})
	if err != nil {
		t.Fatalf("identity.New: %v", err)
	}
	return ca
}

func serviceID(t *testing.T, ns, svc string) spiffeid.ID {
	t.Helper()
	id, err := identity.ServiceID(td, ns, svc)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// verify checks a certificate chain as an X.509-SVID against a bundle.
func verify(chain []*x509.Certificate, roots []*x509.Certificate, at time.Time) (spiffeid.ID, error) {
	id, _, err := x509svid.Verify(chain, x509bundle.FromX509Authorities(td, roots), x509svid.WithTime(at))
	return id, err
}

func TestIdentityServiceIDs(t *testing.T) {
	tests := []struct {
		ns, svc string
		want    string
		wantErr bool
	}{
		{"default", "greeter", "spiffe://mesh.example/ns/default/svc/greeter", false},
		{"payments", "ledger.v2", "spiffe://mesh.example/ns/payments/svc/ledger.v2", false},
		{"default", "", "", true},
		{"default", "a/b", "", true},
		{"", "greeter", "", true},
	}
	for _, tt := range tests {
		id, err := identity.ServiceID(td, tt.ns, tt.svc)
		if (err != nil) != tt.wantErr {
			t.Errorf("ServiceID(%q, %q) error = %v, want error %t", tt.ns, tt.svc, err, tt.wantErr)
			continue
		}
		if err == nil && id.String() != tt.want {
			t.Errorf("ServiceID(%q, %q) = %s, want %s", tt.ns, tt.svc, id, tt.want)
		}
		if err == nil && id.String() != discovery.ServiceIdentity(td.Name(), tt.ns, tt.svc) {
			t.Errorf("ServiceID and discovery.ServiceIdentity disagree: %s != %s", id, discovery.ServiceIdentity(td.Name(), tt.ns, tt.svc))
		}
	}
	sa, err := identity.ServiceAccountID(td, "shop", "cart")
	if err != nil || sa.String() != "spiffe://mesh.example/ns/shop/sa/cart" {
		t.Errorf("ServiceAccountID = %s, %v", sa, err)
	}
}

func TestIdentityGeneratedRootIsPersistedPrivately(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	store := identity.DirStore{Dir: dir}
	clk := newClock()
	ca := newCA(t, clk, store)

	st, err := os.Stat(filepath.Join(dir, identity.StateFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("CA state file mode = %v, want 0600", st.Mode().Perm())
	}
	if dst, _ := os.Stat(dir); dst.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode = %v, want 0700", dst.Mode().Perm())
	}
	roots := ca.Roots()
	if len(roots) != 1 {
		t.Fatalf("want one root, got %d", len(roots))
	}
	r := roots[0]
	if !r.IsCA || r.PublicKeyAlgorithm != x509.ECDSA || r.PublicKey.(*ecdsa.PublicKey).Curve != elliptic.P256() {
		t.Errorf("root is not an ECDSA P-256 CA: %+v", r)
	}
	if len(r.URIs) != 1 || r.URIs[0].String() != "spiffe://mesh.example" {
		t.Errorf("root URI SAN = %v, want the trust domain", r.URIs)
	}

	// A restart loads the same root instead of making a new one.
	again := newCA(t, clk, store)
	if !bytes.Equal(again.RootsPEM(), ca.RootsPEM()) || again.SignerSerial() != ca.SignerSerial() {
		t.Error("a second start generated a different root")
	}

	// A state file made readable by others is made private again on load.
	if err := os.Chmod(filepath.Join(dir, identity.StateFile), 0o644); err != nil {
		t.Fatal(err)
	}
	newCA(t, clk, store)
	if st, _ := os.Stat(filepath.Join(dir, identity.StateFile)); st.Mode().Perm() != 0o600 {
		t.Errorf("state file mode after load = %v, want 0600", st.Mode().Perm())
	}
}

func TestIdentityCorruptStateIsAnError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, identity.StateFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.New(context.Background(), identity.Options{TrustDomain: td, Store: identity.DirStore{Dir: dir}}); err == nil {
		t.Fatal("a corrupt CA state must not be replaced silently")
	}
}

func TestIdentityIssuedCertificateIsAnSVID(t *testing.T) {
	clk := newClock()
	ca := newCA(t, clk, nil)
	id := serviceID(t, "default", "web")
	c, err := ca.Issue(id, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got, err := verify(c.Chain, ca.Roots(), clk.Now())
	if err != nil || got != id {
		t.Fatalf("verify: %s, %v", got, err)
	}
	svid, err := x509svid.Parse(c.ChainPEM, c.KeyPEM)
	if err != nil {
		t.Fatalf("x509svid.Parse: %v", err)
	}
	if svid.ID != id {
		t.Errorf("SVID ID = %s", svid.ID)
	}
	leaf := c.Chain[0]
	if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("leaf is a CA or has key usage %v", leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("leaf ext key usage = %v, want server and client auth (mTLS both ways)", leaf.ExtKeyUsage)
	}
	if want := clk.Now().Add(24 * time.Hour); !leaf.NotAfter.Equal(want) {
		t.Errorf("NotAfter = %s, want %s", leaf.NotAfter, want)
	}
	if want := clk.Now().Add(12 * time.Hour); !c.RenewAt().Equal(want) {
		t.Errorf("RenewAt = %s, want half-life %s", c.RenewAt(), want)
	}
	if _, err := verify(c.Chain, ca.Roots(), clk.Now().Add(25*time.Hour)); err == nil {
		t.Error("the certificate still verifies after it expired")
	}
	// Another CA's bundle does not accept it.
	other := newCA(t, clk, nil)
	if _, err := verify(c.Chain, other.Roots(), clk.Now()); err == nil {
		t.Error("a certificate verified against another CA's bundle")
	}
}

func TestIdentityIssueRefusesForeignIdentities(t *testing.T) {
	ca := newCA(t, newClock(), nil)
	for _, raw := range []string{"spiffe://other.example/ns/default/svc/web", "spiffe://mesh.example"} {
		id := spiffeid.RequireFromString(raw)
		if _, err := ca.Issue(id, time.Hour); err == nil {
			t.Errorf("Issue(%s) succeeded", raw)
		}
	}
	if _, err := ca.Issue(serviceID(t, "default", "web"), 0); err == nil {
		t.Error("Issue with no lifetime succeeded")
	}
}

func csrFor(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ignored"}, URIs: []*url.URL{{Scheme: "spiffe", Host: "mesh.example", Path: "/ns/default/svc/admin"}}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestIdentitySignCSR(t *testing.T) {
	clk := newClock()
	ca := newCA(t, clk, nil)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	ec224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	tampered := csrFor(t, ec)
	tampered[len(tampered)-5] ^= 0xff
	tests := []struct {
		name string
		csr  []byte
		ok   bool
	}{
		{"ecdsa p256", csrFor(t, ec), true},
		{"ecdsa p384", csrFor(t, ec384), true},
		{"rsa 2048", csrFor(t, rsa2048), true},
		{"ecdsa p224", csrFor(t, ec224), false},
		{"rsa 1024", csrFor(t, rsa1024), false},
		{"bad signature", tampered, false},
		{"garbage", []byte("not a csr"), false},
	}
	id := serviceID(t, "default", "web")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ca.SignCSR(tt.csr, id, time.Hour)
			if !tt.ok {
				if !errors.Is(err, identity.ErrBadCSR) {
					t.Fatalf("SignCSR error = %v, want ErrBadCSR", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.KeyPEM) != 0 {
				t.Error("a signed CSR must not come with a key")
			}
			// The identity is the proven one, not what the CSR asked for.
			if got, err := verify(c.Chain, ca.Roots(), clk.Now()); err != nil || got != id {
				t.Errorf("verify = %s, %v; want %s", got, err, id)
			}
		})
	}
}

// testCA makes a CA certificate signed by parent (self-signed when parent is
// nil).
func testCA(t *testing.T, name string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(90 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent, parentKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func keyPEM(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	b, err := identity.EncodeKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestIdentityOperatorCA(t *testing.T) {
	clk := newClock()
	now := clk.Now()
	root, rootKey := testCA(t, "corp root", nil, nil, now)
	inter, interKey := testCA(t, "mesh intermediate", root, rootKey, now)
	other, otherKey := testCA(t, "other root", nil, nil, now)
	pemOf := func(cs ...*x509.Certificate) []byte { return identity.EncodeCerts(cs) }
	tests := []struct {
		name      string
		op        identity.OperatorCA
		ok        bool
		wantChain int // certificates served: leaf + intermediates
	}{
		{"root", identity.OperatorCA{CertPEM: pemOf(root), KeyPEM: keyPEM(t, rootKey)}, true, 1},
		{"intermediate with its root in the file", identity.OperatorCA{CertPEM: pemOf(inter, root), KeyPEM: keyPEM(t, interKey)}, true, 2},
		{"intermediate with a root file", identity.OperatorCA{CertPEM: pemOf(inter), KeyPEM: keyPEM(t, interKey), RootsPEM: pemOf(root)}, true, 2},
		{"intermediate without its root", identity.OperatorCA{CertPEM: pemOf(inter), KeyPEM: keyPEM(t, interKey)}, false, 0},
		{"intermediate with the wrong root", identity.OperatorCA{CertPEM: pemOf(inter), KeyPEM: keyPEM(t, interKey), RootsPEM: pemOf(other)}, false, 0},
		{"key of another certificate", identity.OperatorCA{CertPEM: pemOf(root), KeyPEM: keyPEM(t, otherKey)}, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := tt.op
			ca, err := identity.New(context.Background(), identity.Options{TrustDomain: td, Operator: &op, Now: clk.Now})
			if !tt.ok {
				if err == nil {
					t.Fatal("New accepted a bad operator CA")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, err := ca.Issue(serviceID(t, "default", "web"), time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Chain) != tt.wantChain {
				t.Errorf("served chain has %d certificates, want %d", len(c.Chain), tt.wantChain)
			}
			if roots := ca.Roots(); len(roots) != 1 || !roots[0].Equal(root) {
				t.Errorf("bundle = %d roots, want the operator's root", len(roots))
			}
			if _, err := verify(c.Chain, []*x509.Certificate{root}, clk.Now()); err != nil {
				t.Errorf("leaf does not verify against the operator root: %v", err)
			}
			if err := ca.Rotate(context.Background(), identity.PhasePrepare, 0, true); !errors.Is(err, identity.ErrRotation) {
				t.Errorf("Rotate on an operator CA: %v, want ErrRotation", err)
			}
		})
	}
}

func TestIdentityOperatorCAFiles(t *testing.T) {
	clk := newClock()
	root, rootKey := testCA(t, "corp root", nil, nil, clk.Now())
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	op, err := identity.LoadOperatorCA(write("ca.pem", identity.EncodeCerts([]*x509.Certificate{root})), write("ca-key.pem", keyPEM(t, rootKey)), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := identity.New(context.Background(), identity.Options{TrustDomain: td, Operator: op, Now: clk.Now}); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.LoadOperatorCA(filepath.Join(dir, "missing.pem"), filepath.Join(dir, "ca-key.pem"), ""); err == nil {
		t.Error("a missing CA file must be an error")
	}
}

func TestIdentityExtraRootsJoinTheBundle(t *testing.T) {
	clk := newClock()
	extra, _ := testCA(t, "next corp root", nil, nil, clk.Now())
	ca, err := identity.New(context.Background(), identity.Options{TrustDomain: td, ExtraRoots: []*x509.Certificate{extra}, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	roots := ca.Roots()
	if len(roots) != 2 || !roots[1].Equal(extra) {
		t.Fatalf("bundle has %d roots, want the generated root and the extra one", len(roots))
	}
	if n := bytes.Count(ca.RootsPEM(), []byte("BEGIN CERTIFICATE")); n != 2 {
		t.Errorf("RootsPEM holds %d certificates", n)
	}
}

func TestIdentityIssuedRecordsExpire(t *testing.T) {
	clk := newClock()
	ca := newCA(t, clk, nil)
	short, _ := ca.Issue(serviceID(t, "default", "a"), time.Minute)
	long, _ := ca.Issue(serviceID(t, "default", "b"), time.Hour)
	got := ca.Issued()
	if len(got) != 2 || got[0].Serial != short.Serial || got[1].Serial != long.Serial || got[0].Via != "sds" {
		t.Fatalf("Issued = %+v", got)
	}
	if got[0].SPIFFEID != "spiffe://mesh.example/ns/default/svc/a" || !got[0].NotAfter.Equal(short.NotAfter) {
		t.Errorf("record = %+v", got[0])
	}
	clk.Add(2 * time.Minute)
	if got := ca.Issued(); len(got) != 1 || got[0].Serial != long.Serial {
		t.Errorf("after expiry Issued = %+v", got)
	}
}

func TestIdentityPEMHelpers(t *testing.T) {
	if _, err := identity.ParseCerts([]byte("nothing")); err == nil {
		t.Error("ParseCerts of no PEM succeeded")
	}
	if _, err := identity.ParseKey([]byte("nothing")); err == nil {
		t.Error("ParseKey of no PEM succeeded")
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sec1, _ := x509.MarshalECPrivateKey(ec)
	k, err := identity.ParseKey(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}))
	if err != nil || !k.Public().(*ecdsa.PublicKey).Equal(ec.Public()) {
		t.Errorf("ParseKey(SEC 1) = %v", err)
	}
	r, _ := rsa.GenerateKey(rand.Reader, 2048)
	k, err = identity.ParseKey(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(r)}))
	if err != nil || !k.Public().(*rsa.PublicKey).Equal(r.Public()) {
		t.Errorf("ParseKey(PKCS #1) = %v", err)
	}
}
