// Package consul is the Consul discovery source: it watches a Consul
// datacenter's catalog with blocking queries and reports every service in it
// as discovery state.
//
// # Watching
//
// One blocking query on /v1/catalog/services follows the set of service
// names, and one per name on /v1/health/service/<name> (every instance,
// failing ones included) follows each service's instances and checks.
// Per-service watches start and stop as names appear and disappear, so at
// most one request per service and one for the catalog are outstanding. Each
// watch follows Consul's rules for blocking queries:
//
//   - a response whose index did not move is a timeout and costs nothing;
//   - an index that goes backwards restarts the watch from 0, and an index
//     of 0 is raised to 1;
//   - two requests of one watch are at least 50ms apart;
//   - after an error the watch waits (exponential backoff with jitter) and
//     then reads without blocking;
//   - the catalog watch's reads without index (the first, and those after an
//     error) are consistent reads: a Consul server that has just restarted
//     answers default reads from a store still replaying its raft log, which
//     lacks the newest registrations, while a consistent read waits until
//     the log is applied. Without this, a restart would briefly remove
//     services.
//
// A snapshot restore needs more: Consul ends some blocking queries early but
// with the old index, and others (health queries, often the catalog's too)
// not at all. So a query that ends early without a new index is followed by
// a read without index, the catalog watch waits at most a minute, and when
// the catalog's index goes backwards every service watch starts over.
//
// While the catalog watch fails, the service watches wait for it to succeed
// again, so an outage costs one probe per backoff, not one per service; a
// service watch that gets no answer or a server error makes the catalog watch
// probe at once instead of at the end of its long poll.
//
// Over plain HTTP every outstanding request holds a connection, and Consul
// refuses a client IP more than limits.http_max_conns_per_client connections
// (200 by default) with 429. So the source keeps at most Config.MaxConns
// requests open: by default three quarters of the agent's own limit, read
// from /v1/agent/self when Run starts (150 for Consul's default, and 150
// when the limit cannot be read). Up to MaxConns-1 services, each has its own
// long poll and a change reaches the catalog within tens of milliseconds.
// Beyond that the services take turns for the connections: each poll then
// waits only long enough that every service is read again within about 10s,
// which costs about one request per service every 10s, and changes take up to
// that long. To keep one long poll per service with a large catalog, raise
// the agent's limit (MaxConns follows it), or set MaxConns to -1 over HTTPS,
// where Consul speaks HTTP/2 and requests share connections. A 429 is
// logged with this advice.
//
// # State
//
// After a change the source waits for a quiet period (Config.Debounce,
// default 20ms, at most ten times that in all) and then sends its full state,
// so a burst of changes sends a few states, not one per change. The first
// state is sent once every service has been read. When Consul cannot be
// reached the source sends a State with Err and no services (the catalog keeps
// the last good state) and, once Consul answers again, its full state, even
// if nothing changed. Run never fails because Consul is down.
//
// # Conversion
//
// Each service name with instances of kind "typical" becomes a
// discovery.Service in namespace "default" (or the instance's Consul
// namespace). Its endpoints are built from the instances:
//
//   - address: the service address, else the node address; port: the
//     service port (instances without a port are dropped with a warning);
//   - labels: every tag of the form key=value becomes the label key=value;
//     the other ("plain") tags are kept, sorted and comma-separated, in the
//     single label "tags"; every meta key is copied as is and wins over tags,
//     except keys starting with "bowline-", which steer the adapter. So the
//     label "version" comes from meta "version" or a tag "version=...";
//   - health: the aggregated status of the instance's service and node checks:
//     passing is healthy, warning degraded, critical, maintenance or an
//     unknown status unhealthy; no checks is healthy;
//   - weight: Consul's passing weight, or its warning weight when degraded;
//   - locality: the region is the datacenter, the zone the node meta "zone"
//     (else Consul's own locality zone, where the agent has one);
//   - identity: spiffe://<trust-domain>/ns/<namespace>/svc/<service>, unset
//     when Config.TrustDomain is empty;
//   - sidecar port: the port of the connect-proxy registered on the same node
//     with the instance's ID as Proxy.DestinationServiceID (or, for a proxy
//     registered without one, the only instance of its destination service
//     on that node), else the meta "bowline-sidecar-port".
//
// The service's protocol is the meta "protocol" (http, http2, grpc or tcp;
// missing means tcp, an unknown value is logged and read as tcp); where
// instances disagree, the one most of them declare wins. Its upstreams are
// the service upstreams of its sidecars' Proxy.Upstreams (DestinationName on
// LocalBindPort) and the meta "bowline-upstreams" ("name:port,ns/name:port").
// Connect proxies are not services of their own, gateways are skipped, and
// Consul's own "consul" service is ignored. Sidecar health is not folded in:
// Consul's sidecar alias check already mirrors the instance's health.
package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/bowlinemesh/bowline/discovery"
)

// Defaults for the zero values of Config.
const (
	DefaultWaitTime   = 5 * time.Minute
	DefaultMinBackoff = 500 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	DefaultDebounce   = 20 * time.Millisecond
	// DefaultMaxConns stays below Consul's default per-client limit (200)
	// with room for other clients on the same host. It is used when
	// MaxConns is 0 and the agent's own limit cannot be read.
	DefaultMaxConns = 150
)

// agentLimitTimeout bounds the read of the agent's connection limit at the
// start of Run.
const agentLimitTimeout = 3 * time.Second

const (
	// minQueryInterval separates two requests of one watch.
	minQueryInterval = 50 * time.Millisecond
	// consulService is Consul's own service, never part of the mesh.
	consulService = "consul"
	// sharedReadEvery is how often every service is read when services
	// take turns for the connections.
	sharedReadEvery = 10 * time.Second
	// minSharedWait is the shortest wait of a poll when services take turns.
	minSharedWait = time.Second
	// defaultCatalogWait caps the catalog watch's wait: it bounds how long a
	// snapshot restore can go unnoticed when Consul does not end the
	// catalog's blocking query (it does not always), for one request a
	// minute.
	defaultCatalogWait = time.Minute
	// giveUpFailures is how many failures in a row make a service watch
	// worth a warning, and let the first state go without the service.
	giveUpFailures = 3
)

// Config configures a Source.
type Config struct {
	// Address of Consul's HTTP API: "host:port", "https://host:port" or
	// "unix:///path". Empty means CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
	Address string
	// Token is the ACL token; empty means CONSUL_HTTP_TOKEN.
	Token string
	// Datacenter to watch; empty means the agent's own.
	Datacenter string
	// TrustDomain of the workloads' SPIFFE IDs; empty leaves them unset.
	TrustDomain string
	// HTTPClient, when set, carries every request to Consul. It is used as
	// is: TLS settings from the environment are not applied to it, and its
	// transport should allow at most MaxConns connections to Consul
	// (http.Transport.MaxConnsPerHost), since idle connections count against
	// Consul's limit too. When nil, a pooled client with the CONSUL_* TLS
	// settings and that bound is built.
	HTTPClient *http.Client
	// WrapTransport, when set, wraps the transport of the client the source
	// builds (to count or trace requests); it is not used with HTTPClient.
	WrapTransport func(http.RoundTripper) http.RoundTripper
	// WaitTime is how long a blocking query may wait (default 5m; Consul
	// caps it at 10m and adds up to 1/16 of jitter).
	WaitTime time.Duration
	// MinBackoff and MaxBackoff bound the wait between retries after errors
	// (defaults 500ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	// Debounce is the quiet period the source waits for after a change
	// before sending its state (default 20ms); a state is sent at the latest
	// ten periods after the first change.
	Debounce time.Duration
	// MaxConns bounds the requests the source keeps open to Consul at once
	// (see the package doc). 0 sizes it from the agent's own
	// limits.http_max_conns_per_client, read from /v1/agent/self when Run
	// starts (three quarters of it, leaving room for other clients on the
	// host; no bound when the agent has none), or DefaultMaxConns when that
	// cannot be read (an ACL token without agent:read, say); a negative
	// value removes the bound: one long poll per service.
	MaxConns int
}

// Source watches Consul's catalog. Create it with New.
type Source struct {
	cfg    Config
	log    *slog.Logger
	client *api.Client
	conv   convertOptions
	// catalogWait is the catalog watch's wait: the lesser of WaitTime and
	// defaultCatalogWait.
	catalogWait time.Duration
	// autoConns is set when MaxConns is to be sized from the agent's limit;
	// transport is the source's own transport (nil with Config.HTTPClient),
	// whose bound follows.
	autoConns bool
	transport *http.Transport
}

var _ discovery.Source = (*Source)(nil)

// New returns a source for cfg; log may be nil. It does not contact Consul.
func New(cfg Config, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Token = cmp.Or(cfg.Token, os.Getenv(api.HTTPTokenEnvName))
	cfg.WaitTime = cmp.Or(cfg.WaitTime, DefaultWaitTime)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, DefaultMinBackoff)
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff), cfg.MinBackoff)
	cfg.Debounce = cmp.Or(cfg.Debounce, DefaultDebounce)
	if cfg.WaitTime < 0 || cfg.MinBackoff < 0 || cfg.Debounce < 0 {
		return nil, errors.New("consul: wait time, backoff and debounce must not be negative")
	}
	autoConns := cfg.MaxConns == 0
	switch {
	case cfg.MaxConns == 0:
		cfg.MaxConns = DefaultMaxConns
	case cfg.MaxConns == 1:
		return nil, errors.New("consul: MaxConns must be at least 2 (one for the catalog, one for services)")
	}

	client, transport, err := newClient(cfg)
	if err != nil {
		return nil, err
	}
	return &Source{
		cfg:    cfg,
		log:    log.With("source", "consul"),
		client: client,
		conv:   convertOptions{TrustDomain: cfg.TrustDomain, Datacenter: cfg.Datacenter},

		catalogWait: min(cfg.WaitTime, defaultCatalogWait),
		autoConns:   autoConns,
		transport:   transport,
	}, nil
}

// newClient builds the Consul client for cfg, and returns the transport it
// built (nil with cfg.HTTPClient).
func newClient(cfg Config) (*api.Client, *http.Transport, error) {
	ac := api.DefaultConfig()
	if cfg.Address != "" {
		ac.Address = cfg.Address
	}
	ac.Token = cfg.Token
	ac.Datacenter = cfg.Datacenter
	ac.WaitTime = cfg.WaitTime
	var transport *http.Transport
	if cfg.HTTPClient != nil {
		ac.HttpClient = cfg.HTTPClient
	} else {
		transport = ac.Transport
		// Every outstanding request holds a connection: keep them for reuse
		// when many long polls return together, but never more than Consul
		// is told to expect (idle ones count against its limit).
		if cfg.MaxConns > 0 {
			ac.Transport.MaxConnsPerHost = cfg.MaxConns
			ac.Transport.MaxIdleConnsPerHost = cfg.MaxConns
		} else {
			ac.Transport.MaxIdleConnsPerHost = 1024
		}
		if cfg.WrapTransport != nil {
			hc, err := api.NewHttpClient(ac.Transport, ac.TLSConfig)
			if err != nil {
				return nil, nil, fmt.Errorf("consul: http client: %w", err)
			}
			hc.Transport = cfg.WrapTransport(hc.Transport)
			ac.HttpClient = hc
		}
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, nil, fmt.Errorf("consul: client for %s: %w", ac.Address, err)
	}
	return client, transport, nil
}

// sizeConns sets MaxConns from the agent's limits.http_max_conns_per_client
// (see Config.MaxConns). It runs once, at the start of Run, before the
// watches use the client.
func (s *Source) sizeConns(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, agentLimitTimeout)
	defer cancel()
	limit, err := s.agentConnLimit(ctx)
	if err != nil {
		s.log.Info("cannot read the agent's connection limit: keeping the default bound on open requests",
			"max_conns", s.cfg.MaxConns, "err", err)
		return
	}
	n := maxConnsFor(limit)
	if n != s.cfg.MaxConns && s.transport != nil {
		// The transport has served the read: a new client carries the new
		// bound (a transport's settings cannot change once it is in use).
		cfg := s.cfg
		cfg.MaxConns = n
		client, transport, err := newClient(cfg)
		if err != nil {
			s.log.Info("keeping the default bound on open requests", "max_conns", s.cfg.MaxConns, "err", err)
			return
		}
		s.transport.CloseIdleConnections()
		s.client, s.transport = client, transport
	}
	s.cfg.MaxConns = n
	s.log.Debug("sized the bound on open requests from the agent's limit",
		"http_max_conns_per_client", limit, "max_conns", s.cfg.MaxConns)
}

// maxConnsFor is the MaxConns for an agent whose per-client connection limit
// is limit (0 or less: none): three quarters of it, at least 2.
func maxConnsFor(limit int) int {
	if limit <= 0 {
		return -1
	}
	return max(limit*3/4, 2)
}

// agentConnLimit reads limits.http_max_conns_per_client from the agent's
// runtime configuration (/v1/agent/self, DebugConfig).
func (s *Source) agentConnLimit(ctx context.Context) (int, error) {
	var self struct {
		DebugConfig struct {
			HTTPMaxConnsPerClient *int
		}
	}
	_, err := s.client.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return 0, fmt.Errorf("consul: agent self: %w", err)
	}
	if self.DebugConfig.HTTPMaxConnsPerClient == nil {
		return 0, errors.New("consul: agent self: no DebugConfig.HTTPMaxConnsPerClient")
	}
	return *self.DebugConfig.HTTPMaxConnsPerClient, nil
}

// Name implements discovery.Source.
func (s *Source) Name() string { return "consul" }

// Run implements discovery.Source: it watches Consul until ctx is cancelled
// and then returns nil.
func (s *Source) Run(ctx context.Context, updates chan<- discovery.State) error {
	ctx, cancel := context.WithCancel(ctx)
	r := &run{
		src:      s,
		gate:     newGate(),
		dirty:    make(chan struct{}, 1),
		watchers: map[string]*watcher{},
	}
	r.interrupt, r.interruptAll = context.WithCancel(ctx)
	if s.autoConns {
		s.autoConns = false
		s.sizeConns(ctx)
	}
	if s.cfg.MaxConns > 0 {
		r.slots = make(chan struct{}, s.cfg.MaxConns-1) // one is the catalog watch's
	}
	r.wg.Go(func() { r.watchCatalog(ctx) })
	r.sendLoop(ctx, updates)
	cancel()
	r.wg.Wait()
	return nil
}

// run is the state of one Run.
type run struct {
	src   *Source
	gate  *gate
	dirty chan struct{} // poked when the state to send may have changed
	wg    sync.WaitGroup
	// connHintLogged records that the connection-limit hint was logged.
	connHintLogged atomic.Bool
	// slots holds a token per outstanding service request; nil when
	// unbounded.
	slots chan struct{}

	mu       sync.Mutex
	watchers map[string]*watcher
	// shared is set while there are more services than slots.
	shared bool
	// interruptCatalog cuts the catalog watch's request short.
	interruptCatalog context.CancelFunc
	// interrupt ends the outstanding service polls: when the services start
	// sharing the slots, so that long polls do not hold them, and when
	// Consul's indexes went backwards. In the latter case epoch grows, and
	// every watch starts over from index 0.
	interrupt    context.Context
	interruptAll context.CancelFunc
	epoch        uint64
	listed       bool  // the catalog was read at least once
	synced       bool  // every service of the first listing was read once
	down         error // set while Consul cannot be reached
	sentDown     bool  // the last state sent was an error
	gen          uint64
	sentGen      uint64
}

// watcher follows one service name; its fields are guarded by run.mu.
type watcher struct {
	name     string
	cancel   context.CancelFunc
	answered bool // read once (or failed once)
	result   entries
}

func (r *run) poke() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// sendLoop sends the state after each burst of changes.
func (r *run) sendLoop(ctx context.Context, updates chan<- discovery.State) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.dirty:
		}
		if !r.debounce(ctx) {
			return
		}
		st, ok := r.state()
		if !ok {
			continue
		}
		select {
		case updates <- st:
		case <-ctx.Done():
			return
		}
	}
}

// debounce waits until no change came for one debounce period, or ten periods
// in all.
func (r *run) debounce(ctx context.Context) bool {
	d := r.src.cfg.Debounce
	quiet := time.NewTimer(d)
	defer quiet.Stop()
	deadline := time.NewTimer(10 * d)
	defer deadline.Stop()
	for {
		select {
		case <-r.dirty:
			quiet.Reset(d)
		case <-quiet.C:
			return true
		case <-deadline.C:
			return true
		case <-ctx.Done():
			return false
		}
	}
}

// state returns the state to send, if there is a new one.
func (r *run) state() (discovery.State, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.down != nil {
		if r.sentDown {
			return discovery.State{}, false
		}
		r.sentDown = true
		return discovery.State{Err: r.down}, true
	}
	if !r.synced {
		if !r.listed {
			return discovery.State{}, false
		}
		for _, w := range r.watchers {
			if !w.answered {
				return discovery.State{}, false
			}
		}
		r.synced = true
	} else if r.gen == r.sentGen && !r.sentDown {
		return discovery.State{}, false
	}
	r.sentGen, r.sentDown = r.gen, false
	byName := make(map[string]entries, len(r.watchers))
	for name, w := range r.watchers {
		byName[name] = w.result
	}
	return discovery.State{Services: buildServices(byName)}, true
}

// setDown records whether Consul is reachable.
func (r *run) setDown(err error) {
	r.mu.Lock()
	changed := (err == nil) != (r.down == nil)
	r.down = err
	r.mu.Unlock()
	if changed {
		r.poke()
	}
}
