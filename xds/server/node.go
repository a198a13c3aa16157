package server

import (
	"fmt"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// Node metadata keys written by `bowline bootstrap` and read here. A node
// without them is still served: the kind is guessed from the user agent and
// the service from the node's cluster.
const (
	MetaKind        = "kind"         // "envoy" or "grpc"
	MetaService     = "service"      // the workload's service name
	MetaNamespace   = "namespace"    // its namespace (default "default")
	MetaVersion     = "version"      // its version label, for telemetry
	MetaInboundPort = "inbound_port" // the sidecar's inbound port
	MetaLocalPort   = "local_port"   // the local application's port
	MetaUpstreams   = "upstreams"    // "name:port,ns/name:port"
	MetaAllServices = "all_services" // true: receive every service
)

// ProxyFromNode reads what translation needs from an xDS node.
func ProxyFromNode(n *core.Node) (translate.Proxy, error) {
	p := translate.Proxy{Kind: translate.KindSidecar}
	fields := n.GetMetadata().GetFields()
	str := func(k string) string { return fields[k].GetStringValue() }
	num := func(k string) (uint32, error) {
		v, ok := fields[k]
		if !ok {
			return 0, nil
		}
		if s := v.GetStringValue(); s != "" {
			n, err := strconv.ParseUint(s, 10, 16)
			if err != nil {
				return 0, fmt.Errorf("node metadata %s: %q is not a port", k, s)
			}
			return uint32(n), nil
		}
		f := v.GetNumberValue()
		if f < 0 || f > 65535 || f != float64(int(f)) {
			return 0, fmt.Errorf("node metadata %s: %v is not a port", k, f)
		}
		return uint32(f), nil
	}

	switch kind := str(MetaKind); kind {
	case "":
		if strings.Contains(strings.ToLower(n.GetUserAgentName()), "grpc") {
			p.Kind = translate.KindGRPC
		}
	case string(translate.KindSidecar), string(translate.KindGRPC):
		p.Kind = translate.Kind(kind)
	default:
		return p, fmt.Errorf("node metadata %s: unknown kind %q (want envoy or grpc)", MetaKind, kind)
	}
	if l := n.GetLocality(); l != nil {
		p.Locality = discovery.Locality{Region: l.GetRegion(), Zone: l.GetZone(), SubZone: l.GetSubZone()}
	}
	p.Service.Name = str(MetaService)
	if p.Service.Name == "" {
		p.Service.Name = n.GetCluster()
	}
	p.Service.Namespace = str(MetaNamespace)
	if p.Service.Namespace == "" {
		p.Service.Namespace = discovery.DefaultNamespace
	}
	var err error
	if p.InboundPort, err = num(MetaInboundPort); err != nil {
		return p, err
	}
	if p.LocalPort, err = num(MetaLocalPort); err != nil {
		return p, err
	}
	if ups := str(MetaUpstreams); ups != "" {
		if p.Upstreams, err = ParseUpstreams(ups, p.Service.Namespace); err != nil {
			return p, fmt.Errorf("node metadata %s: %w", MetaUpstreams, err)
		}
	}
	if v, ok := fields[MetaAllServices]; ok {
		p.AllServices = v.GetBoolValue() || v.GetStringValue() == "true"
	}
	if p.Kind == translate.KindGRPC {
		p.TLS = certProviderFromNode(fields) // identity.go
	}
	return p, nil
}

// ParseUpstreams reads "name:port,ns/name:port".
func ParseUpstreams(s, defaultNS string) ([]discovery.Upstream, error) {
	var out []discovery.Upstream
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, port, ok := strings.Cut(part, ":")
		if !ok {
			return nil, fmt.Errorf("upstream %q: want name:port", part)
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("upstream %q: %q is not a port", part, port)
		}
		out = append(out, discovery.Upstream{Service: discovery.ParseServiceKey(name, defaultNS), LocalPort: uint32(n)})
	}
	return out, nil
}
