package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServerID is the SPIFFE ID of bowline server's own certificate, the one
// that serves xDS over TLS: spiffe://<trust-domain>/bowline/server. Workload
// IDs always start with /ns/, so no attestor can give this ID to a workload.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := spiffeid.FromSegments(td, "bowline", "server")
	if err != nil {
		panic(fmt.Sprintf("identity: server ID for %s: %v", td.Name(), err)) // fixed, valid segments
	}
	return id
}

// ServerCertificate is the xDS server's TLS certificate: issued by the mesh
// CA for ServerID with the server's host names and addresses as DNS and IP
// SANs, so that clients verify it like any TLS server (the trust bundle as
// roots, the address they dial as server name). It is reissued, at the next
// handshake, once it has lived half its life or when another CA certificate
// signs now (a root rotation), and its key never leaves the server.
type ServerCertificate struct {
	ca    *CA
	hosts []string
	ttl   func() time.Duration
	log   *slog.Logger

	mu      sync.Mutex
	current *Certificate
	tls     *tls.Certificate
}

// NewServerCertificate issues the first certificate for hosts (IP addresses
// or DNS names; at least one). ttl is called at every issuance; nil means
// 24h.
func NewServerCertificate(ca *CA, hosts []string, ttl func() time.Duration, log *slog.Logger) (*ServerCertificate, error) {
	if len(hosts) == 0 {
		return nil, errors.New("identity: the server certificate needs at least one host name or address")
	}
	if ttl == nil {
		ttl = func() time.Duration { return 24 * time.Hour }
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &ServerCertificate{ca: ca, hosts: slices.Clone(hosts), ttl: ttl, log: log}
	if _, err := s.GetCertificate(nil); err != nil {
		return nil, err
	}
	return s, nil
}

// Hosts returns the names and addresses the certificate is issued for.
func (s *ServerCertificate) Hosts() []string { return slices.Clone(s.hosts) }

// GetCertificate returns the current certificate, reissuing it when it is
// due (tls.Config.GetCertificate). When reissuing fails, the previous
// certificate is served while it is valid.
func (s *ServerCertificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.ca.now()
	if c := s.current; c != nil && now.Before(c.RenewAt()) && c.Issuer == s.ca.SignerSerial() {
		return s.tls, nil
	}
	c, cert, err := s.issue()
	if err != nil {
		if s.current != nil && now.Before(s.current.NotAfter) {
			s.log.Error("identity: server certificate not reissued; serving the previous one", "err", err, "not_after", s.current.NotAfter)
			return s.tls, nil
		}
		return nil, err
	}
	s.current, s.tls = c, cert
	s.log.Info("identity: server certificate issued", "spiffe_id", c.ID.String(), "hosts", s.hosts, "serial", c.Serial, "not_after", c.NotAfter)
	return s.tls, nil
}

func (s *ServerCertificate) issue() (*Certificate, *tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: generate server key: %w", err)
	}
	c, err := s.ca.sign(key.Public(), ServerID(s.ca.td), s.ttl(), "server", s.hosts)
	if err != nil {
		return nil, nil, err
	}
	if c.KeyPEM, err = EncodeKey(key); err != nil {
		return nil, nil, err
	}
	pair, err := tls.X509KeyPair(c.ChainPEM, c.KeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: server certificate: %w", err)
	}
	return c, &pair, nil
}

// TLSConfig is a server configuration that serves the certificate (TLS 1.2
// or later). Clients are not asked for certificates: a workload reaches the
// xDS port before it has one.
func (s *ServerCertificate) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.GetCertificate}
}

// ServerHosts returns the SANs for a server listening on addr ("host:port"):
// the host itself when it is a specific address or name; for an unspecified
// address ("", 0.0.0.0, [::]), the machine's interface addresses, its host
// name and localhost. extra names are added (a load balancer's, a DNS
// name clients dial); duplicates are dropped.
func ServerHosts(addr string, extra []string) ([]string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("identity: server address %q: %w", addr, err)
	}
	var hosts []string
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		hosts = append(hosts, host)
	} else {
		hosts = append(hosts, "localhost", "127.0.0.1", "::1")
		if name, err := os.Hostname(); err == nil && name != "" {
			hosts = append(hosts, name)
		}
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return nil, fmt.Errorf("identity: interface addresses: %w", err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
				hosts = append(hosts, n.IP.String())
			}
		}
	}
	hosts = append(hosts, extra...)
	out := hosts[:0]
	seen := map[string]bool{}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			h = ip.String()
		}
		if h != "" && !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	return out, nil
}
