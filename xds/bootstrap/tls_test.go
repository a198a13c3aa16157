package bootstrap_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc/xds"

	"github.com/bowlinemesh/bowline/xds/bootstrap"
)

// channelCreds decodes a gRPC bootstrap's channel_creds.
func channelCreds(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var doc struct {
		Servers []struct {
			Creds []map[string]any `json:"channel_creds"`
		} `json:"xds_servers"`
	}
	if err := json.Unmarshal(b, &doc); err != nil || len(doc.Servers) != 1 {
		t.Fatalf("bootstrap: %v\n%s", err, b)
	}
	return doc.Servers[0].Creds
}

func TestGRPCBootstrapOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "mesh-ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(dir, "certs")
	for _, tc := range []struct {
		name, certDir, wantCA string
	}{
		{"the --xds-ca file", "", ca},
		{"the certificate directory's bundle, which --watch keeps current", certDir, filepath.Join(certDir, bootstrap.CAFile)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := bootstrap.GRPC(bootstrap.Options{Service: "greeter", XDSAddr: "127.0.0.1:15010", NodeID: "n", XDSCA: ca, CertDir: tc.certDir})
			if err != nil {
				t.Fatal(err)
			}
			creds := channelCreds(t, b)
			cfg, _ := creds[0]["config"].(map[string]any)
			if len(creds) != 1 || creds[0]["type"] != "tls" || cfg["ca_certificate_file"] != tc.wantCA || cfg["refresh_interval"] != "60s" {
				t.Fatalf("channel_creds = %v", creds)
			}
			if _, err := xds.NewXDSResolverWithConfigForTesting(b); err != nil {
				t.Fatalf("gRPC-Go rejects the bootstrap: %v", err)
			}
		})
	}
	plain, err := bootstrap.GRPC(bootstrap.Options{Service: "greeter", XDSAddr: "127.0.0.1:15010", NodeID: "n"})
	if err != nil {
		t.Fatal(err)
	}
	if creds := channelCreds(t, plain); len(creds) != 1 || creds[0]["type"] != "insecure" {
		t.Errorf("without --xds-ca: channel_creds = %v", creds)
	}
}

func TestEnvoyBootstrapOverTLS(t *testing.T) {
	for _, tc := range []struct {
		addr, sni string
		san       tlsv3.SubjectAltNameMatcher_SanType
	}{
		{"127.0.0.1:15010", "", tlsv3.SubjectAltNameMatcher_IP_ADDRESS},
		{"bowline.service.consul:15010", "bowline.service.consul", tlsv3.SubjectAltNameMatcher_DNS},
	} {
		b, err := bootstrap.EnvoyProto(bootstrap.Options{Service: "web", XDSAddr: tc.addr, NodeID: "n", XDSCA: "/etc/bowline/ca.pem"})
		if err != nil {
			t.Fatal(err) // EnvoyProto runs ValidateAll
		}
		c := b.GetStaticResources().GetClusters()[0]
		ts := c.GetTransportSocket()
		if c.GetName() != bootstrap.XDSCluster || ts.GetName() != "envoy.transport_sockets.tls" {
			t.Fatalf("%s: cluster %s has transport socket %v", tc.addr, c.GetName(), ts)
		}
		up := &tlsv3.UpstreamTlsContext{}
		if err := ts.GetTypedConfig().UnmarshalTo(up); err != nil {
			t.Fatal(err)
		}
		vc := up.GetCommonTlsContext().GetValidationContext()
		sans := vc.GetMatchTypedSubjectAltNames()
		host := tc.addr[:len(tc.addr)-len(":15010")]
		if vc.GetTrustedCa().GetFilename() != "/etc/bowline/ca.pem" || len(sans) != 1 || sans[0].GetSanType() != tc.san ||
			sans[0].GetMatcher().GetExact() != host || up.GetSni() != tc.sni {
			t.Errorf("%s: UpstreamTlsContext = %v", tc.addr, up)
		}
	}
	b, err := bootstrap.EnvoyProto(bootstrap.Options{Service: "web", XDSAddr: "127.0.0.1:15010", NodeID: "n"})
	if err != nil {
		t.Fatal(err)
	}
	if ts := b.GetStaticResources().GetClusters()[0].GetTransportSocket(); ts != nil {
		t.Errorf("without --xds-ca: transport socket %v", ts)
	}
}
