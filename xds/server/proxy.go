package server

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/translate"
)

// proxy is the server's record of one connected xDS client.
type proxy struct {
	id        string
	spec      translate.Proxy
	userAgent string
	since     time.Time
	streams   int
	delta     bool

	versions map[string]string // served, by type URL
	acked    map[string]string
	pending  map[string]pendingPush
	lastNACK *NACK
	buildErr string
	services map[discovery.ServiceKey]struct{} // the (shared) outbound part depends on these
	own      map[discovery.ServiceKey]struct{} // and the inbound part on these
	built    *built
	// asked holds, by stream, the listener names a gRPC client asked for.
	// One gRPC process may open several streams with one node id (gRPC-Go
	// has an xDS client per channel target): the proxy is built for the
	// union of its streams' names, so one stream's subscription never
	// removes another's listeners.
	asked map[int64]map[string]struct{}
	// streamSet is the proxy's streams, woken when its configuration
	// changes.
	streamSet map[int64]*adsStream
}

type pendingPush struct {
	version string
	since   time.Time
}

// NACK is a response a proxy rejected.
type NACK struct {
	Type    string    `json:"type"`
	Version string    `json:"version"`
	Error   string    `json:"error"`
	At      time.Time `json:"at"`
}

// ProxyStatus is what the admin API shows of a proxy.
type ProxyStatus struct {
	ID             string            `json:"id"`
	Kind           translate.Kind    `json:"kind"`
	Service        string            `json:"service"`
	Namespace      string            `json:"namespace"`
	UserAgent      string            `json:"user_agent,omitempty"`
	Protocol       string            `json:"protocol"`
	ConnectedSince time.Time         `json:"connected_since"`
	Streams        int               `json:"streams"`
	Sent           map[string]string `json:"sent"`
	Acked          map[string]string `json:"acked"`
	LastNACK       *NACK             `json:"last_nack,omitempty"`
	BuildError     string            `json:"build_error,omitempty"`
}

func newProxy(id string, spec translate.Proxy, userAgent string, delta bool) *proxy {
	return &proxy{
		id: id, spec: spec, userAgent: userAgent, since: time.Now(), delta: delta,
		acked: map[string]string{}, pending: map[string]pendingPush{}, asked: map[int64]map[string]struct{}{},
		streamSet: map[int64]*adsStream{},
	}
}

// specKey identifies what a translation depends on in a proxy's spec:
// proxies (and parts) with equal keys share one translation.
func specKey(s translate.Proxy) string {
	var b strings.Builder
	name := s.Service.Name
	if s.Kind == translate.KindGRPC && !slices.ContainsFunc(s.Listeners, func(l string) bool { return strings.HasPrefix(l, translate.ServerListenerPrefix) }) {
		name = "" // a gRPC client's name does not change what it is sent (a server's RBAC does)
	}
	fmt.Fprintf(&b, "%s|%d|%s/%s|%d|%d|%t|%s/%s/%s|", s.Kind, s.Part, s.Service.Namespace, name, s.InboundPort, s.LocalPort,
		s.AllServices, s.Locality.Region, s.Locality.Zone, s.Locality.SubZone)
	for _, u := range s.Upstreams {
		fmt.Fprintf(&b, "%s:%d,", u.Service, u.LocalPort)
	}
	b.WriteByte('|')
	b.WriteString(strings.Join(s.Listeners, ","))
	b.WriteString(tlsKey(s.TLS))
	return b.String()
}

// affectedBy reports whether a change to these services can change the
// proxy's configuration.
func (p *proxy) affectedBy(changed map[discovery.ServiceKey]struct{}) bool {
	if p.spec.AllServices || p.services == nil {
		return len(changed) > 0 || p.services == nil
	}
	if _, ok := changed[p.spec.Service]; ok {
		return true // its own declarations (ports, upstreams) may have changed
	}
	for k := range changed {
		if _, ok := p.services[k]; ok {
			return true
		}
		if _, ok := p.own[k]; ok {
			return true
		}
	}
	return false
}

func (p *proxy) status() ProxyStatus {
	st := ProxyStatus{
		ID: p.id, Kind: p.spec.Kind, Service: p.spec.Service.Name, Namespace: p.spec.Service.Namespace,
		UserAgent: p.userAgent, Protocol: "sotw", ConnectedSince: p.since, Streams: p.streams,
		Sent: map[string]string{}, Acked: map[string]string{}, LastNACK: p.lastNACK, BuildError: p.buildErr,
	}
	if p.delta {
		st.Protocol = "delta"
	}
	for t, v := range p.versions {
		st.Sent[typeNames[t]] = v
	}
	for t, v := range p.acked {
		st.Acked[typeNames[t]] = v
	}
	return st
}

// setListeners records the listener names a gRPC client asked for; it
// reports whether they changed.
func (p *proxy) setListeners(names []string) bool {
	names = slices.Clone(names)
	slices.Sort(names)
	names = slices.Compact(names)
	if slices.Equal(names, p.spec.Listeners) {
		return false
	}
	p.spec.Listeners = names
	return true
}
