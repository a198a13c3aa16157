package file

import (
	"maps"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
)

// Convert maps the configuration's service declarations to the model.
func Convert(cfg *config.Config) []*discovery.Service {
	out := make([]*discovery.Service, 0, len(cfg.Services))
	for _, d := range cfg.Services {
		out = append(out, convertService(cfg.Mesh.TrustDomain, d))
	}
	return out
}

// converter is Convert for one configuration after another: a declaration
// converted before (the same one, or one declaring the same) gives the
// service it gave then, so that the catalog finds the services that did not
// change as they were and merges, normalizes and hashes none of them again.
// The services it returns are shared between calls: nobody may modify them
// (the catalog does not).
type converter struct {
	trustDomain string
	last        map[discovery.ServiceKey]convertedService
}

type convertedService struct {
	decl *config.ServiceDecl
	svc  *discovery.Service
}

func (c *converter) convert(cfg *config.Config) []*discovery.Service {
	if cfg.Mesh.TrustDomain != c.trustDomain {
		c.trustDomain, c.last = cfg.Mesh.TrustDomain, nil // every identity changes
	}
	next := make(map[discovery.ServiceKey]convertedService, len(cfg.Services))
	out := make([]*discovery.Service, 0, len(cfg.Services))
	for _, d := range cfg.Services {
		key := discovery.ServiceKey{Namespace: d.Namespace, Name: d.Name}
		p, ok := c.last[key]
		if !ok || (p.decl != d && !sameDecl(p.decl, d)) {
			p = convertedService{decl: d, svc: convertService(cfg.Mesh.TrustDomain, d)}
		}
		next[key] = p
		out = append(out, p.svc)
	}
	c.last = next
	return out
}

// sameDecl reports whether two declarations declare the same service, where
// they are declared aside.
func sameDecl(a, b *config.ServiceDecl) bool {
	if a.Name != b.Name || a.Namespace != b.Namespace || a.Protocol != b.Protocol || !maps.Equal(a.Labels, b.Labels) ||
		len(a.Endpoints) != len(b.Endpoints) || len(a.Upstreams) != len(b.Upstreams) {
		return false
	}
	for i, x := range a.Endpoints {
		y := b.Endpoints[i]
		if x.Address != y.Address || x.Port != y.Port || !maps.Equal(x.Labels, y.Labels) || x.Health != y.Health ||
			x.SidecarPort != y.SidecarPort || x.Region != y.Region || x.Zone != y.Zone || x.Weight != y.Weight {
			return false
		}
	}
	for i, x := range a.Upstreams {
		y := b.Upstreams[i]
		if x.Name != y.Name || x.Namespace != y.Namespace || x.LocalPort != y.LocalPort {
			return false
		}
	}
	return true
}

// convertService maps one declaration to the model.
func convertService(trustDomain string, d *config.ServiceDecl) *discovery.Service {
	proto, err := discovery.ParseProtocol(d.Protocol)
	if err != nil {
		proto = discovery.ProtocolTCP // the decoder already rejected bad values
	}
	svc := &discovery.Service{
		ServiceKey: discovery.ServiceKey{Namespace: d.Namespace, Name: d.Name},
		Protocol:   proto,
		Labels:     maps.Clone(d.Labels),
		Endpoints:  make([]discovery.Endpoint, 0, len(d.Endpoints)),
	}
	for _, u := range d.Upstreams {
		ns := u.Namespace
		if ns == "" {
			ns = d.Namespace
		}
		svc.Upstreams = append(svc.Upstreams, discovery.Upstream{
			Service:   discovery.ServiceKey{Namespace: ns, Name: u.Name},
			LocalPort: u.LocalPort,
		})
	}
	identity := discovery.ServiceIdentity(trustDomain, d.Namespace, d.Name)
	for _, e := range d.Endpoints {
		health, err := discovery.ParseHealth(e.Health)
		if err != nil {
			health = discovery.HealthHealthy
		}
		labels := maps.Clone(d.Labels)
		if labels == nil && len(e.Labels) > 0 {
			labels = map[string]string{}
		}
		maps.Copy(labels, e.Labels)
		svc.Endpoints = append(svc.Endpoints, discovery.Endpoint{
			Address:     e.Address,
			Port:        e.Port,
			Labels:      labels,
			Locality:    discovery.Locality{Region: e.Region, Zone: e.Zone},
			Health:      health,
			Identity:    identity,
			SidecarPort: e.SidecarPort,
			Weight:      e.Weight,
		})
	}
	return svc
}
