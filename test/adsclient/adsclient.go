// Package adsclient is a simulated Envoy: a real ADS client over gRPC that
// subscribes the way Envoy does (CDS and LDS as wildcards, then EDS for the
// clusters and RDS for the route configurations they name), applies what it
// receives, and ACKs or NACKs every response. It speaks state-of-the-world
// and delta xDS. Tests use it to check the server's protocol handling, and
// the benchmarks to connect thousands of proxies.
package adsclient

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"maps"
	"slices"
	"sync"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

// Update reports one response the client applied (or rejected).
type Update struct {
	TypeURL string
	Version string
	Names   []string
	NACKed  bool
	Bytes   int
}

// Options configure a client.
type Options struct {
	Node  *core.Node
	Delta bool
	// Reject, when set, decides whether to NACK a response (return an error).
	Reject func(typeURL string, resources []*anypb.Any) error
	// Updates, when set, receives every applied response (it must not block for long).
	Updates chan<- Update
	// Light makes the client cheap enough to simulate thousands of proxies in
	// one process: responses are read from their bytes into a buffer the
	// client reuses, resource names are read from the wire (field 1 of every
	// xDS resource type) instead of decoding each resource, only resources
	// whose bytes changed are decoded (to find the EDS and RDS names that
	// clusters and listeners refer to), the client keeps a fingerprint of
	// each resource instead of the resource (Resource finds none), and
	// Update.Names is left nil. Applied.Changed is then valid only during
	// the OnApplied call.
	Light bool
	// OnApplied, when set, is called on the stream's goroutine after each
	// response has been ACKed (or NACKed), with the resources it added or
	// changed; resources a state-of-the-world response repeats unchanged are
	// left out. It must not block for long.
	OnApplied func(Applied)
}

// Applied describes one response after the client answered it.
type Applied struct {
	TypeURL string
	Version string
	// Changed holds the resources the response added or changed, by name.
	Changed map[string]*anypb.Any
	// Removed names the resources it removed.
	Removed []string
	NACKed  bool
	Bytes   int
}

// Client is one simulated proxy.
type Client struct {
	opts Options

	mu        sync.Mutex
	resources map[string]map[string]*anypb.Any // type -> name -> resource
	versions  map[string]string
	bytes     int64

	// deps caches, in Light mode, the dependent names of each cluster and
	// listener (type -> name -> EDS or RDS names); stream goroutine only.
	deps map[string]map[string][]string
	// fps holds, in Light mode, a fingerprint of each resource held (type ->
	// name -> hash of its bytes) in place of resources.
	fps  map[string]map[string]uint64
	seed maphash.Seed
	// changed is reused for Applied.Changed in Light mode.
	changed map[string]*anypb.Any
}

// New returns a client; call Run to connect.
func New(opts Options) *Client {
	return &Client{opts: opts, resources: map[string]map[string]*anypb.Any{}, versions: map[string]string{}, deps: map[string]map[string][]string{},
		fps: map[string]map[string]uint64{}, seed: maphash.MakeSeed(), changed: map[string]*anypb.Any{}}
}

// Version returns the last applied version of a type.
func (c *Client) Version(typeURL string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.versions[typeURL]
}

// Names returns the names of the resources held of a type, sorted.
func (c *Client) Names(typeURL string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.opts.Light {
		return slices.Sorted(maps.Keys(c.fps[typeURL]))
	}
	return slices.Sorted(maps.Keys(c.resources[typeURL]))
}

// Resource returns one resource held.
func (c *Client) Resource(typeURL, name string) (*anypb.Any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.resources[typeURL][name]
	return r, ok
}

// BytesReceived counts the resource bytes received.
func (c *Client) BytesReceived() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// Run opens an ADS stream on conn and processes responses until ctx ends or
// the stream fails.
func (c *Client) Run(ctx context.Context, conn grpc.ClientConnInterface) error {
	ads := discoverypb.NewAggregatedDiscoveryServiceClient(conn)
	if c.opts.Delta {
		return c.runDelta(ctx, ads)
	}
	return c.runSotW(ctx, ads)
}

// dependents returns the EDS and RDS names that clusters and listeners refer to.
func dependents(typeURL string, rs map[string]*anypb.Any) (string, []string) {
	var names []string
	switch typeURL {
	case resourcev3.ClusterType:
		for _, a := range rs {
			c := &cluster.Cluster{}
			if a.UnmarshalTo(c) != nil || c.GetType() != cluster.Cluster_EDS {
				continue
			}
			n := c.GetEdsClusterConfig().GetServiceName()
			if n == "" {
				n = c.GetName()
			}
			names = append(names, n)
		}
		return resourcev3.EndpointType, sortedUnique(names)
	case resourcev3.ListenerType:
		for _, a := range rs {
			l := &listener.Listener{}
			if a.UnmarshalTo(l) != nil {
				continue
			}
			var managers []*anypb.Any
			if api := l.GetApiListener().GetApiListener(); api != nil {
				managers = append(managers, api)
			}
			for _, fc := range l.GetFilterChains() {
				for _, f := range fc.GetFilters() {
					managers = append(managers, f.GetTypedConfig())
				}
			}
			for _, m := range managers {
				h := &hcm.HttpConnectionManager{}
				if m.MessageIs(h) && m.UnmarshalTo(h) == nil && h.GetRds() != nil {
					names = append(names, h.GetRds().GetRouteConfigName())
				}
			}
		}
		return resourcev3.RouteType, sortedUnique(names)
	}
	return "", nil
}

// fullState reports whether a state-of-the-world response of the type
// carries every resource (listeners, clusters: what it leaves out is gone)
// or only some (routes, endpoints, secrets: what it leaves out is kept).
func fullState(typeURL string) bool {
	return typeURL == resourcev3.ListenerType || typeURL == resourcev3.ClusterType
}

// lightDependents updates the cache of dependent names with the resources
// that changed or went away and returns the union, as dependents does.
func (c *Client) lightDependents(typeURL string, changed map[string]*anypb.Any, removed []string) (string, []string) {
	var dt string
	switch typeURL {
	case resourcev3.ClusterType:
		dt = resourcev3.EndpointType
	case resourcev3.ListenerType:
		dt = resourcev3.RouteType
	default:
		return "", nil
	}
	cache := c.deps[typeURL]
	if cache == nil {
		cache = map[string][]string{}
		c.deps[typeURL] = cache
	}
	for _, n := range removed {
		delete(cache, n)
	}
	for n, a := range changed {
		if typeURL == resourcev3.ClusterType {
			cache[n] = wireEDSName(n, a.GetValue())
			continue
		}
		_, names := dependents(typeURL, map[string]*anypb.Any{n: a})
		cache[n] = names
	}
	var names []string
	for _, ns := range cache {
		names = append(names, ns...)
	}
	return dt, sortedUnique(names)
}

// wireEDSName reads, without decoding the cluster, the EDS name a cluster
// refers to (as dependents does): none unless its type (field 2) is EDS,
// then eds_cluster_config (field 3).service_name (field 2), or the cluster's
// name.
func wireEDSName(name string, b []byte) []string {
	eds, service := false, ""
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		switch {
		case num == 2 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return nil
			}
			eds = v == uint64(cluster.Cluster_EDS)
			b = b[n:]
			continue
		case num == 3 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil
			}
			for len(v) > 0 {
				fnum, ftyp, fn := protowire.ConsumeTag(v)
				if fn < 0 {
					break
				}
				v = v[fn:]
				if fnum == 2 && ftyp == protowire.BytesType {
					sv, sn := protowire.ConsumeBytes(v)
					if sn < 0 {
						break
					}
					service = string(sv)
					v = v[sn:]
					continue
				}
				fn = protowire.ConsumeFieldValue(fnum, ftyp, v)
				if fn < 0 {
					break
				}
				v = v[fn:]
			}
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil
		}
		b = b[n:]
	}
	if !eds {
		return nil
	}
	if service == "" {
		service = name
	}
	return []string{service}
}

// changedResources returns the resources of next that old lacks or holds
// with other bytes.
func changedResources(old, next map[string]*anypb.Any) map[string]*anypb.Any {
	out := map[string]*anypb.Any{}
	for n, a := range next {
		if o, ok := old[n]; !ok || o.GetTypeUrl() != a.GetTypeUrl() || !bytes.Equal(o.GetValue(), a.GetValue()) {
			out[n] = a
		}
	}
	return out
}

// applyLight records a response's resources as fingerprints and returns
// those that changed (in the reused map) and the names removed: every name
// held but not in the response when full, else those named removed.
func (c *Client) applyLight(t string, res []*anypb.Any, names []string, full bool, gone []string) (map[string]*anypb.Any, []string) {
	fps := c.fps[t]
	if fps == nil {
		fps = map[string]uint64{}
		c.fps[t] = fps
	}
	clear(c.changed)
	var removed []string
	var seen map[string]struct{}
	if full {
		seen = make(map[string]struct{}, len(res))
	}
	for i, a := range res {
		h := maphash.Bytes(c.seed, a.GetValue())
		if old, ok := fps[names[i]]; !ok || old != h {
			c.changed[names[i]] = a
		}
		fps[names[i]] = h
		if full {
			seen[names[i]] = struct{}{}
		}
	}
	if full {
		for n := range fps {
			if _, ok := seen[n]; !ok {
				gone = append(gone, n)
			}
		}
	}
	for _, n := range gone {
		if _, ok := fps[n]; ok {
			removed = append(removed, n)
			delete(fps, n)
		}
	}
	return c.changed, removed
}

func sortedUnique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

func (c *Client) runSotW(ctx context.Context, ads discoverypb.AggregatedDiscoveryServiceClient) error {
	var opts []grpc.CallOption
	if c.opts.Light {
		opts = append(opts, grpc.ForceCodecV2(newRawCodec()))
	}
	stream, err := ads.StreamAggregatedResources(ctx, opts...)
	if err != nil {
		return fmt.Errorf("adsclient: open stream: %w", err)
	}
	recv := stream.Recv
	if c.opts.Light {
		var m rawMsg // reused: see Light
		recv = func() (*discoverypb.DiscoveryResponse, error) {
			if err := stream.RecvMsg(&m); err != nil {
				return nil, err
			}
			return decodeSotW(m.b)
		}
	}
	first := true
	encoded := map[string][]byte{} // Light: the encoded names of subscribed, by type
	send := func(req *discoverypb.DiscoveryRequest) error {
		if first {
			req.Node = c.opts.Node
			first = false
		}
		if c.opts.Light && req.Node == nil {
			enc, ok := encoded[req.GetTypeUrl()]
			if !ok {
				enc = encodeNames(req.GetResourceNames())
				encoded[req.GetTypeUrl()] = enc
			}
			b, err := encodeAck(enc, req)
			if err != nil {
				return err
			}
			return stream.SendMsg(&rawReq{b})
		}
		return stream.Send(req)
	}
	subscribed := map[string][]string{}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := send(&discoverypb.DiscoveryRequest{TypeUrl: t}); err != nil {
			return fmt.Errorf("adsclient: subscribe: %w", err)
		}
	}
	for {
		resp, err := recv()
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("adsclient: recv: %w", err)
		}
		t := resp.GetTypeUrl()
		ack := &discoverypb.DiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce(), ResourceNames: subscribed[t]}
		size := 0
		var rs map[string]*anypb.Any
		var resNames []string
		if c.opts.Light {
			resNames = make([]string, len(resp.GetResources()))
		} else {
			rs = make(map[string]*anypb.Any, len(resp.GetResources()))
		}
		for i, a := range resp.GetResources() {
			size += len(a.GetValue())
			if c.opts.Light {
				resNames[i] = c.name(t, a)
			} else {
				rs[c.name(t, a)] = a
			}
		}
		var reject error
		if c.opts.Reject != nil {
			reject = c.opts.Reject(t, resp.GetResources())
		}
		var changed map[string]*anypb.Any
		var removed []string
		c.mu.Lock()
		c.bytes += int64(size)
		if reject != nil {
			ack.VersionInfo = c.versions[t]
			ack.ErrorDetail = &status.Status{Code: 3, Message: reject.Error()}
		} else if c.opts.Light {
			changed, removed = c.applyLight(t, resp.GetResources(), resNames, fullState(t), nil)
			c.versions[t] = resp.GetVersionInfo()
			ack.VersionInfo = resp.GetVersionInfo()
		} else {
			if c.opts.OnApplied != nil {
				changed = changedResources(c.resources[t], rs)
			}
			if fullState(t) {
				if c.opts.OnApplied != nil {
					for n := range c.resources[t] {
						if _, ok := rs[n]; !ok {
							removed = append(removed, n)
						}
					}
				}
				c.resources[t] = rs
			} else {
				// Envoy keeps the routes and endpoints a response leaves
				// out: the server sends those that changed.
				if c.resources[t] == nil {
					c.resources[t] = map[string]*anypb.Any{}
				}
				maps.Copy(c.resources[t], rs)
				rs = c.resources[t]
			}
			c.versions[t] = resp.GetVersionInfo()
			ack.VersionInfo = resp.GetVersionInfo()
		}
		c.mu.Unlock()
		if err := send(ack); err != nil {
			return fmt.Errorf("adsclient: ack: %w", err)
		}
		c.applied(Applied{TypeURL: t, Version: resp.GetVersionInfo(), Changed: changed, Removed: removed, NACKed: reject != nil, Bytes: size})
		u := Update{TypeURL: t, Version: resp.GetVersionInfo(), NACKed: reject != nil, Bytes: size}
		if !c.opts.Light {
			c.mu.Lock()
			u.Names = slices.Sorted(maps.Keys(rs))
			c.mu.Unlock()
		}
		c.report(u)
		if reject != nil {
			continue
		}
		var dt string
		var names []string
		if c.opts.Light {
			dt, names = c.lightDependents(t, changed, removed)
		} else {
			dt, names = dependents(t, rs)
		}
		if dt != "" && !slices.Equal(names, subscribed[dt]) {
			subscribed[dt] = names
			delete(encoded, dt)
			c.mu.Lock()
			v := c.versions[dt]
			// Envoy forgets what it no longer subscribes to.
			for _, held := range []map[string]*anypb.Any{c.resources[dt]} {
				for n := range held {
					if _, ok := slices.BinarySearch(names, n); !ok {
						delete(held, n)
					}
				}
			}
			for n := range c.fps[dt] {
				if _, ok := slices.BinarySearch(names, n); !ok {
					delete(c.fps[dt], n)
				}
			}
			c.mu.Unlock()
			if err := send(&discoverypb.DiscoveryRequest{TypeUrl: dt, ResourceNames: names, VersionInfo: v}); err != nil {
				return fmt.Errorf("adsclient: subscribe: %w", err)
			}
		}
	}
}

func (c *Client) runDelta(ctx context.Context, ads discoverypb.AggregatedDiscoveryServiceClient) error {
	var opts []grpc.CallOption
	if c.opts.Light {
		opts = append(opts, grpc.ForceCodecV2(newRawCodec()))
	}
	stream, err := ads.DeltaAggregatedResources(ctx, opts...)
	if err != nil {
		return fmt.Errorf("adsclient: open delta stream: %w", err)
	}
	recv := stream.Recv
	if c.opts.Light {
		var m rawMsg // reused: see Light
		recv = func() (*discoverypb.DeltaDiscoveryResponse, error) {
			if err := stream.RecvMsg(&m); err != nil {
				return nil, err
			}
			return decodeDelta(m.b)
		}
	}
	first := true
	send := func(req *discoverypb.DeltaDiscoveryRequest) error {
		if first {
			req.Node = c.opts.Node
			first = false
		}
		return stream.Send(req)
	}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: t}); err != nil {
			return fmt.Errorf("adsclient: subscribe: %w", err)
		}
	}
	subscribed := map[string][]string{}
	for {
		resp, err := recv()
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("adsclient: recv: %w", err)
		}
		t := resp.GetTypeUrl()
		var anys []*anypb.Any
		size := 0
		for _, r := range resp.GetResources() {
			anys = append(anys, r.GetResource())
			size += len(r.GetResource().GetValue())
		}
		var reject error
		if c.opts.Reject != nil {
			reject = c.opts.Reject(t, anys)
		}
		ack := &discoverypb.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}
		var changed map[string]*anypb.Any
		var removed []string
		var held map[string]*anypb.Any
		c.mu.Lock()
		c.bytes += int64(size)
		if reject != nil {
			ack.ErrorDetail = &status.Status{Code: 3, Message: reject.Error()}
		} else if c.opts.Light {
			names := make([]string, len(resp.GetResources()))
			for i, r := range resp.GetResources() {
				names[i] = r.GetName()
			}
			changed, removed = c.applyLight(t, anys, names, false, resp.GetRemovedResources())
			c.versions[t] = resp.GetSystemVersionInfo()
		} else {
			if c.resources[t] == nil {
				c.resources[t] = map[string]*anypb.Any{}
			}
			if c.opts.OnApplied != nil {
				changed = make(map[string]*anypb.Any, len(resp.GetResources()))
				for _, r := range resp.GetResources() {
					a := r.GetResource()
					if o, ok := c.resources[t][r.GetName()]; !ok || o.GetTypeUrl() != a.GetTypeUrl() || !bytes.Equal(o.GetValue(), a.GetValue()) {
						changed[r.GetName()] = a
					}
				}
				for _, n := range resp.GetRemovedResources() {
					if _, ok := c.resources[t][n]; ok {
						removed = append(removed, n)
					}
				}
			}
			for _, r := range resp.GetResources() {
				c.resources[t][r.GetName()] = r.GetResource()
			}
			for _, n := range resp.GetRemovedResources() {
				delete(c.resources[t], n)
			}
			c.versions[t] = resp.GetSystemVersionInfo()
		}
		if !c.opts.Light {
			held = maps.Clone(c.resources[t])
		}
		c.mu.Unlock()
		if err := send(ack); err != nil {
			return fmt.Errorf("adsclient: ack: %w", err)
		}
		c.applied(Applied{TypeURL: t, Version: resp.GetSystemVersionInfo(), Changed: changed, Removed: removed, NACKed: reject != nil, Bytes: size})
		u := Update{TypeURL: t, Version: resp.GetSystemVersionInfo(), NACKed: reject != nil, Bytes: size}
		if !c.opts.Light {
			u.Names = slices.Sorted(maps.Keys(held))
		}
		c.report(u)
		if reject != nil {
			continue
		}
		var dt string
		var names []string
		if c.opts.Light {
			dt, names = c.lightDependents(t, changed, removed)
		} else {
			dt, names = dependents(t, held)
		}
		if dt != "" && !slices.Equal(names, subscribed[dt]) {
			var sub, unsub []string
			for _, n := range names {
				if !slices.Contains(subscribed[dt], n) {
					sub = append(sub, n)
				}
			}
			for _, n := range subscribed[dt] {
				if !slices.Contains(names, n) {
					unsub = append(unsub, n)
				}
			}
			subscribed[dt] = names
			if err := send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: dt, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}); err != nil {
				return fmt.Errorf("adsclient: subscribe: %w", err)
			}
		}
	}
}

func (c *Client) applied(a Applied) {
	if c.opts.OnApplied != nil {
		c.opts.OnApplied(a)
	}
}

// name reads a resource's name: decoded, or from the wire in Light mode.
func (c *Client) name(typeURL string, a *anypb.Any) string {
	if c.opts.Light {
		return wireName(a.GetValue())
	}
	return resourceName(typeURL, a)
}

// wireName reads field 1 of an encoded resource: the name of a Listener,
// RouteConfiguration, Cluster, Secret and ScopedRouteConfiguration, the
// cluster_name of a ClusterLoadAssignment.
func wireName(b []byte) string {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return ""
			}
			return string(v)
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return ""
		}
		b = b[n:]
	}
	return ""
}

func (c *Client) report(u Update) {
	if c.opts.Updates != nil {
		c.opts.Updates <- u
	}
}

// resourceName reads the name of a resource without knowing its type in advance.
func resourceName(typeURL string, a *anypb.Any) string {
	m, err := a.UnmarshalNew()
	if err != nil {
		return ""
	}
	switch r := m.(type) {
	case interface{ GetName() string }:
		return r.GetName()
	case interface{ GetClusterName() string }:
		return r.GetClusterName()
	}
	return ""
}
