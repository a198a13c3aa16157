package server

import (
	"context"
	"fmt"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bowlinemesh/bowline/xds/translate"
)

// callbacks implements go-control-plane's server callbacks on Server. They
// run on the stream goroutines, before the cache is asked for a watch, so a
// proxy's snapshot is in place by the time its first request is answered.
type callbacks Server

var _ serverv3.Callbacks = (*callbacks)(nil)

func (c *callbacks) OnStreamOpen(_ context.Context, id int64, _ string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.streams[id] = &stream{}
	return nil
}

func (c *callbacks) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.streams[id] = &stream{delta: true, sent: map[string]string{}}
	return nil
}

func (c *callbacks) OnStreamClosed(id int64, _ *core.Node)      { c.closeStream(id) }
func (c *callbacks) OnDeltaStreamClosed(id int64, _ *core.Node) { c.closeStream(id) }

func (c *callbacks) closeStream(id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.streams[id]
	delete(c.streams, id)
	if !ok || st.nodeID == "" {
		return
	}
	p, ok := c.proxies[st.nodeID]
	if !ok {
		return
	}
	p.streams--
	if p.streams <= 0 {
		delete(c.proxies, st.nodeID)
		c.cache.clear(st.nodeID)
		c.metrics.connected.Set(float64(len(c.proxies)))
		c.log.Info("proxy disconnected", "proxy", st.nodeID)
		return
	}
	if _, ok := p.asked[id]; ok {
		delete(p.asked, id)
		c.updateListeners(p) // drop what only the closed stream wanted
	}
}

// attach registers the stream's proxy on its first request.
// att is the sidecar's attestation (identity.go), made before the lock.
func (c *callbacks) attach(id int64, node *core.Node, delta bool, att *attestation) (*proxy, error) {
	st, ok := c.streams[id]
	if !ok {
		st = &stream{delta: delta, sent: map[string]string{}}
		c.streams[id] = st
	}
	if st.nodeID != "" {
		if p, ok := c.proxies[st.nodeID]; ok {
			return p, nil
		}
	}
	if node.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "xds: the node has no id")
	}
	spec, err := ProxyFromNode(node)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, fmt.Sprintf("xds: node %s: %v", node.GetId(), err))
	}
	st.nodeID = node.GetId()
	p, ok := c.proxies[st.nodeID]
	if !ok {
		p = newProxy(st.nodeID, spec, node.GetUserAgentName(), delta)
		c.proxies[st.nodeID] = p
		(*Server)(c).attachIdentityLocked(p, att)
		c.metrics.connected.Set(float64(len(c.proxies)))
		c.log.Info("proxy connected", "proxy", p.id, "kind", spec.Kind, "service", spec.Service, "delta", delta)
		(*Server)(c).rebuildLocked(p, (*Server)(c).partsLocked(), time.Now())
	}
	p.streams++
	return p, nil
}

func (c *callbacks) OnStreamRequest(id int64, req *discoverypb.DiscoveryRequest) error {
	att := (*Server)(c).attestStream(id, req.GetNode())
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.attach(id, req.GetNode(), false, att)
	if err != nil {
		return err
	}
	c.observe(p, req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	if req.GetTypeUrl() == resourcev3.ListenerType && p.spec.Kind == translate.KindGRPC && len(req.GetResourceNames()) > 0 {
		// A state-of-the-world request names everything the stream wants.
		names := make(map[string]struct{}, len(req.GetResourceNames()))
		for _, n := range req.GetResourceNames() {
			names[n] = struct{}{}
		}
		p.asked[id] = names
		c.updateListeners(p)
	}
	return nil
}

// updateListeners sets a gRPC proxy's listeners to the union of what its
// streams asked for, and rebuilds it when that changed. c.mu must be held.
func (c *callbacks) updateListeners(p *proxy) {
	var names []string
	for _, asked := range p.asked {
		for n := range asked {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return // no stream has named any: keep what the proxy has
	}
	if p.setListeners(names) {
		(*Server)(c).rebuildLocked(p, (*Server)(c).partsLocked(), time.Now())
	}
}

func (c *callbacks) OnStreamResponse(context.Context, int64, *discoverypb.DiscoveryRequest, *discoverypb.DiscoveryResponse) {
}

func (c *callbacks) OnStreamDeltaRequest(id int64, req *discoverypb.DeltaDiscoveryRequest) error {
	att := (*Server)(c).attestStream(id, req.GetNode())
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.attach(id, req.GetNode(), true, att)
	if err != nil {
		return err
	}
	version := ""
	if st := c.streams[id]; st != nil && req.GetResponseNonce() != "" {
		version = st.sent[req.GetResponseNonce()]
		delete(st.sent, req.GetResponseNonce())
	}
	c.observe(p, req.GetTypeUrl(), req.GetResponseNonce(), version, req.GetErrorDetail().GetMessage(), req.GetErrorDetail() != nil)
	if req.GetTypeUrl() == resourcev3.ListenerType && p.spec.Kind == translate.KindGRPC &&
		len(req.GetResourceNamesSubscribe())+len(req.GetResourceNamesUnsubscribe()) > 0 {
		// A delta request names what changed in the stream's subscription.
		names := p.asked[id]
		if names == nil {
			names = map[string]struct{}{}
			p.asked[id] = names
		}
		for _, n := range req.GetResourceNamesSubscribe() {
			names[n] = struct{}{}
		}
		for _, n := range req.GetResourceNamesUnsubscribe() {
			delete(names, n)
		}
		c.updateListeners(p)
	}
	return nil
}

func (c *callbacks) OnStreamDeltaResponse(id int64, _ *discoverypb.DeltaDiscoveryRequest, resp *discoverypb.DeltaDiscoveryResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.streams[id]; st != nil {
		st.sent[resp.GetNonce()] = resp.GetSystemVersionInfo()
	}
}

func (c *callbacks) OnFetchRequest(context.Context, *discoverypb.DiscoveryRequest) error { return nil }
func (c *callbacks) OnFetchResponse(*discoverypb.DiscoveryRequest, *discoverypb.DiscoveryResponse) {
}

// observe records an ACK or a NACK.
func (c *callbacks) observe(p *proxy, typeURL, nonce, version, errMsg string, nack bool) {
	if nonce == "" {
		return // a new subscription, not an answer
	}
	if nack {
		p.lastNACK = &NACK{Type: typeNames[typeURL], Version: version, Error: errMsg, At: time.Now()}
		c.metrics.nacks.WithLabelValues(typeNames[typeURL]).Inc()
		c.log.Warn("proxy rejected configuration", "proxy", p.id, "type", typeNames[typeURL], "error", errMsg)
		return
	}
	if version == "" {
		return
	}
	p.acked[typeURL] = version
	if pp, ok := p.pending[typeURL]; ok && pp.version == version {
		c.metrics.pushLatency.Observe(time.Since(pp.since).Seconds())
		delete(p.pending, typeURL)
	}
}
