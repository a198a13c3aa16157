// Package discovery owns Bowline's common service model and the catalog that
// merges the state of every discovery source into immutable, versioned
// snapshots.
//
// Adapters (file, Consul, Nomad, Kubernetes) translate their platform's objects
// into the small types declared here and hand full states to the Catalog,
// which merges them, keeps the last good state of a failing source
// (fail-static) and publishes snapshots carrying the set of changed services.
package discovery

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Protocol is the application protocol spoken on a service port.
type Protocol string

// The protocols a service may declare.
const (
	ProtocolHTTP  Protocol = "http"
	ProtocolHTTP2 Protocol = "http2"
	ProtocolGRPC  Protocol = "grpc"
	ProtocolTCP   Protocol = "tcp"
)

// ParseProtocol validates a protocol name; the empty string means tcp.
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.ToLower(strings.TrimSpace(s))); p {
	case ProtocolHTTP, ProtocolHTTP2, ProtocolGRPC, ProtocolTCP:
		return p, nil
	case "":
		return ProtocolTCP, nil
	default:
		return "", fmt.Errorf("unknown protocol %q (want http, http2, grpc or tcp)", s)
	}
}

// IsHTTP reports whether the protocol is carried by an HTTP connection manager.
func (p Protocol) IsHTTP() bool {
	return p == ProtocolHTTP || p == ProtocolHTTP2 || p == ProtocolGRPC
}

// NeedsHTTP2 reports whether upstream connections must use HTTP/2.
func (p Protocol) NeedsHTTP2() bool { return p == ProtocolHTTP2 || p == ProtocolGRPC }

// Health is an endpoint's health as reported by its registry.
type Health int

// Endpoint health states. Unhealthy endpoints receive no traffic; degraded ones
// are used only when not enough healthy ones are left.
const (
	HealthHealthy Health = iota
	HealthDegraded
	HealthUnhealthy
)

func (h Health) String() string {
	switch h {
	case HealthHealthy:
		return "healthy"
	case HealthDegraded:
		return "degraded"
	case HealthUnhealthy:
		return "unhealthy"
	}
	return fmt.Sprintf("health(%d)", int(h))
}

// MarshalText renders the health as its name (for the admin API).
func (h Health) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// ParseHealth reads a health name; the empty string means healthy.
func ParseHealth(s string) (Health, error) {
	switch strings.ToLower(s) {
	case "", "healthy", "passing":
		return HealthHealthy, nil
	case "degraded", "warning":
		return HealthDegraded, nil
	case "unhealthy", "critical":
		return HealthUnhealthy, nil
	}
	return 0, fmt.Errorf("unknown health %q (want healthy, degraded or unhealthy)", s)
}

// Locality places an endpoint for locality-aware load balancing.
type Locality struct {
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	SubZone string `json:"sub_zone,omitempty"`
}

// ServiceKey names a service uniquely in the mesh.
type ServiceKey struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// DefaultNamespace is used wherever a namespace is not given.
const DefaultNamespace = "default"

// String renders the key as namespace/name.
func (k ServiceKey) String() string { return k.Namespace + "/" + k.Name }

// Compare orders keys by namespace, then name.
func (k ServiceKey) Compare(o ServiceKey) int {
	if c := strings.Compare(k.Namespace, o.Namespace); c != 0 {
		return c
	}
	return strings.Compare(k.Name, o.Name)
}

// ParseServiceKey reads "name" (in defaultNS) or "namespace/name".
func ParseServiceKey(s, defaultNS string) ServiceKey {
	if ns, name, ok := strings.Cut(s, "/"); ok {
		return ServiceKey{Namespace: ns, Name: name}
	}
	return ServiceKey{Namespace: defaultNS, Name: s}
}

// Upstream is a service a workload calls through its sidecar, on a local port.
type Upstream struct {
	Service   ServiceKey `json:"service"`
	LocalPort uint32     `json:"local_port"`
}

// Endpoint is one instance of a service.
type Endpoint struct {
	Address string            `json:"address"`
	Port    uint32            `json:"port"`
	Labels  map[string]string `json:"labels,omitempty"`
	Locality
	Health Health `json:"health"`
	// Identity is the workload's SPIFFE ID.
	Identity string `json:"identity,omitempty"`
	// SidecarPort is the port of the instance's sidecar inbound listener, or 0.
	SidecarPort uint32 `json:"sidecar_port,omitempty"`
	// Weight is the relative load-balancing weight; 0 means 1.
	Weight uint32 `json:"weight,omitempty"`
	// Source names the discovery source that reported the endpoint.
	Source string `json:"source,omitempty"`
}

// Equal reports whether two endpoints are identical.
func (e *Endpoint) Equal(o *Endpoint) bool {
	return e.Address == o.Address && e.Port == o.Port && maps.Equal(e.Labels, o.Labels) &&
		e.Locality == o.Locality && e.Health == o.Health && e.Identity == o.Identity &&
		e.SidecarPort == o.SidecarPort && e.Weight == o.Weight && e.Source == o.Source
}

// Service is a named set of endpoints speaking one protocol.
type Service struct {
	ServiceKey
	Protocol  Protocol          `json:"protocol"`
	Labels    map[string]string `json:"labels,omitempty"`
	Upstreams []Upstream        `json:"upstreams,omitempty"`
	Endpoints []Endpoint        `json:"endpoints"`
	// Sources lists the discovery sources that contributed to the service.
	Sources []string `json:"sources"`
}

// Clone returns a deep copy.
func (s *Service) Clone() *Service {
	c := *s
	c.Labels = maps.Clone(s.Labels)
	c.Upstreams = slices.Clone(s.Upstreams)
	c.Sources = slices.Clone(s.Sources)
	c.Endpoints = make([]Endpoint, len(s.Endpoints))
	for i, e := range s.Endpoints {
		e.Labels = maps.Clone(e.Labels)
		c.Endpoints[i] = e
	}
	return &c
}

// Normalize sorts everything that has no meaningful order so that equal
// services compare equal and render identically.
func (s *Service) Normalize() {
	if s.Namespace == "" {
		s.Namespace = DefaultNamespace
	}
	slices.SortFunc(s.Endpoints, func(a, b Endpoint) int {
		if c := compareEndpoints(a, b); c != 0 {
			return c
		}
		// Same address, port and source: order by the rest of the content so
		// that the one kept below does not depend on the input order.
		return bytes.Compare(endpointJSON(a), endpointJSON(b))
	})
	s.Endpoints = slices.CompactFunc(s.Endpoints, func(a, b Endpoint) bool { return compareEndpoints(a, b) == 0 && a.Source == b.Source })
	slices.SortFunc(s.Upstreams, func(a, b Upstream) int {
		if c := a.Service.Compare(b.Service); c != 0 {
			return c
		}
		return int(a.LocalPort) - int(b.LocalPort)
	})
	slices.Sort(s.Sources)
	s.Sources = slices.Compact(s.Sources)
}

func endpointJSON(e Endpoint) []byte {
	b, _ := json.Marshal(e) // cannot fail: strings, numbers and a string map
	return b
}

func compareEndpoints(a, b Endpoint) int {
	if c := strings.Compare(a.Address, b.Address); c != 0 {
		return c
	}
	if a.Port != b.Port {
		if a.Port < b.Port {
			return -1
		}
		return 1
	}
	return strings.Compare(a.Source, b.Source)
}

// Equal reports whether two services are identical (both normalized).
func (s *Service) Equal(o *Service) bool {
	if s.ServiceKey != o.ServiceKey || s.Protocol != o.Protocol || !maps.Equal(s.Labels, o.Labels) ||
		!slices.Equal(s.Upstreams, o.Upstreams) || !slices.Equal(s.Sources, o.Sources) || len(s.Endpoints) != len(o.Endpoints) {
		return false
	}
	for i := range s.Endpoints {
		if !s.Endpoints[i].Equal(&o.Endpoints[i]) {
			return false
		}
	}
	return true
}

// SidecarEndpoint returns the first endpoint (in sorted order) with a sidecar
// port, used to pick default ports for a sidecar that does not name its own.
func (s *Service) SidecarEndpoint() (Endpoint, bool) {
	for _, e := range s.Endpoints {
		if e.SidecarPort != 0 {
			return e, true
		}
	}
	return Endpoint{}, false
}

// ServiceIdentity is the SPIFFE ID of a Consul, Nomad or file-registry
// workload: spiffe://<trust-domain>/ns/<namespace>/svc/<service>.
func ServiceIdentity(trustDomain, namespace, service string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/svc/" + service
}

// ServiceAccountIdentity is the SPIFFE ID of a Kubernetes workload:
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func ServiceAccountIdentity(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}
