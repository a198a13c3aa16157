// Package nomad is the Nomad discovery source: it follows the services that
// Nomad registers in its own catalog (service blocks with provider = "nomad")
// and reports them as discovery state. Services that Nomad registers in
// Consul (provider = "consul") are the Consul source's.
//
// # Following Nomad
//
// A session starts with a full resync: the service names (GET /v1/services,
// whose X-Nomad-Index L is the resync's index), then every service's
// registrations (GET /v1/service/<name>, each answered at its own index, at
// least L). Right after the names are read, and before the registrations, the
// session opens the event stream (GET /v1/event/stream?topic=Service&
// topic=Allocation&index=L+1), so that Nomad replays every change made since
// the names were read. An event is applied only when its index is above the
// index at which its service was last read or changed, so an event the resync
// already saw is not applied twice and none after it is missed. `{}` lines are
// Nomad's heartbeats (every 10s); a stream silent for
// Config.HeartbeatTimeout (35s) is taken as dead.
//
// When the stream ends (Nomad restarted, a leader changed, the connection
// dropped) the next session resyncs in full after a short backoff with
// jitter, so an index that went backwards (a restored or re-created cluster)
// is no problem. When Nomad cannot be reached the source sends a State with
// Err and no services: the catalog keeps the last good state (fail-static)
// and reports the source degraded until a resync succeeds. Run never fails
// because Nomad is down.
//
// Where the event stream is not available (the agent's event broker is
// disabled, or the token may not read it: 403, 404, 405 or 501), the session
// follows /v1/services with blocking queries (index and wait), and reads every
// service again when its index moves. A meta change that Nomad applies to
// running allocations in place is then seen at the next session only.
//
// # Meta from the job
//
// Nomad's registrations carry tags but not the service block's meta, so the
// adapter reads each registration's allocation (GET /v1/allocation/<id>) and
// takes the meta of the service block it came from (the group's, or a task's,
// matched by name and port) from the job spec inside. Allocations are cached:
// one is read again when one of its registrations changes after the read,
// when an Allocation event shows that the scheduler updated it (an in-place
// update of the job, which changes meta without touching the registrations),
// and at every resync. Meta values may use ${NOMAD_PORT_<label>},
// ${NOMAD_HOST_PORT_<label>}, ${NOMAD_META_<key>}, ${NOMAD_JOB_NAME},
// ${NOMAD_GROUP_NAME}, ${NOMAD_ALLOC_ID} and the like: the adapter
// interpolates them from the allocation. Nodes are read once per session
// (GET /v1/node/<id>) for their zone.
//
// # Conversion
//
// Each (namespace, service name) becomes a discovery.Service; each
// registration an endpoint:
//
//   - address and port: the registration's;
//   - labels: every key=value tag, then every meta key (meta wins); the plain
//     tags, sorted and comma-separated, in the label "tags"; keys starting
//     with "bowline-" (or "bowline_") steer the adapter and are not labels.
//     So meta "version" (or a tag "version=v2") is the label "version";
//   - locality: the region is the datacenter, the zone the node's meta "zone"
//     or its cloud zone (platform.aws.placement.availability-zone,
//     platform.gce.zone) where the node can be read;
//   - identity: spiffe://<trust-domain>/ns/<namespace>/svc/<service>, unset
//     when Config.TrustDomain is empty;
//   - sidecar port: "bowline-sidecar-port", a number or the label of one of
//     the allocation's ports (its host port);
//   - health: healthy (Nomad keeps the results of native checks on the
//     client, not in the registration).
//
// The service's protocol is "protocol" (http, http2, grpc or tcp; missing
// means tcp), the one most instances declare; its upstreams are the union of
// the instances' "bowline-upstreams" ("name:port,namespace/name:port").
package nomad

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/bowlinemesh/bowline/adapters/retry"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/nomad/api"
	"golang.org/x/sync/errgroup"

	"github.com/bowlinemesh/bowline/discovery"
)

// Defaults for the zero values of Config.
const (
	DefaultAddress          = "http://127.0.0.1:4646"
	DefaultWaitTime         = 5 * time.Minute
	DefaultMinBackoff       = 500 * time.Millisecond
	DefaultMaxBackoff       = 30 * time.Second
	DefaultHeartbeatTimeout = 35 * time.Second
	DefaultConcurrency      = 8
)

// Config configures a Source.
type Config struct {
	// Address of Nomad's HTTP API; empty means NOMAD_ADDR, else
	// http://127.0.0.1:4646.
	Address string
	// Token is the ACL token (it needs read-job in the namespaces watched,
	// and node:read for zones); empty means NOMAD_TOKEN.
	Token string
	// Namespace to watch; "*" or empty means every namespace.
	Namespace string
	// Region to query; empty means the agent's.
	Region string
	// CAFile verifies Nomad's certificate; CertFile and KeyFile are the
	// client certificate. Empty means NOMAD_CACERT, NOMAD_CLIENT_CERT and
	// NOMAD_CLIENT_KEY.
	CAFile, CertFile, KeyFile string
	// TrustDomain of the workloads' SPIFFE IDs; empty leaves them unset.
	TrustDomain string
	// HTTPClient, when set, carries every request to Nomad as is (TLS
	// settings are not applied to it).
	HTTPClient *http.Client
	// WaitTime is how long a blocking query may wait (default 5m); used
	// only where the event stream is not available.
	WaitTime time.Duration
	// MinBackoff and MaxBackoff bound the wait between sessions (defaults
	// 500ms and 30s).
	MinBackoff, MaxBackoff time.Duration
	// HeartbeatTimeout is how long the event stream may stay silent before
	// it is taken as dead (default 35s; Nomad sends a heartbeat every 10s).
	HeartbeatTimeout time.Duration
	// Concurrency bounds the parallel reads of a resync (default 8).
	Concurrency int
}

// Source follows Nomad's native service registrations. Create it with New.
type Source struct {
	cfg    Config
	log    *slog.Logger
	client *api.Client
	conv   convertOptions
}

var _ discovery.Source = (*Source)(nil)

// New returns a source for cfg; log may be nil. It does not contact Nomad.
func New(cfg Config, log *slog.Logger) (*Source, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.Address = cmp.Or(cfg.Address, os.Getenv("NOMAD_ADDR"), DefaultAddress)
	cfg.Token = cmp.Or(cfg.Token, os.Getenv("NOMAD_TOKEN"))
	cfg.Namespace = cmp.Or(cfg.Namespace, "*")
	cfg.CAFile = cmp.Or(cfg.CAFile, os.Getenv("NOMAD_CACERT"))
	cfg.CertFile = cmp.Or(cfg.CertFile, os.Getenv("NOMAD_CLIENT_CERT"))
	cfg.KeyFile = cmp.Or(cfg.KeyFile, os.Getenv("NOMAD_CLIENT_KEY"))
	cfg.WaitTime = cmp.Or(cfg.WaitTime, DefaultWaitTime)
	cfg.MinBackoff = cmp.Or(cfg.MinBackoff, DefaultMinBackoff)
	cfg.MaxBackoff = max(cmp.Or(cfg.MaxBackoff, DefaultMaxBackoff), cfg.MinBackoff)
	cfg.HeartbeatTimeout = cmp.Or(cfg.HeartbeatTimeout, DefaultHeartbeatTimeout)
	cfg.Concurrency = cmp.Or(cfg.Concurrency, DefaultConcurrency)
	if cfg.WaitTime < 0 || cfg.MinBackoff < 0 || cfg.HeartbeatTimeout < 0 || cfg.Concurrency < 0 {
		return nil, errors.New("nomad: wait time, backoff, heartbeat timeout and concurrency must not be negative")
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("nomad: a client certificate needs both a certificate and a key file")
	}
	ac := &api.Config{
		Address:    cfg.Address,
		Region:     cfg.Region,
		SecretID:   cfg.Token,
		HttpClient: cfg.HTTPClient,
		TLSConfig:  &api.TLSConfig{CACert: cfg.CAFile, ClientCert: cfg.CertFile, ClientKey: cfg.KeyFile},
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("nomad: client for %s: %w", cfg.Address, err)
	}
	return &Source{
		cfg:    cfg,
		log:    log.With("source", "nomad"),
		client: client,
		conv:   convertOptions{TrustDomain: cfg.TrustDomain},
	}, nil
}

// Name implements discovery.Source.
func (s *Source) Name() string { return "nomad" }

// Run implements discovery.Source: it follows Nomad until ctx is cancelled
// and then returns nil.
func (s *Source) Run(ctx context.Context, updates chan<- discovery.State) error {
	r := &run{
		src:     s,
		updates: updates,
		regs:    map[string]registration{},
		applied: map[discovery.ServiceKey]uint64{},
		allocs:  map[string]*allocEntry{},
		nodes:   map[string]nodeInfo{},
		warned:  map[string]bool{},
	}
	bo := &retry.Backoff{Min: s.cfg.MinBackoff, Max: s.cfg.MaxBackoff}
	for ctx.Err() == nil {
		res := r.session(ctx)
		if ctx.Err() != nil {
			break
		}
		switch {
		case !res.synced:
			if !r.failing {
				s.log.Warn("nomad unreachable; the catalog keeps the last known services", "err", res.err)
			} else {
				s.log.Debug("nomad still unreachable", "err", res.err)
			}
			r.failing = true
			if !r.sendDown(ctx, res.err) {
				return nil
			}
		case res.streamed:
			// A stream that worked ended: resync after the shortest wait.
			bo.Reset()
			s.log.Info("nomad event stream ended; resyncing", "err", res.err)
		default:
			s.log.Warn("nomad event stream failed; resyncing", "err", res.err)
		}
		if !retry.Sleep(ctx, bo.Next()) {
			break
		}
	}
	return nil
}

// allocEntry caches what the adapter needs of one allocation.
type allocEntry struct {
	info *allocInfo // nil when Nomad no longer has the allocation
	// validAt is an index at which the entry was known current: a
	// registration of the allocation changed after it is reason to read
	// the allocation again.
	validAt uint64
}

// run is the state of one Run; only Run's goroutine touches it.
type run struct {
	src     *Source
	updates chan<- discovery.State

	regs map[string]registration // by registration.key
	// applied is the index up to which each service's changes are applied;
	// a service absent here is applied up to floor (the resync's index).
	applied map[discovery.ServiceKey]uint64
	floor   uint64
	allocs  map[string]*allocEntry
	nodes   map[string]nodeInfo // read this session (zero when unreadable)

	failing  bool                 // the last session could not resync
	sent     []*discovery.Service // the last good state sent
	sentAny  bool                 // a good state was sent
	sentDown bool                 // the last state sent was an error
	warned   map[string]bool
}

// sessionResult says how a session ended.
type sessionResult struct {
	err      error
	synced   bool // the resync succeeded and its state was sent
	streamed bool // the event stream delivered at least one line
}

// session resyncs in full, then follows the event stream (or blocking
// queries) until something fails.
func (r *run) session(ctx context.Context) sessionResult {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stubs, index, err := r.src.listServices(ctx, 0)
	if err != nil {
		return sessionResult{err: err}
	}
	st := r.src.openStream(ctx, index+1)
	regs, applied, err := r.src.readServices(ctx, stubs)
	if err != nil {
		return sessionResult{err: err}
	}
	r.resync(regs, applied, index)
	if err := r.publish(ctx); err != nil {
		return sessionResult{err: err}
	}
	r.src.log.Debug("nomad resynced", "index", index, "registrations", len(r.regs))
	if r.failing {
		r.failing = false
		r.src.log.Info("nomad reachable again; resynced", "registrations", len(r.regs))
	}
	res := sessionResult{synced: true}
	res.err = r.follow(ctx, st, &res.streamed)
	if errors.Is(res.err, errNoStream) {
		r.src.log.Warn("nomad event stream not available; following services with blocking queries (in-place meta changes are seen at the next resync)", "err", res.err)
		res.err = r.poll(ctx, index)
	}
	return res
}

// resync replaces the registrations with a resync's, and forgets every
// cached allocation and node, since their changes may have been missed.
func (r *run) resync(regs []registration, applied map[discovery.ServiceKey]uint64, floor uint64) {
	r.regs = make(map[string]registration, len(regs))
	for _, reg := range regs {
		r.regs[reg.key()] = reg
	}
	r.applied, r.floor = applied, floor
	clear(r.allocs)
	clear(r.nodes)
}

// follow applies the stream's events until it ends.
func (r *run) follow(ctx context.Context, st *stream, streamed *bool) error {
	for {
		var f frame
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case f, ok = <-st.frames:
		}
		if !ok {
			return st.err
		}
		*streamed = true
		changed := r.apply(f)
		// Apply what else is already there before publishing once.
	drain:
		for {
			select {
			case f, ok = <-st.frames:
				if !ok {
					break drain
				}
				changed = r.apply(f) || changed
			default:
				break drain
			}
		}
		if changed {
			if err := r.publish(ctx); err != nil {
				return err
			}
		}
		if !ok {
			return st.err
		}
	}
}

// apply applies one frame of events and reports whether anything changed.
func (r *run) apply(f frame) bool {
	changed := false
	seen := map[discovery.ServiceKey]uint64{}
	for _, ev := range f.Events {
		index := cmp.Or(ev.Index, f.Index)
		switch ev.Topic {
		case "Service":
			reg, err := convertRegistration(ev.Payload.Service)
			if err != nil {
				r.warn("ignoring a Nomad service event", "err", err)
				continue
			}
			if !r.src.watches(reg.Namespace) {
				continue
			}
			key := reg.serviceKey()
			if index <= r.appliedIndex(key) {
				continue // the resync (or an earlier event) already has it
			}
			seen[key] = max(seen[key], index)
			switch ev.Type {
			case "ServiceRegistration":
				if old, ok := r.regs[reg.key()]; !ok || !reflect.DeepEqual(old, reg) {
					r.regs[reg.key()] = reg
					changed = true
				}
			case "ServiceDeregistration":
				if _, ok := r.regs[reg.key()]; ok {
					delete(r.regs, reg.key())
					changed = true
				}
			}
		case "Allocation":
			a := ev.Payload.Allocation
			if a == nil {
				continue
			}
			// The scheduler updated the allocation (an in-place update of
			// its job, for example): its service meta may have changed.
			if e, ok := r.allocs[a.ID]; ok && e.info != nil && a.AllocModifyIndex > e.info.AllocModifyIndex {
				delete(r.allocs, a.ID)
				changed = true
			}
		}
	}
	// Events of one frame share an index: advance after all of them, so
	// that two registrations of one service in one frame both apply.
	for k, i := range seen {
		r.applied[k] = i
	}
	return changed
}

func (r *run) appliedIndex(k discovery.ServiceKey) uint64 {
	if i, ok := r.applied[k]; ok {
		return i
	}
	return r.floor
}

// poll follows /v1/services with blocking queries, from index.
func (r *run) poll(ctx context.Context, index uint64) error {
	for {
		stubs, next, err := r.src.listServices(ctx, index)
		if err != nil {
			return err
		}
		if next == index {
			continue // the wait ran out with no change
		}
		if next < index {
			return fmt.Errorf("nomad: the services index went back from %d to %d", index, next)
		}
		index = next
		regs, _, err := r.src.readServices(ctx, stubs)
		if err != nil {
			return err
		}
		r.regs = make(map[string]registration, len(regs))
		for _, reg := range regs {
			r.regs[reg.key()] = reg
		}
		if err := r.publish(ctx); err != nil {
			return err
		}
	}
}

// publish reads the allocations and nodes the registrations need, builds
// the state and sends it if it changed.
func (r *run) publish(ctx context.Context) error {
	if err := r.readAllocs(ctx); err != nil {
		return err
	}
	r.readNodes(ctx)
	regs := slices.SortedFunc(maps.Values(r.regs), func(a, b registration) int { return strings.Compare(a.key(), b.key()) })
	infos := make(map[string]*allocInfo, len(r.allocs))
	for id, e := range r.allocs {
		infos[id] = e.info
	}
	svcs, warns := buildServices(regs, infos, r.nodes, r.src.conv)
	for _, w := range warns {
		r.warn("ignoring part of a Nomad registration", "problem", w)
	}
	if r.sentAny && !r.sentDown && reflect.DeepEqual(svcs, r.sent) {
		return nil
	}
	select {
	case r.updates <- discovery.State{Services: svcs}:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.sent, r.sentAny, r.sentDown = svcs, true, false
	return nil
}

// sendDown reports that Nomad cannot be reached, once per outage.
func (r *run) sendDown(ctx context.Context, err error) bool {
	if r.sentDown {
		return true // already reported
	}
	select {
	case r.updates <- discovery.State{Err: err}:
	case <-ctx.Done():
		return false
	}
	r.sentDown = true
	return true
}

// readAllocs reads the allocations that are not cached or may have changed,
// and forgets those no registration uses.
func (r *run) readAllocs(ctx context.Context) error {
	want := map[string]uint64{} // allocation -> newest registration index
	ns := map[string]string{}
	for _, reg := range r.regs {
		if reg.AllocID == "" {
			continue
		}
		want[reg.AllocID] = max(want[reg.AllocID], reg.ModifyIndex)
		ns[reg.AllocID] = reg.Namespace
	}
	for id := range r.allocs {
		if _, ok := want[id]; !ok {
			delete(r.allocs, id)
		}
	}
	var ids []string
	for id, idx := range want {
		if e, ok := r.allocs[id]; !ok || idx > e.validAt {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	entries := make([]*allocEntry, len(ids))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.src.cfg.Concurrency)
	for i, id := range ids {
		g.Go(func() error {
			e, err := r.src.readAlloc(gctx, id, ns[id], want[id])
			entries[i] = e
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for i, id := range ids {
		r.allocs[id] = entries[i]
	}
	return nil
}

// readNodes reads the nodes not read yet this session. A node that cannot be
// read has no zone.
func (r *run) readNodes(ctx context.Context) {
	var ids []string
	for _, reg := range r.regs {
		if _, ok := r.nodes[reg.NodeID]; !ok && reg.NodeID != "" && !slices.Contains(ids, reg.NodeID) {
			ids = append(ids, reg.NodeID)
		}
	}
	if len(ids) == 0 {
		return
	}
	infos := make([]nodeInfo, len(ids))
	var g errgroup.Group
	g.SetLimit(r.src.cfg.Concurrency)
	for i, id := range ids {
		g.Go(func() error {
			n, err := r.src.readNode(ctx, id)
			if err != nil {
				r.src.log.Debug("cannot read a Nomad node; its endpoints have no zone", "node", id, "err", err)
			}
			infos[i] = n
			return nil
		})
	}
	_ = g.Wait()
	for i, id := range ids {
		r.nodes[id] = infos[i]
	}
}

// maxWarned bounds the warnings remembered so as to log each once.
const maxWarned = 1000

// warn logs a warning once per run.
func (r *run) warn(msg string, args ...any) {
	key := msg + fmt.Sprint(args...)
	if r.warned[key] {
		return
	}
	if len(r.warned) >= maxWarned {
		clear(r.warned) // bounded: a warning may then be logged again
	}
	r.warned[key] = true
	r.src.log.Warn(msg, args...)
}

// watches reports whether the source follows namespace ns.
func (s *Source) watches(ns string) bool {
	return s.cfg.Namespace == "*" || s.cfg.Namespace == ns
}
