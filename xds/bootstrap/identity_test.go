package bootstrap_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/xds"

	"github.com/bowlinemesh/bowline/xds/bootstrap"
)

func TestIdentityGRPCBootstrapWithCertificates(t *testing.T) {
	dir := t.TempDir()
	o := bootstrap.Options{Service: "greeter", Namespace: "default", XDSAddr: "127.0.0.1:15010", NodeID: "n1", CertDir: dir, Token: "secret-0123456789"}
	b, err := bootstrap.GRPC(o)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), o.Token) {
		t.Error("a gRPC bootstrap must not hold the token")
	}
	var doc struct {
		Providers map[string]struct {
			Plugin string            `json:"plugin_name"`
			Config map[string]string `json:"config"`
		} `json:"certificate_providers"`
		Template string `json:"server_listener_resource_name_template"`
		Node     struct {
			Metadata map[string]any `json:"metadata"`
		} `json:"node"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	p := doc.Providers["default"]
	if p.Plugin != "file_watcher" || p.Config["certificate_file"] != filepath.Join(dir, "cert.pem") ||
		p.Config["private_key_file"] != filepath.Join(dir, "key.pem") || p.Config["ca_certificate_file"] != filepath.Join(dir, "ca.pem") ||
		p.Config["refresh_interval"] != "60s" {
		t.Errorf("certificate provider = %+v", doc.Providers)
	}
	if doc.Template != "grpc/server?xds.resource.listening_address=%s" {
		t.Errorf("server_listener_resource_name_template = %q", doc.Template)
	}
	if doc.Node.Metadata["cert_provider"] != "default" {
		t.Errorf("node metadata = %v", doc.Node.Metadata)
	}
	// gRPC-Go's own parser accepts it (the file_watcher plugin validates its config).
	if _, err := xds.NewXDSResolverWithConfigForTesting(b); err != nil {
		t.Fatalf("gRPC-Go rejects the bootstrap: %v", err)
	}

	plain, err := bootstrap.GRPC(bootstrap.Options{Service: "greeter", XDSAddr: "127.0.0.1:15010", NodeID: "n2"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(plain), "certificate_providers") || strings.Contains(string(plain), "cert_provider") {
		t.Error("a bootstrap without --cert-dir names certificate providers")
	}
}

func TestIdentityEnvoyBootstrapCarriesToken(t *testing.T) {
	b, err := bootstrap.Envoy(bootstrap.Options{Service: "web", Namespace: "default", XDSAddr: "127.0.0.1:15010", NodeID: "n", Token: "secret-0123456789"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"token": "secret-0123456789"`) {
		t.Errorf("the Envoy bootstrap lacks the token:\n%s", b)
	}
}
