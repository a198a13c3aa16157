package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/xds/bootstrap"
)

// certFlags are the identity flags of `bowline bootstrap`: --token (or
// --token-file) for both kinds (Envoy sends it in its node metadata) and
// --xds-ca to reach a server that serves xDS over TLS; for gRPC, --cert-dir obtains
// the workload certificate from the server's signing service before the
// bootstrap is printed, and --watch keeps renewing it at half-life.
type certFlags struct {
	kind      string
	watching  bool
	tokenFile string
	renewAt   time.Time
	notAfter  time.Time
}

func identityFlags(fs *flag.FlagSet, kind string, o *bootstrap.Options) *certFlags {
	c := &certFlags{kind: kind}
	fs.StringVar(&o.Token, "token", envOr("BOWLINE_TOKEN", ""), "proof of the workload's identity: a join token, a Consul ACL token, a Nomad workload identity or a Kubernetes service account token, as the server's identity block accepts (env BOWLINE_TOKEN)")
	fs.StringVar(&c.tokenFile, "token-file", "", "read the proof from this file (a Nomad identity file, a projected service account token) instead of --token")
	fs.StringVar(&o.XDSCA, "xds-ca", envOr("BOWLINE_XDS_CA", ""), "the mesh's trust bundle (`bowline ca roots`): reach a server run with --xds-tls over TLS, verifying its certificate (env BOWLINE_XDS_CA)")
	if kind == "grpc" {
		fs.StringVar(&o.CertDir, "cert-dir", "", "obtain the workload's certificate: write cert.pem, key.pem and ca.pem here and name them in the bootstrap (certificate provider \"default\")")
		fs.BoolVar(&c.watching, "watch", false, "with --cert-dir: print the bootstrap, then keep running and renew the certificate files at half-life")
		fs.DurationVar(&o.CertRefresh, "cert-refresh", bootstrap.DefaultCertRefresh, "with --cert-dir: how often gRPC re-reads the certificate files")
	}
	return c
}

// resolve reads --token-file and checks --xds-ca, before anything is
// printed.
func (c *certFlags) resolve(o *bootstrap.Options) error {
	if c.tokenFile != "" {
		if o.Token != "" {
			return errors.New("--token and --token-file exclude each other")
		}
		tok, err := readTokenFile(c.tokenFile)
		if err != nil {
			return err
		}
		o.Token = tok
	}
	if o.XDSCA != "" {
		if _, err := xdsCredentials(*o); err != nil {
			return err
		}
	}
	return nil
}

// readTokenFile reads a token from a file (surrounding space removed).
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--token-file %s is empty", path)
	}
	return tok, nil
}

// xdsCredentials are the credentials of a connection to the xDS port:
// TLS verifying the server with --xds-ca (and, once there is one, the
// certificate directory's ca.pem, which follows root rotations), else
// plaintext.
func xdsCredentials(o bootstrap.Options) (credentials.TransportCredentials, error) {
	if o.XDSCA == "" {
		return insecure.NewCredentials(), nil
	}
	b, err := os.ReadFile(o.XDSCA)
	if err != nil {
		return nil, fmt.Errorf("--xds-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("--xds-ca %s holds no PEM certificate", o.XDSCA)
	}
	if o.CertDir != "" {
		if b, err := os.ReadFile(filepath.Join(o.CertDir, bootstrap.CAFile)); err == nil {
			pool.AppendCertsFromPEM(b)
		}
	}
	return credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}), nil
}

// obtain gets the first certificate, before the bootstrap is printed: a
// workload whose claim is refused gets neither files nor a bootstrap.
func (c *certFlags) obtain(ctx context.Context, o bootstrap.Options, stderr io.Writer) error {
	if c.kind != "grpc" || o.CertDir == "" {
		if c.watching {
			return errors.New("--watch needs --cert-dir")
		}
		return nil
	}
	if o.CertRefresh <= 0 {
		return errors.New("--cert-refresh must be positive")
	}
	resp, err := fetchCert(ctx, o)
	if err != nil {
		return err
	}
	c.renewAt, c.notAfter = resp.RenewAt, resp.NotAfter
	fmt.Fprintf(stderr, "certificate for %s written to %s (valid until %s, renew at %s)\n", resp.SPIFFEID, o.CertDir,
		resp.NotAfter.UTC().Format(time.RFC3339), resp.RenewAt.UTC().Format(time.RFC3339))
	return nil
}

// watch renews the certificate at half-life until ctx ends. A failed renewal
// is retried with backoff; the files keep the last good certificate.
func (c *certFlags) watch(ctx context.Context, o bootstrap.Options, stderr io.Writer) error {
	if !c.watching {
		return nil
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	next, backoff := c.renewAt, time.Second
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		timer.Reset(max(time.Until(next), 0))
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		if c.tokenFile != "" {
			// The platform renews the file (a Nomad identity, a projected
			// service account token): present the current token.
			if tok, err := readTokenFile(c.tokenFile); err == nil {
				o.Token = tok
			} else {
				log.Warn("token file not read; renewing with the previous token", "err", err)
			}
		}
		resp, err := fetchCert(ctx, o)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("certificate renewal failed; retrying", "err", err, "retry_in", backoff, "current_expires", c.notAfter)
			next, backoff = time.Now().Add(backoff), min(backoff*2, time.Minute)
			continue
		}
		next, backoff, c.notAfter = resp.RenewAt, time.Second, resp.NotAfter
		log.Info("certificate renewed", "spiffe_id", resp.SPIFFEID, "not_after", resp.NotAfter, "renew_at", resp.RenewAt)
	}
}

// fetchCert makes a key, has the signing service on the xDS port sign it for
// the workload's identity, and writes ca.pem, key.pem and cert.pem, each
// atomically (the key never leaves the workload).
func fetchCert(ctx context.Context, o bootstrap.Options) (*identity.SignResponse, error) {
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		return nil, err
	}
	creds, err := xdsCredentials(o)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(o.XDSAddr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", o.XDSAddr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := identity.RequestSign(ctx, conn, identity.SignRequest{Namespace: o.Namespace, Service: o.Service, Token: o.Token, CSR: csrPEM})
	if status.Code(errors.Unwrap(err)) == codes.PermissionDenied {
		return nil, fmt.Errorf("the server refused the claim to be %s/%s: prove it with --token or --token-file (a proof the server's identity block accepts)", o.Namespace, o.Service)
	}
	if err != nil {
		return nil, err
	}
	if _, err := x509svid.Parse(resp.CertChain, keyPEM); err != nil {
		return nil, fmt.Errorf("the signed certificate is not a valid SVID for our key: %w", err)
	}
	if err := os.MkdirAll(o.CertDir, 0o700); err != nil {
		return nil, err
	}
	// The bundle first (so that the new certificate's issuer is trusted),
	// then key and certificate; gRPC keeps its previous pair until the two
	// files match again.
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{{bootstrap.CAFile, resp.Roots, 0o644}, {bootstrap.KeyFile, keyPEM, 0o600}, {bootstrap.CertFile, resp.CertChain, 0o644}} {
		if err := identity.WriteFileAtomic(filepath.Join(o.CertDir, f.name), f.data, f.perm); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	return resp, nil
}
