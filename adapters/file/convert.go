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
		identity := discovery.ServiceIdentity(cfg.Mesh.TrustDomain, d.Namespace, d.Name)
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
		out = append(out, svc)
	}
	return out
}
