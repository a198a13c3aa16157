package telemetry

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bowlinemesh/bowline/discovery"
)

// Attribution turns one access log entry, and the node that reported it,
// into the labels and numbers of a report. docs/telemetry.md ("Access log
// contract") lists the fields read; everything here is a pure function of
// the entry, the reporter and the catalog index.

// Unknown is the value of a label that cannot be known (as in Istio).
const Unknown = "unknown"

// The access log contract shared with xds/translate (accesslog.go); a test
// checks that both sides agree.
const (
	LogInbound           = "bowline_inbound"
	LogOutbound          = "bowline_outbound"
	TagUpstreamPrincipal = "upstream_peer_principal"
	// The node metadata keys that `bowline bootstrap envoy` writes
	// (xds/server node.go).
	MetaService   = "service"
	MetaNamespace = "namespace"
	MetaVersion   = "version"
)

// Label indexes of report.labels, in config.StandardTelemetryLabels order.
const (
	lReporter = iota
	lSrcWorkload
	lSrcNamespace
	lSrcPrincipal
	lSrcApp
	lSrcVersion
	lDstWorkload
	lDstNamespace
	lDstPrincipal
	lDstApp
	lDstVersion
	lDstService
	lDstServiceName
	lDstServiceNamespace
	lProtocol
	lResponseCode
	lGRPCStatus
	lResponseFlags
	lSecurity
	numLabels
)

// Values of some labels.
const (
	reporterSource      = "source"
	reporterDestination = "destination"
	protoHTTP           = "http"
	protoGRPC           = "grpc"
	protoTCP            = "tcp"
	securityMTLS        = "mutual_tls"
	securityNone        = "none"
	noFlags             = "-"
)

// kind is what a report is about.
type kind uint8

const (
	kindHTTP kind = iota
	kindTCP
)

// workload identifies a node of the service graph: a service's workloads
// of one version. Any field may be Unknown.
type workload struct {
	Namespace, Service, Version string
}

// reporter is the proxy at the other end of an ALS stream: the stream
// identifier's node and log name.
type reporter struct {
	nodeID  string
	self    workload
	inbound bool
	// hosts caches "<name>.<namespace>" (destination_service) per service:
	// the stream's own goroutine uses it, so labels cost no allocation.
	hosts map[serviceKey]string
}

// host returns "<name>.<namespace>" for a service.
func (r *reporter) host(w workload) string {
	k := serviceKey{w.Namespace, w.Service}
	if h, ok := r.hosts[k]; ok {
		return h
	}
	if r.hosts == nil || len(r.hosts) >= 4096 {
		r.hosts = map[serviceKey]string{}
	}
	h := w.Service + "." + w.Namespace
	r.hosts[k] = h
	return h
}

// newReporter reads the identifier of a stream: the node metadata written
// by `bowline bootstrap envoy` (service, namespace, version; node.cluster
// when service is missing) and the log name (inbound or outbound).
func newReporter(node *core.Node, logName string) reporter {
	f := node.GetMetadata().GetFields()
	str := func(k string) string {
		if v, ok := f[k]; ok {
			if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
				return s.StringValue
			}
		}
		return ""
	}
	r := reporter{nodeID: node.GetId(), inbound: logName == LogInbound}
	r.self.Service = or(str(MetaService), node.GetCluster(), Unknown)
	r.self.Namespace = or(str(MetaNamespace), discovery.DefaultNamespace)
	r.self.Version = or(str(MetaVersion), Unknown)
	return r
}

func or(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// report is one attributed request (HTTP) or connection event (TCP).
type report struct {
	kind    kind
	inbound bool
	labels  [numLabels]string
	// extra are the values of the telemetry block's dimensions.
	extra []string
	// HTTP: duration in milliseconds and sizes (headers and body).
	durationMs          float64
	reqBytes, respBytes uint64
	// TCP: bytes, and whether the event opens and/or closes a connection.
	sent, received    uint64
	opened, closed    bool
	intermediate      bool
	isError           bool
	mtls              bool
	src, dst          workload
	srcPrincipalKnown bool
	// countAtDestination: a destination report whose caller does not
	// report the request itself, so that the graph counts it here.
	countAtDestination bool
	// downstream is the caller's address as the reporter saw it.
	downstream netip.Addr
	method     string
	path       string
	codeDetail string
	metadata   *core.Metadata
	reporterID string
	// at is when the report arrived (set once per message).
	at time.Time
}

// attributor holds what attribution reads besides the entry.
type attributor struct {
	catalog   *catalogIndex
	dims      []dimension
	reporting reportingSet
}

// dimension is an extra label: a request or a response header.
type dimension struct {
	label    string
	header   string
	response bool
}

// http attributes an HTTP entry. extra must have room for the dimensions.
func (a *attributor) http(rep *reporter, e *alsdata.HTTPAccessLogEntry, r *report, extra []string) {
	c := e.GetCommonProperties()
	a.common(rep, c, r)
	r.kind = kindHTTP
	req, resp := e.GetRequest(), e.GetResponse()
	code := resp.GetResponseCode().GetValue()
	grpcStatus := resp.GetResponseTrailers()["grpc-status"]
	if grpcStatus == "" {
		grpcStatus = resp.GetResponseHeaders()["grpc-status"]
	}
	proto := protoHTTP
	if strings.HasPrefix(req.GetRequestHeaders()["content-type"], "application/grpc") || grpcStatus != "" {
		proto = protoGRPC
	}
	r.labels[lProtocol] = proto
	r.labels[lResponseCode] = codeString(code)
	r.labels[lGRPCStatus] = grpcStatus
	r.durationMs = millis(c.GetDuration())
	if r.durationMs == 0 {
		r.durationMs = millis(c.GetTimeToLastDownstreamTxByte())
	}
	r.reqBytes = req.GetRequestHeadersBytes() + req.GetRequestBodyBytes()
	r.respBytes = resp.GetResponseHeadersBytes() + resp.GetResponseBodyBytes()
	r.isError = code >= 500 || code == 0 || (proto == protoGRPC && grpcStatus != "" && grpcStatus != "0")
	r.intermediate = c.GetIntermediateLogEntry()
	r.method = req.GetRequestMethod().String()
	if r.method == "METHOD_UNSPECIFIED" {
		r.method = ""
	}
	r.path = req.GetPath()
	r.codeDetail = resp.GetResponseCodeDetails()
	r.extra = extra[:len(a.dims)]
	for i, d := range a.dims {
		var v string
		if d.response {
			v = resp.GetResponseHeaders()[d.header]
		} else {
			v = req.GetRequestHeaders()[d.header]
		}
		r.extra[i] = or(v, Unknown)
	}
}

// tcp attributes a TCP entry. extra must have room for the dimensions
// (which TCP reports leave unknown).
func (a *attributor) tcp(rep *reporter, e *alsdata.TCPAccessLogEntry, r *report, extra []string) {
	c := e.GetCommonProperties()
	a.common(rep, c, r)
	r.kind = kindTCP
	r.labels[lProtocol] = protoTCP
	r.labels[lResponseCode] = ""
	r.labels[lGRPCStatus] = ""
	r.sent = e.GetConnectionProperties().GetSentBytes()
	r.received = e.GetConnectionProperties().GetReceivedBytes()
	r.durationMs = millis(c.GetDuration())
	flags := c.GetResponseFlags()
	failed := flags.GetUpstreamConnectionFailure() || flags.GetNoHealthyUpstream() || flags.GetUpstreamOverflow() || flags.GetNoClusterFound()
	switch c.GetAccessLogType() {
	case alsdata.AccessLogType_TcpUpstreamConnected:
		r.opened = true
	case alsdata.AccessLogType_TcpConnectionEnd:
		r.closed = true
		// A connection that never reached its upstream was not reported
		// as connected: it opens and closes here.
		r.opened = c.GetUpstreamRemoteAddress() == nil
	case alsdata.AccessLogType_NotSet:
		if !c.GetIntermediateLogEntry() { // an Envoy without access log types
			r.opened, r.closed = true, true
		}
	default: // periodic entries: their byte counts are cumulative
		r.intermediate = true
	}
	r.isError = r.closed && failed
	r.extra = extra[:len(a.dims)]
	for i := range r.extra {
		r.extra[i] = Unknown
	}
}

// common fills what HTTP and TCP entries share: who called whom.
func (a *attributor) common(rep *reporter, c *alsdata.AccessLogCommon, r *report) {
	r.inbound = rep.inbound
	r.reporterID = rep.nodeID
	r.labels[lResponseFlags] = responseFlags(c.GetResponseFlags())
	r.metadata = c.GetMetadata()
	r.downstream = addrOf(c.GetDownstreamRemoteAddress()).Addr()
	tls := c.GetTlsProperties()
	if rep.inbound {
		r.labels[lReporter] = reporterDestination
		r.dst = rep.self
		r.labels[lDstPrincipal] = or(uriSAN(tls.GetLocalCertificateProperties()), Unknown)
		r.labels[lDstService] = rep.host(rep.self)
		peer := uriSAN(tls.GetPeerCertificateProperties())
		r.src = workload{Namespace: Unknown, Service: Unknown, Version: Unknown}
		r.labels[lSrcPrincipal] = Unknown
		r.labels[lSecurity] = securityNone
		if peer != "" {
			r.mtls = true
			r.labels[lSecurity] = securityMTLS
			r.labels[lSrcPrincipal] = peer
			r.srcPrincipalKnown = true
			r.src.Namespace, r.src.Service = a.principalWorkload(peer)
		}
		r.countAtDestination = !a.callerReports(r)
	} else {
		r.labels[lReporter] = reporterSource
		r.src = rep.self
		r.labels[lSrcPrincipal] = Unknown
		r.srcPrincipalKnown = true
		r.dst = workload{Namespace: Unknown, Service: Unknown, Version: Unknown}
		if ns, name, ok := clusterService(c.GetUpstreamCluster()); ok {
			r.dst.Namespace, r.dst.Service = ns, name
			r.dst.Version = a.catalog.versionAt(addrOf(c.GetUpstreamRemoteAddress()))
		}
		r.labels[lDstService] = Unknown
		if r.dst.Service != Unknown {
			r.labels[lDstService] = rep.host(r.dst)
		}
		peer := c.GetCustomTags()[TagUpstreamPrincipal]
		r.labels[lDstPrincipal] = or(peer, Unknown)
		r.mtls = peer != ""
		r.labels[lSecurity] = Unknown // as Istio's source reports
	}
	r.labels[lSrcWorkload] = r.src.Service
	r.labels[lSrcNamespace] = r.src.Namespace
	r.labels[lSrcApp] = r.src.Service
	r.labels[lSrcVersion] = r.src.Version
	r.labels[lDstWorkload] = r.dst.Service
	r.labels[lDstNamespace] = r.dst.Namespace
	r.labels[lDstApp] = r.dst.Service
	r.labels[lDstVersion] = r.dst.Version
	r.labels[lDstServiceName] = r.dst.Service
	r.labels[lDstServiceNamespace] = r.dst.Namespace
}

// callerReports tells whether the caller of a destination report reports
// the request itself, from its own sidecar (docs/telemetry.md, "Service
// graph"): a caller whose service has sidecars in the catalog does; one
// the catalog does not know does when it has an access log stream open. A
// caller without a certificate is told by its address: a sidecar's address
// in the catalog, or the address of an open stream.
func (a *attributor) callerReports(r *report) bool {
	if r.srcPrincipalKnown {
		if r.src.Service == Unknown {
			return false
		}
		if sidecar, known := a.catalog.hasSidecar(r.src.Namespace, r.src.Service); known {
			return sidecar
		}
		return a.reporting != nil && a.reporting.workloadReporting(r.src.Namespace, r.src.Service)
	}
	if !r.downstream.IsValid() {
		return false
	}
	if a.catalog.sidecarAddr(r.downstream) {
		return true
	}
	return a.reporting != nil && a.reporting.addrReporting(r.downstream.String())
}

// principalWorkload maps a SPIFFE ID to a service: the catalog's
// endpoints that carry it, else spiffe://<td>/ns/<ns>/svc/<name> itself;
// a service account (…/sa/<name>) names a namespace but no service.
func (a *attributor) principalWorkload(p string) (ns, svc string) {
	if k, ok := a.catalog.servicePrincipal(p); ok {
		return k.Namespace, k.Name
	}
	_, rest, ok := strings.Cut(strings.TrimPrefix(p, "spiffe://"), "/ns/")
	if !ok {
		return Unknown, Unknown
	}
	ns, rest, ok = strings.Cut(rest, "/")
	if !ok || ns == "" {
		return Unknown, Unknown
	}
	if name, ok := strings.CutPrefix(rest, "svc/"); ok && name != "" && !strings.Contains(name, "/") {
		return ns, name
	}
	return ns, Unknown
}

// clusterService reads a service cluster's name, "<ns>/<name>" or
// "<ns>/<name>/<subset>" (xds/translate ClusterName).
func clusterService(c string) (ns, name string, ok bool) {
	ns, rest, ok := strings.Cut(c, "/")
	if !ok || ns == "" || rest == "" {
		return "", "", false
	}
	name, _, _ = strings.Cut(rest, "/")
	return ns, name, name != ""
}

func uriSAN(p *alsdata.TLSProperties_CertificateProperties) string {
	for _, san := range p.GetSubjectAltName() {
		if u := san.GetUri(); u != "" {
			return u
		}
	}
	return ""
}

func addrOf(a *core.Address) netip.AddrPort {
	sa := a.GetSocketAddress()
	if sa == nil {
		return netip.AddrPort{}
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(sa.GetPortValue()))
}

func millis(d *durationpb.Duration) float64 {
	if d == nil {
		return 0
	}
	return float64(d.GetSeconds())*1e3 + float64(d.GetNanos())/1e6
}

// codeStrings holds the response codes as strings, so that labels cost no
// allocation.
var codeStrings = func() []string {
	s := make([]string, 600)
	for i := range s {
		s[i] = strconv.Itoa(i)
	}
	return s
}()

func codeString(c uint32) string {
	if int(c) < len(codeStrings) {
		return codeStrings[c]
	}
	return strconv.Itoa(int(c))
}

// responseFlags renders Envoy's response flags as its access logs do
// (%RESPONSE_FLAGS%): short codes joined by commas, "-" for none.
func responseFlags(f *alsdata.ResponseFlags) string {
	if f == nil {
		return noFlags
	}
	set := [...]struct {
		on   bool
		code string
	}{
		{f.GetFailedLocalHealthcheck(), "LH"}, {f.GetNoHealthyUpstream(), "UH"}, {f.GetUpstreamRequestTimeout(), "UT"},
		{f.GetLocalReset(), "LR"}, {f.GetUpstreamRemoteReset(), "UR"}, {f.GetUpstreamConnectionFailure(), "UF"},
		{f.GetUpstreamConnectionTermination(), "UC"}, {f.GetUpstreamOverflow(), "UO"}, {f.GetNoRouteFound(), "NR"},
		{f.GetDelayInjected(), "DI"}, {f.GetFaultInjected(), "FI"}, {f.GetRateLimited(), "RL"},
		{f.GetUnauthorizedDetails() != nil, "UAEX"}, {f.GetRateLimitServiceError(), "RLSE"},
		{f.GetDownstreamConnectionTermination(), "DC"}, {f.GetUpstreamRetryLimitExceeded(), "URX"},
		{f.GetStreamIdleTimeout(), "SI"}, {f.GetInvalidEnvoyRequestHeaders(), "IH"}, {f.GetDownstreamProtocolError(), "DPE"},
		{f.GetUpstreamMaxStreamDurationReached(), "UMSDR"}, {f.GetResponseFromCacheFilter(), "RFCF"},
		{f.GetNoFilterConfigFound(), "NFCF"}, {f.GetDurationTimeout(), "DT"}, {f.GetUpstreamProtocolError(), "UPE"},
		{f.GetNoClusterFound(), "NC"}, {f.GetOverloadManager(), "OM"}, {f.GetDnsResolutionFailure(), "DF"},
		{f.GetDownstreamRemoteReset(), "DR"},
	}
	var b strings.Builder
	for _, s := range set {
		if s.on {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(s.code)
		}
	}
	if b.Len() == 0 {
		return noFlags
	}
	return b.String()
}

// catalogIndex is what attribution reads from the catalog: endpoint
// versions by address and services by workload identity. Immutable; a nil
// index knows nothing.
type catalogIndex struct {
	versions   map[netip.AddrPort]string
	principals map[string]discovery.ServiceKey
	// sidecars tells, for every service of the catalog, whether it has
	// endpoints behind a sidecar; sidecarIPs are those endpoints' addresses.
	sidecars   map[discovery.ServiceKey]bool
	sidecarIPs map[netip.Addr]bool
}

func newCatalogIndex(snap *discovery.Snapshot) *catalogIndex {
	ix := &catalogIndex{versions: map[netip.AddrPort]string{}, principals: map[string]discovery.ServiceKey{},
		sidecars: map[discovery.ServiceKey]bool{}, sidecarIPs: map[netip.Addr]bool{}}
	if snap == nil {
		return ix
	}
	ambiguous := map[string]bool{}
	for _, s := range snap.Services() {
		ix.sidecars[s.ServiceKey] = ix.sidecars[s.ServiceKey] || false
		for _, e := range s.Endpoints {
			if e.SidecarPort != 0 {
				ix.sidecars[s.ServiceKey] = true
			}
			if ip, err := netip.ParseAddr(e.Address); err == nil {
				ip = ip.Unmap()
				if e.SidecarPort != 0 {
					ix.sidecarIPs[ip] = true
				}
				if v := e.Labels["version"]; v != "" {
					ix.versions[netip.AddrPortFrom(ip, uint16(e.Port))] = v
					if e.SidecarPort != 0 {
						ix.versions[netip.AddrPortFrom(ip, uint16(e.SidecarPort))] = v
					}
				}
			}
			if e.Identity == "" || ambiguous[e.Identity] {
				continue
			}
			if k, ok := ix.principals[e.Identity]; ok && k != s.ServiceKey {
				delete(ix.principals, e.Identity)
				ambiguous[e.Identity] = true
				continue
			}
			ix.principals[e.Identity] = s.ServiceKey
		}
	}
	return ix
}

func (ix *catalogIndex) versionAt(a netip.AddrPort) string {
	if ix == nil || !a.IsValid() {
		return Unknown
	}
	if v, ok := ix.versions[a]; ok {
		return v
	}
	return Unknown
}

// hasSidecar tells whether a service has sidecars, and whether the
// catalog knows the service at all.
func (ix *catalogIndex) hasSidecar(ns, svc string) (sidecar, known bool) {
	if ix == nil {
		return false, false
	}
	sidecar, known = ix.sidecars[discovery.ServiceKey{Namespace: ns, Name: svc}]
	return sidecar, known
}

func (ix *catalogIndex) sidecarAddr(a netip.Addr) bool {
	return ix != nil && ix.sidecarIPs[a]
}

func (ix *catalogIndex) servicePrincipal(p string) (discovery.ServiceKey, bool) {
	if ix == nil {
		return discovery.ServiceKey{}, false
	}
	k, ok := ix.principals[p]
	return k, ok
}
