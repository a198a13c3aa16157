package translate_test

import (
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// A key set fetched over HTTPS: jwt_authn's remote_jwks names a cluster to
// the issuer's host, over TLS checked against the system's CAs and the host
// name.
func TestJWTRemoteKeys(t *testing.T) {
	src := `
service "orders" {
  protocol = "http"
  endpoint {
    address      = "10.0.0.10"
    port         = 8080
    sidecar_port = 21000
  }
}
jwt "orders" {
  issuer   = "https://auth.example.com"
  jwks_uri = "https://auth.example.com/.well-known/jwks.json"
}
`
	cfg, diags := config.Parse([]config.File{{Name: "j.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	res, err := translate.Build(translate.Input{Catalog: discovery.NewSnapshot(nil, file.Convert(cfg)), Config: cfg},
		translate.Proxy{Kind: translate.KindSidecar, Service: discovery.ServiceKey{Namespace: "default", Name: "orders"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := translate.Check(res); err != nil {
		t.Fatal(err)
	}
	var c *cluster.Cluster
	for _, r := range res.Clusters {
		if translate.ResourceName(r) == "jwks|auth.example.com:443" {
			c = r.(*cluster.Cluster)
		}
	}
	if c == nil || c.GetType() != cluster.Cluster_STRICT_DNS {
		t.Fatalf("no DNS cluster for the key set's host: %v", res.Clusters)
	}
	up := &tlsv3.UpstreamTlsContext{}
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(up); err != nil {
		t.Fatal(err)
	}
	vc := up.GetCommonTlsContext().GetValidationContext()
	sans := vc.GetMatchTypedSubjectAltNames()
	if up.GetSni() != "auth.example.com" || vc.GetTrustedCa().GetFilename() != translate.SystemCABundle ||
		len(sans) != 1 || sans[0].GetSanType() != tlsv3.SubjectAltNameMatcher_DNS || sans[0].GetMatcher().GetExact() != "auth.example.com" {
		t.Fatalf("TLS to the key set's host = %v", up)
	}
}
