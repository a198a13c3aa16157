package translate

import (
	"errors"
	"fmt"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxy "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protopath"
	"google.golang.org/protobuf/reflect/protorange"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

type validator interface{ ValidateAll() error }

// Check verifies that a proxy's resources pass Envoy's own validation rules
// (protoc-gen-validate, as compiled into go-control-plane) and are
// consistent: every RDS name, cluster and EDS name referenced exists.
func Check(r *Resources) error {
	var errs []error
	for _, list := range [][]types.Resource{r.Listeners, r.Routes, r.Clusters, r.Endpoints, r.Secrets} {
		for _, res := range list {
			if v, ok := res.(validator); ok {
				if err := v.ValidateAll(); err != nil {
					errs = append(errs, fmt.Errorf("%T %q: %w", res, resourceName(res), err))
				}
			}
			if err := validatePacked(res); err != nil {
				errs = append(errs, fmt.Errorf("%T %q: %w", res, resourceName(res), err))
			}
		}
	}
	routes := names(r.Routes)
	clusters := map[string]*cluster.Cluster{}
	for _, c := range r.Clusters {
		clusters[resourceName(c)] = c.(*cluster.Cluster)
	}
	cla := names(r.Endpoints)

	needCluster := func(from, name string) {
		if _, ok := clusters[name]; !ok {
			errs = append(errs, fmt.Errorf("%s refers to cluster %q, which does not exist", from, name))
		}
	}
	checkRouteConfig := func(from string, rc *route.RouteConfiguration) {
		for _, vh := range rc.GetVirtualHosts() {
			for _, rt := range vh.GetRoutes() {
				a := rt.GetRoute()
				if a == nil {
					continue
				}
				if c := a.GetCluster(); c != "" {
					needCluster(from+" route "+rt.GetName(), c)
				}
				for _, wc := range a.GetWeightedClusters().GetClusters() {
					needCluster(from+" route "+rt.GetName(), wc.GetName())
				}
				for _, m := range a.GetRequestMirrorPolicies() {
					needCluster(from+" mirror", m.GetCluster())
				}
			}
		}
	}
	for _, l := range r.Listeners {
		l := l.(*listener.Listener)
		from := fmt.Sprintf("listener %q", l.GetName())
		var filters []*listener.Filter
		for _, fc := range l.GetFilterChains() {
			filters = append(filters, fc.GetFilters()...)
		}
		var managers []*anypb.Any
		if api := l.GetApiListener().GetApiListener(); api != nil {
			managers = append(managers, api)
		}
		for _, f := range filters {
			switch f.GetTypedConfig().MessageIs((*tcpproxy.TcpProxy)(nil)) {
			case true:
				tp := &tcpproxy.TcpProxy{}
				if err := f.GetTypedConfig().UnmarshalTo(tp); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", from, err))
					continue
				}
				needCluster(from, tp.GetCluster())
			default:
				managers = append(managers, f.GetTypedConfig())
			}
		}
		for _, a := range managers {
			m := &hcm.HttpConnectionManager{}
			if !a.MessageIs(m) {
				continue
			}
			if err := a.UnmarshalTo(m); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", from, err))
				continue
			}
			if rds := m.GetRds(); rds != nil {
				if _, ok := routes[rds.GetRouteConfigName()]; !ok {
					errs = append(errs, fmt.Errorf("%s refers to route configuration %q, which does not exist", from, rds.GetRouteConfigName()))
				}
			}
			if rc := m.GetRouteConfig(); rc != nil {
				checkRouteConfig(from, rc)
			}
			if n := len(m.GetHttpFilters()); n == 0 || m.GetHttpFilters()[n-1].GetName() != "envoy.filters.http.router" {
				errs = append(errs, fmt.Errorf("%s: the router must be the last HTTP filter", from))
			}
		}
	}
	for _, rc := range r.Routes {
		rc := rc.(*route.RouteConfiguration)
		checkRouteConfig(fmt.Sprintf("route configuration %q", rc.GetName()), rc)
	}
	for name, c := range clusters {
		if c.GetType() == cluster.Cluster_EDS {
			svcName := c.GetEdsClusterConfig().GetServiceName()
			if svcName == "" {
				svcName = name
			}
			if _, ok := cla[svcName]; !ok {
				errs = append(errs, fmt.Errorf("cluster %q has no endpoints resource %q", name, svcName))
			}
		}
	}
	for _, e := range r.Endpoints {
		if _, ok := clusters[e.(*endpoint.ClusterLoadAssignment).GetClusterName()]; !ok {
			errs = append(errs, fmt.Errorf("endpoints %q belong to no cluster", resourceName(e)))
		}
	}
	errs = append(errs, checkSecrets(r)...)             // every SDS name exists (secrets.go)
	errs = append(errs, checkAuthz(r, clusters)...)     // ext_authz clusters exist (authz.go)
	errs = append(errs, checkTelemetry(r, clusters)...) // access log and tracer clusters exist (accesslog.go)
	errs = append(errs, checkRateLimit(r, clusters)...) // rate limit service clusters exist (ratelimit.go)
	return errors.Join(errs...)
}

func names(rs []types.Resource) map[string]bool {
	m := make(map[string]bool, len(rs))
	for _, r := range rs {
		m[resourceName(r)] = true
	}
	return m
}

// validatePacked validates the messages packed in Any fields (filter and
// extension configs, at any depth), which ValidateAll does not enter but Envoy
// validates when it loads them.
func validatePacked(m proto.Message) error {
	var errs []error
	_ = protorange.Range(m.ProtoReflect(), func(p protopath.Values) error {
		msg, ok := p.Index(-1).Value.Interface().(protoreflect.Message)
		if !ok {
			return nil
		}
		a, ok := msg.Interface().(*anypb.Any)
		if !ok {
			return nil
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
			return nil
		}
		if v, ok := inner.(validator); ok {
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.GetTypeUrl(), err))
			}
		}
		if err := validatePacked(inner); err != nil {
			errs = append(errs, err)
		}
		return nil
	})
	return errors.Join(errs...)
}
