package consul

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/discovery"
)

// Meta keys and labels with a meaning to the adapter.
const (
	metaProtocol    = "protocol"
	metaSidecarPort = "bowline-sidecar-port"
	metaUpstreams   = "bowline-upstreams"
	// controlPrefix marks meta keys that steer the adapter and are not copied
	// into labels.
	controlPrefix = "bowline-"
	// labelTags holds an instance's plain (not key=value) tags.
	labelTags = "tags"
)

// convertOptions carries what the conversion needs besides the API objects.
type convertOptions struct {
	// TrustDomain of SPIFFE identities; empty leaves identities unset.
	TrustDomain string
	// Datacenter is the region of entries whose node names none.
	Datacenter string
}

// instance is one registration of a service, cut down from an
// api.ServiceEntry.
type instance struct {
	node, id  string
	endpoint  discovery.Endpoint
	protocol  discovery.Protocol
	upstreams []discovery.Upstream
}

// sidecar is a connect-proxy registration, kept only to be folded into the
// instance it fronts.
type sidecar struct {
	node, id         string
	destID, destName string
	port             uint32
	upstreams        []discovery.Upstream
}

// entries is the converted content of one /v1/health/service/<name> response:
// the instances of a service and the sidecar proxies registered under that
// name (a Consul sidecar is its own service, usually "<name>-sidecar-proxy").
type entries struct {
	namespace string
	instances []instance
	sidecars  []sidecar
}

// convertEntries converts one health response for the service name. It
// returns warnings for registrations it had to correct or drop.
func convertEntries(name string, list []*api.ServiceEntry, o convertOptions) (entries, []string) {
	var out entries
	var warns []string
	warnf := func(format string, args ...any) { warns = append(warns, fmt.Sprintf(format, args...)) }
	for _, e := range list {
		if e == nil || e.Service == nil {
			continue
		}
		svc := e.Service
		node := ""
		if e.Node != nil {
			node = e.Node.Node
		}
		ns := cmp.Or(svc.Namespace, discovery.DefaultNamespace)
		switch svc.Kind {
		case api.ServiceKindTypical:
		case api.ServiceKindConnectProxy:
			if sc, ok := convertSidecar(node, svc, ns, warnf); ok {
				out.sidecars = append(out.sidecars, sc)
			}
			continue
		default: // gateways are not workloads of the mesh
			continue
		}
		out.namespace = ns
		if svc.Port <= 0 || svc.Port > 65535 {
			warnf("service %s: instance %s on node %s has no valid port (%d); skipped", name, svc.ID, node, svc.Port)
			continue
		}
		inst := instance{node: node, id: svc.ID, protocol: discovery.ProtocolTCP}
		if p, ok := svc.Meta[metaProtocol]; ok {
			proto, err := discovery.ParseProtocol(p)
			if err != nil {
				warnf("service %s: instance %s: meta %s: %v; using tcp", name, svc.ID, metaProtocol, err)
				proto = discovery.ProtocolTCP
			}
			inst.protocol = proto
		}
		inst.endpoint = convertEndpoint(name, e, ns, o, warnf)
		if v, ok := svc.Meta[metaUpstreams]; ok {
			inst.upstreams = parseUpstreams(v, ns, func(msg string) {
				warnf("service %s: instance %s: meta %s: %s", name, svc.ID, metaUpstreams, msg)
			})
		}
		out.instances = append(out.instances, inst)
	}
	out.namespace = cmp.Or(out.namespace, discovery.DefaultNamespace)
	slices.SortFunc(out.instances, func(a, b instance) int {
		return cmp.Or(strings.Compare(a.node, b.node), strings.Compare(a.id, b.id))
	})
	slices.SortFunc(out.sidecars, func(a, b sidecar) int {
		return cmp.Or(strings.Compare(a.node, b.node), strings.Compare(a.id, b.id))
	})
	if len(out.instances) > 1 {
		counts := map[discovery.Protocol]int{}
		for _, in := range out.instances {
			counts[in.protocol]++
		}
		if len(counts) > 1 {
			warnf("service %s: instances disagree on the protocol (%v); using %s", name, counts, serviceProtocol(out.instances))
		}
	}
	return out, warns
}

// convertEndpoint converts the instance part of a typical service entry.
func convertEndpoint(name string, e *api.ServiceEntry, ns string, o convertOptions, warnf func(string, ...any)) discovery.Endpoint {
	svc := e.Service
	ep := discovery.Endpoint{
		Address: svc.Address,
		Port:    uint32(svc.Port),
		Labels:  labels(svc.Tags, svc.Meta),
		Health:  health(e.Checks),
	}
	if ep.Address == "" && e.Node != nil {
		ep.Address = e.Node.Address
	}
	if e.Node != nil {
		ep.Region = e.Node.Datacenter
		ep.Zone = e.Node.Meta["zone"]
		if ep.Zone == "" && e.Node.Locality != nil {
			ep.Zone = e.Node.Locality.Zone
		}
	}
	ep.Region = cmp.Or(ep.Region, svc.Datacenter, o.Datacenter)
	if ep.Zone == "" && svc.Locality != nil {
		ep.Zone = svc.Locality.Zone
	}
	if o.TrustDomain != "" {
		ep.Identity = identity(o.TrustDomain, ns, name)
	}
	w := svc.Weights.Passing
	if ep.Health == discovery.HealthDegraded {
		w = svc.Weights.Warning
	}
	if w > 0 {
		ep.Weight = uint32(w)
	}
	if v, ok := svc.Meta[metaSidecarPort]; ok {
		p, err := parsePort(v)
		if err != nil {
			warnf("service %s: instance %s: meta %s: %v; ignored", name, svc.ID, metaSidecarPort, err)
		} else {
			ep.SidecarPort = p
		}
	}
	return ep
}

// convertSidecar cuts a connect-proxy registration down to what folding needs.
func convertSidecar(node string, svc *api.AgentService, ns string, warnf func(string, ...any)) (sidecar, bool) {
	if svc.Proxy == nil || svc.Proxy.DestinationServiceName == "" {
		warnf("sidecar %s on node %s names no destination service; skipped", svc.ID, node)
		return sidecar{}, false
	}
	if svc.Port <= 0 || svc.Port > 65535 {
		warnf("sidecar %s on node %s has no valid port (%d); skipped", svc.ID, node, svc.Port)
		return sidecar{}, false
	}
	sc := sidecar{
		node:     node,
		id:       svc.ID,
		destID:   svc.Proxy.DestinationServiceID,
		destName: svc.Proxy.DestinationServiceName,
		port:     uint32(svc.Port),
	}
	for _, u := range svc.Proxy.Upstreams {
		if u.DestinationType == api.UpstreamDestTypePreparedQuery || u.DestinationName == "" || u.LocalBindPort <= 0 || u.LocalBindPort > 65535 {
			continue // only service upstreams on a local port map to the model
		}
		sc.upstreams = append(sc.upstreams, discovery.Upstream{
			Service:   discovery.ServiceKey{Namespace: cmp.Or(u.DestinationNamespace, ns), Name: u.DestinationName},
			LocalPort: uint32(u.LocalBindPort),
		})
	}
	return sc, true
}

// buildServices assembles the model from the converted responses of every
// watched service name: one Service per name with instances, with each
// sidecar's port folded into the endpoint of the instance it fronts and the
// sidecars' upstreams added to the service. The result is freshly allocated
// and shares nothing with byName.
func buildServices(byName map[string]entries) []*discovery.Service {
	sidecars := map[string][]sidecar{} // by destination service name
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		for _, sc := range byName[name].sidecars {
			sidecars[sc.destName] = append(sidecars[sc.destName], sc)
		}
	}
	var out []*discovery.Service
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		ents := byName[name]
		if len(ents.instances) == 0 {
			continue
		}
		svc := &discovery.Service{
			ServiceKey: discovery.ServiceKey{Namespace: ents.namespace, Name: name},
			Protocol:   serviceProtocol(ents.instances),
			Endpoints:  make([]discovery.Endpoint, len(ents.instances)),
		}
		for i, in := range ents.instances {
			ep := in.endpoint
			ep.Labels = maps.Clone(ep.Labels)
			svc.Endpoints[i] = ep
			svc.Upstreams = append(svc.Upstreams, in.upstreams...)
		}
		folded := map[int]bool{}
		for _, sc := range sidecars[name] {
			svc.Upstreams = append(svc.Upstreams, sc.upstreams...)
			if i := fronted(ents.instances, sc); i >= 0 && !folded[i] {
				folded[i] = true // the first sidecar (by node and ID) wins
				svc.Endpoints[i].SidecarPort = sc.port
			}
		}
		svc.Upstreams = dedupUpstreams(svc.Upstreams)
		out = append(out, svc)
	}
	return out
}

// fronted returns the index of the instance a sidecar fronts, or -1: the
// instance with the sidecar's destination service ID on the sidecar's node, or,
// for a proxy registered without a destination ID, the only instance of the
// service on that node.
func fronted(instances []instance, sc sidecar) int {
	found := -1
	for i, in := range instances {
		if in.node != sc.node {
			continue
		}
		if sc.destID != "" {
			if in.id == sc.destID {
				return i
			}
			continue
		}
		if found >= 0 {
			return -1 // ambiguous
		}
		found = i
	}
	return found
}

// serviceProtocol picks the protocol most instances declare (ties go to the
// name that sorts first), so a service has one protocol even while its
// instances are being re-registered with another.
func serviceProtocol(instances []instance) discovery.Protocol {
	counts := map[discovery.Protocol]int{}
	for _, in := range instances {
		counts[in.protocol]++
	}
	best := discovery.ProtocolTCP
	n := 0
	for _, p := range slices.Sorted(maps.Keys(counts)) {
		if counts[p] > n {
			best, n = p, counts[p]
		}
	}
	return best
}

// labels builds an endpoint's labels from its tags and meta (see the package
// doc for the rules).
func labels(tags []string, meta map[string]string) map[string]string {
	out := map[string]string{}
	var plain []string
	for _, t := range tags {
		if k, v, ok := strings.Cut(t, "="); ok && k != "" {
			out[k] = v
			continue
		}
		if t != "" {
			plain = append(plain, t)
		}
	}
	if len(plain) > 0 {
		slices.Sort(plain)
		out[labelTags] = strings.Join(slices.Compact(plain), ",")
	}
	for k, v := range meta {
		if !strings.HasPrefix(k, controlPrefix) {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// health maps the aggregated status of an entry's checks (service and node
// checks) to the model: passing is healthy, warning degraded, and critical,
// maintenance or an unknown status unhealthy.
func health(checks api.HealthChecks) discovery.Health {
	switch checks.AggregatedStatus() {
	case api.HealthPassing:
		return discovery.HealthHealthy
	case api.HealthWarning:
		return discovery.HealthDegraded
	default:
		return discovery.HealthUnhealthy
	}
}

// identity returns the SPIFFE ID of a Consul service's workloads.
func identity(trustDomain, namespace, service string) string {
	return "spiffe://" + trustDomain + "/ns/" + cmp.Or(namespace, discovery.DefaultNamespace) + "/svc/" + service
}

// parseUpstreams reads "name:port,namespace/name:port"; malformed items are
// reported through warn and skipped.
func parseUpstreams(s, ns string, warn func(string)) []discovery.Upstream {
	var out []discovery.Upstream
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, port, ok := strings.Cut(item, ":")
		name = strings.TrimSpace(name)
		if !ok || name == "" || strings.HasSuffix(name, "/") {
			warn(fmt.Sprintf("%q is not name:port; skipped", item))
			continue
		}
		p, err := parsePort(port)
		if err != nil {
			warn(fmt.Sprintf("%q: %v; skipped", item, err))
			continue
		}
		key := discovery.ParseServiceKey(name, ns)
		key.Namespace = cmp.Or(key.Namespace, ns) // "/name"
		out = append(out, discovery.Upstream{Service: key, LocalPort: p})
	}
	return out
}

// parsePort reads a TCP port number (1-65535).
func parsePort(s string) (uint32, error) {
	p, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("%q is not a port number", s)
	}
	return uint32(p), nil
}

// dedupUpstreams sorts upstreams and drops duplicates.
func dedupUpstreams(us []discovery.Upstream) []discovery.Upstream {
	if len(us) == 0 {
		return nil
	}
	slices.SortFunc(us, func(a, b discovery.Upstream) int {
		return cmp.Or(a.Service.Compare(b.Service), cmp.Compare(a.LocalPort, b.LocalPort))
	})
	return slices.Compact(us)
}
