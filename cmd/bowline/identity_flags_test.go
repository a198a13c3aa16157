package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/bowlinemesh/bowline/identity"
)

// identityFiles writes a token file and a trust bundle file.
func identityFiles(t *testing.T) (tokenFile, caFile string) {
	t.Helper()
	dir := t.TempDir()
	tokenFile = filepath.Join(dir, "nomad_bowline.jwt")
	if err := os.WriteFile(tokenFile, []byte("eyJ.identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(dir, "ca.pem")
	ca, err := identity.New(context.Background(), identity.Options{TrustDomain: spiffeid.RequireTrustDomainFromString("bowline.local")})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, ca.RootsPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return tokenFile, caFile
}

func TestEnvoyIdentityFlags(t *testing.T) {
	tokenFile, caFile := identityFiles(t)
	o, err := parseEnvoyFlags([]string{"--service", "web", "--token-file", tokenFile, "--xds-ca", caFile}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.Token != "eyJ.identity.jwt" || o.XDSCA != caFile {
		t.Errorf("token %q, xds-ca %q", o.Token, o.XDSCA)
	}
	env := map[string]string{"BOWLINE_TOKEN": "from-env-0123456789", "BOWLINE_XDS_CA": caFile}
	o, err = parseEnvoyFlags([]string{"--service", "web"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || o.Token != "from-env-0123456789" || o.XDSCA != caFile {
		t.Errorf("from the environment: token %q, xds-ca %q, %v", o.Token, o.XDSCA, err)
	}
	for name, args := range map[string][]string{
		"token and token file": {"--service", "web", "--token", "x", "--token-file", tokenFile},
		"missing token file":   {"--service", "web", "--token-file", filepath.Join(t.TempDir(), "none")},
		"not a bundle":         {"--service", "web", "--xds-ca", tokenFile},
	} {
		if _, err := parseEnvoyFlags(args, func(string) string { return "" }, io.Discard); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestBootstrapEnvoyOverTLS(t *testing.T) {
	tokenFile, caFile := identityFiles(t)
	var out, errOut bytes.Buffer
	err := runBootstrap(context.Background(), []string{"envoy", "--service", "web", "--node-id", "n", "--xds-addr", "127.0.0.1:15010",
		"--token-file", tokenFile, "--xds-ca", caFile}, &out, &errOut)
	if err != nil {
		t.Fatalf("%v: %s", err, errOut.String())
	}
	for _, want := range []string{`"token": "eyJ.identity.jwt"`, `"envoy.transport_sockets.tls"`, `"filename": "` + caFile + `"`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the bootstrap lacks %s:\n%s", want, out.String())
		}
	}
}
