package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/identity"
)

func leafOf(t *testing.T, c *tls.Certificate) *x509.Certificate {
	t.Helper()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func TestIdentityServerCertificateHandshake(t *testing.T) {
	ca, err := identity.New(context.Background(), identity.Options{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := identity.NewServerCertificate(ca, []string{"127.0.0.1", "bowline.example"}, func() time.Duration { return time.Hour }, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := sc.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafOf(t, cert)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://mesh.example/bowline/server" ||
		!slices.Equal(leaf.DNSNames, []string{"bowline.example"}) || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Fatalf("SANs: URIs %v, DNS %v, IPs %v", leaf.URIs, leaf.DNSNames, leaf.IPAddresses)
	}

	l, err := tls.Listen("tcp", "127.0.0.1:0", sc.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	roots := x509.NewCertPool()
	for _, r := range ca.Roots() {
		roots.AddCert(r)
	}
	dial := func(serverName string, roots *x509.CertPool) error {
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: roots, ServerName: serverName})
		if err == nil {
			c.Close()
		}
		return err
	}
	for _, name := range []string{"127.0.0.1", "bowline.example"} {
		if err := dial(name, roots); err != nil {
			t.Errorf("a client that trusts the bundle and dials %s: %v", name, err)
		}
	}
	var hostErr x509.HostnameError
	if err := dial("other.example", roots); !errors.As(err, &hostErr) {
		t.Errorf("a client that dials another name: %v, want a hostname error", err)
	}
	var unknown x509.UnknownAuthorityError
	if err := dial("127.0.0.1", x509.NewCertPool()); !errors.As(err, &unknown) {
		t.Errorf("a client that does not trust the bundle: %v, want an unknown authority", err)
	}
	if _, err := identity.NewServerCertificate(ca, nil, nil, nil); err == nil {
		t.Error("a server certificate without hosts was issued")
	}
}

func TestIdentityServerCertificateRenewal(t *testing.T) {
	clk := newClock()
	ca := newCA(t, clk, &identity.MemStore{})
	sc, err := identity.NewServerCertificate(ca, []string{"10.0.0.1"}, func() time.Duration { return time.Hour }, nil)
	if err != nil {
		t.Fatal(err)
	}
	serial := func() string {
		t.Helper()
		c, err := sc.GetCertificate(nil)
		if err != nil {
			t.Fatal(err)
		}
		return leafOf(t, c).SerialNumber.String()
	}
	first := serial()
	clk.Add(29 * time.Minute)
	if serial() != first {
		t.Fatal("reissued before half-life")
	}
	clk.Add(2 * time.Minute)
	second := serial()
	if second == first {
		t.Fatal("not reissued at half-life")
	}
	// A new root signing: reissued at once, by it.
	for _, p := range []identity.Phase{identity.PhasePrepare, identity.PhaseActivate} {
		if err := ca.Rotate(context.Background(), p, time.Hour, true); err != nil {
			t.Fatal(err)
		}
	}
	c, err := sc.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf := leafOf(t, c)
	if leaf.SerialNumber.String() == second {
		t.Fatal("not reissued when the signing root changed")
	}
	if got := leaf.Issuer.String(); got == "" || !slices.ContainsFunc(ca.Roots(), func(r *x509.Certificate) bool {
		return r.Subject.String() == got && r.SerialNumber.Text(16) == ca.SignerSerial()
	}) {
		t.Errorf("issued by %s, not by the signing root %s", got, ca.SignerSerial())
	}
}

func TestIdentityServerHosts(t *testing.T) {
	got, err := identity.ServerHosts("127.0.0.1:15010", []string{"xds.example", "127.0.0.1"})
	if err != nil || !slices.Equal(got, []string{"127.0.0.1", "xds.example"}) {
		t.Errorf("specific address: %v, %v", got, err)
	}
	got, err = identity.ServerHosts("0.0.0.0:15010", nil)
	if err != nil || !slices.Contains(got, "localhost") || !slices.Contains(got, "127.0.0.1") {
		t.Errorf("unspecified address: %v, %v", got, err)
	}
	if _, err := identity.ServerHosts("nonsense", nil); err == nil {
		t.Error("an address without port was accepted")
	}
}
