package identity

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ServiceID is the SPIFFE ID of a Consul, Nomad or file-registry workload:
// spiffe://<trust-domain>/ns/<namespace>/svc/<service>.
func ServiceID(td spiffeid.TrustDomain, namespace, service string) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(td, "ns", namespace, "svc", service)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: service %s/%s: %w", namespace, service, err)
	}
	return id, nil
}

// ServiceAccountID is the SPIFFE ID of a Kubernetes workload:
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func ServiceAccountID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	id, err := spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: service account %s/%s: %w", namespace, serviceAccount, err)
	}
	return id, nil
}
