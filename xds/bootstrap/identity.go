package bootstrap

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/bowlinemesh/bowline/xds/server"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// The files of a proxyless gRPC workload's certificate directory.
const (
	CertFile = "cert.pem" // the workload certificate (and intermediates)
	KeyFile  = "key.pem"  // its private key (mode 0600)
	CAFile   = "ca.pem"   // the trust bundle
)

// DefaultCertRefresh is how often gRPC re-reads the certificate files.
const DefaultCertRefresh = time.Minute

// identityMetadata adds the identity keys to a node's metadata: an Envoy
// sidecar's token (its proof, checked before it gets a certificate over
// SDS), and a gRPC workload's certificate provider. A gRPC bootstrap never
// holds the token: the signing call used it already.
func (o Options) identityMetadata(kind string, m map[string]any) {
	switch {
	case kind == "envoy" && o.Token != "":
		m[server.MetaToken] = o.Token
	case kind == "grpc" && o.CertDir != "":
		m[server.MetaCertProvider] = translate.DefaultCertProvider
	}
}

// addGRPCIdentity adds to a gRPC bootstrap the listener name template of
// xDS-enabled servers and, with a certificate directory, the file_watcher
// certificate provider "default" on its files, which the TLS contexts that
// bowline server sends name.
func (o Options) addGRPCIdentity(doc map[string]any) error {
	doc["server_listener_resource_name_template"] = translate.ServerListenerTemplate
	if o.CertDir == "" {
		return nil
	}
	dir, err := filepath.Abs(o.CertDir)
	if err != nil {
		return fmt.Errorf("bootstrap: certificate directory: %w", err)
	}
	refresh := o.CertRefresh
	if refresh <= 0 {
		refresh = DefaultCertRefresh
	}
	doc["certificate_providers"] = map[string]any{
		translate.DefaultCertProvider: map[string]any{
			"plugin_name": "file_watcher",
			"config": map[string]any{
				"certificate_file":    filepath.Join(dir, CertFile),
				"private_key_file":    filepath.Join(dir, KeyFile),
				"ca_certificate_file": filepath.Join(dir, CAFile),
				"refresh_interval":    durationJSON(refresh),
			},
		},
	}
	return nil
}

// durationJSON renders a duration the way protobuf's JSON does ("1.5s").
func durationJSON(d time.Duration) string {
	return fmt.Sprintf("%gs", d.Seconds())
}
