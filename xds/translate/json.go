package translate

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
)

// JSON renders resources as one JSON object keyed by type (listeners, routes,
// clusters, endpoints, secrets), each a list in name order, the way Envoy's
// config dump shows them. The output is stable byte for byte.
func JSON(r *Resources) ([]byte, error) {
	type group struct {
		name string
		list []types.Resource
	}
	var buf bytes.Buffer
	buf.WriteString("{")
	for i, g := range []group{{"listeners", r.Listeners}, {"routes", r.Routes}, {"clusters", r.Clusters}, {"endpoints", r.Endpoints}, {"secrets", r.Secrets}} {
		if i > 0 {
			buf.WriteString(",")
		}
		fmt.Fprintf(&buf, "%q:[", g.name)
		for j, res := range g.list {
			if j > 0 {
				buf.WriteString(",")
			}
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(Redact(res)) // no private keys (secrets.go)
			if err != nil {
				return nil, fmt.Errorf("translate: render %s: %w", resourceName(res), err)
			}
			buf.Write(b)
		}
		buf.WriteString("]")
	}
	buf.WriteString("}")
	// Re-indent through encoding/json: protojson's spacing is deliberately unstable.
	var out bytes.Buffer
	if err := json.Indent(&out, compact(buf.Bytes()), "", "  "); err != nil {
		return nil, fmt.Errorf("translate: render: %w", err)
	}
	out.WriteByte('\n')
	return out.Bytes(), nil
}

func compact(b []byte) []byte {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return b
	}
	return out.Bytes()
}
