package xdsbench

import (
	"fmt"
	"strings"

	"github.com/bowlinemesh/bowline/test/registrytest"
)

// Workload is one benchmark point: Proxies simulated Envoys, each of which
// receives every one of Services services of Endpoints endpoints (Consul's
// transparent mode; Bowline's all_services sidecars). Proxy i fronts service
// i mod Services as its instance i / Services.
type Workload struct {
	Proxies   int `json:"n"`
	Services  int `json:"s"`
	Endpoints int `json:"e"`
}

func (w Workload) String() string {
	return fmt.Sprintf("N=%d S=%d E=%d", w.Proxies, w.Services, w.Endpoints)
}

// Validate checks that the point makes sense.
func (w Workload) Validate() error {
	if w.Proxies < 1 || w.Services < 1 || w.Endpoints < 2 {
		return fmt.Errorf("workload %s: want N >= 1, S >= 1, E >= 2", w)
	}
	if w.Services > 65536 {
		return fmt.Errorf("workload %s: at most 65536 services", w)
	}
	if w.Proxies > w.Services*w.Endpoints {
		return fmt.Errorf("workload %s: each proxy is one endpoint of a service, so N <= S*E", w)
	}
	return nil
}

// Ports of the workload's endpoints. The last endpoint of every service (the
// marker) listens on MarkerBase + the service's generation: a change to a
// service bumps its generation, and a proxy has applied the change when the
// ClusterLoadAssignment it holds carries the new port.
const (
	AppPort     = registrytest.AppPort // the application behind each endpoint
	SidecarPort = 21000                // the sidecar of each endpoint (Consul: the EDS port)
	MarkerBase  = registrytest.MarkerBase
	// MaxGeneration keeps marker ports below 65536.
	MaxGeneration = 65535 - MarkerBase
)

// ServiceName names service k.
func ServiceName(k int) string { return registrytest.ServiceName(k) }

// ServiceIndex reads the service index out of a resource name that contains
// a service name ("default/svc-0001", "svc-0001.default.dc1.internal.<id>.consul"),
// or returns -1.
func ServiceIndex(name string) int {
	i := strings.Index(name, "svc-")
	if i < 0 {
		return -1
	}
	n, digits := 0, 0
	for _, c := range name[i+4:] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
		digits++
	}
	if digits == 0 {
		return -1
	}
	return n
}

// EndpointAddress is the address of endpoint j of service k.
func EndpointAddress(k, j int) string { return registrytest.EndpointAddress(k, j) }

// ProxyService is the service proxy i fronts, and ProxyInstance which of its
// endpoints it is.
func (w Workload) ProxyService(i int) int  { return i % w.Services }
func (w Workload) ProxyInstance(i int) int { return i / w.Services }

// ProxyID is the node id of proxy i: Consul's sidecar service ID
// "<service>-<instance>-sidecar-proxy".
func (w Workload) ProxyID(i int) string {
	return InstanceID(w.ProxyService(i), w.ProxyInstance(i)) + "-sidecar-proxy"
}

// InstanceID is the service ID of endpoint j of service k.
func InstanceID(k, j int) string { return fmt.Sprintf("%s-%d", ServiceName(k), j) }

// Marker is the index of the endpoint whose port carries the generation.
func (w Workload) Marker() int { return w.Endpoints - 1 }
