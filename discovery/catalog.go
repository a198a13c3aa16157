package discovery

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
)

// SourceStatus describes the health of one discovery source.
type SourceStatus struct {
	Name string `json:"name"`
	// Healthy is false while the source reports an error; its last good state
	// keeps serving meanwhile.
	Healthy    bool      `json:"healthy"`
	Synced     bool      `json:"synced"`
	LastError  string    `json:"last_error,omitempty"`
	LastUpdate time.Time `json:"last_update,omitzero"`
	ErrorSince time.Time `json:"error_since,omitzero"`
	Services   int       `json:"services"`
}

// Catalog merges the states of any number of sources into snapshots.
type Catalog struct {
	log      *slog.Logger
	debounce time.Duration

	mu      sync.Mutex
	latest  *Snapshot
	status  map[string]*SourceStatus
	states  map[string][]*Service // last good state per source
	merged  map[ServiceKey]mergedService
	subs    map[int]chan *Snapshot
	nextSub int
	ready   chan struct{}

	updates chan State
}

// Options tune a Catalog.
type Options struct {
	// Debounce is the least time between two snapshots (default 10ms): an
	// update after a quiet period is published at once, and the updates
	// that follow within Debounce are gathered into the next snapshot.
	Debounce time.Duration
}

// NewCatalog returns an empty catalog.
func NewCatalog(log *slog.Logger, opts Options) *Catalog {
	if opts.Debounce <= 0 {
		opts.Debounce = 10 * time.Millisecond
	}
	return &Catalog{
		log:      log,
		debounce: opts.Debounce,
		status:   map[string]*SourceStatus{},
		states:   map[string][]*Service{},
		subs:     map[int]chan *Snapshot{},
		ready:    make(chan struct{}),
		updates:  make(chan State, 64),
	}
}

// Run runs every source and merges their states until ctx is cancelled. The
// first snapshot is published once every source has sent its first state
// (healthy or not). A source whose Run returns an error other than ctx's
// cancellation stops the catalog.
func (c *Catalog) Run(ctx context.Context, sources ...Source) error {
	c.mu.Lock()
	for _, s := range sources {
		c.status[s.Name()] = &SourceStatus{Name: s.Name()}
	}
	c.mu.Unlock()

	g, ctx := errgroup.WithContext(ctx)
	for _, s := range sources {
		g.Go(func() error {
			ch := make(chan State)
			done := make(chan struct{})
			go func() {
				defer close(done)
				for st := range ch {
					st.Source = s.Name()
					select {
					case c.updates <- st:
					case <-ctx.Done():
						return
					}
				}
			}()
			err := s.Run(ctx, ch)
			close(ch)
			<-done
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("source %s: %w", s.Name(), err)
			}
			return nil
		})
	}
	g.Go(func() error { return c.loop(ctx, len(sources)) })
	return g.Wait()
}

func (c *Catalog) loop(ctx context.Context, nsources int) error {
	seen := map[string]bool{}
	if nsources == 0 {
		c.publish()
	}
	var (
		timer     *time.Timer
		fire      <-chan time.Time
		published time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case st := <-c.updates:
			c.apply(st)
			seen[st.Source] = true
			if len(seen) < nsources {
				continue
			}
			if timer == nil {
				// At once after a quiet period, else when the period since
				// the last snapshot ends (updates queued meanwhile join).
				timer = time.NewTimer(max(0, c.debounce-time.Since(published)))
				fire = timer.C
			}
		case <-fire:
			timer, fire = nil, nil
			c.publish()
			published = time.Now()
		}
	}
}

// Apply records one source's state directly; sources normally go through Run.
func (c *Catalog) apply(st State) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ss, ok := c.status[st.Source]
	if !ok {
		ss = &SourceStatus{Name: st.Source}
		c.status[st.Source] = ss
	}
	now := time.Now()
	if st.Err != nil {
		if ss.Healthy || ss.ErrorSince.IsZero() {
			ss.ErrorSince = now
			c.log.Warn("discovery source degraded; serving its last known state", "source", st.Source, "err", st.Err)
		}
		ss.Healthy = false
		ss.LastError = st.Err.Error()
		return
	}
	if !ss.Healthy && !ss.ErrorSince.IsZero() {
		c.log.Info("discovery source recovered", "source", st.Source)
	}
	ss.Healthy, ss.Synced, ss.LastError, ss.ErrorSince, ss.LastUpdate = true, true, "", time.Time{}, now
	ss.Services = len(st.Services)
	c.states[st.Source] = st.Services
}

// publish merges the last good states and, when the result differs from the
// latest snapshot, publishes a new one.
func (c *Catalog) publish() {
	c.mu.Lock()
	defer c.mu.Unlock()
	snap := NewSnapshot(c.latest, c.mergeCached())
	first := c.latest == nil
	if !first && snap.Version == c.latest.Version && len(snap.Changed) == 0 {
		return
	}
	c.latest = snap
	if first {
		close(c.ready)
	}
	for _, ch := range c.subs {
		send(ch, snap)
	}
}

// send delivers snap to a subscriber, replacing (and folding the changed set
// of) a snapshot the subscriber has not read yet.
func send(ch chan *Snapshot, snap *Snapshot) {
	select {
	case old := <-ch:
		snap = snap.withChanged(mergeChanged(old.Changed, snap.Changed))
	default:
	}
	ch <- snap
}

// LabelMerge is the service label by which a source opts a service out of
// merging across sources: a service labelled bowline.io/merge=false is taken
// exactly as its source reports it, and the services of the same namespace
// and name from other sources are left out (when several sources opt out,
// the first by name wins).
const LabelMerge = "bowline.io/merge"

// merge combines the services of every source. Services with the same
// namespace and name merge: endpoints are unioned (each keeps its source),
// labels and upstreams are unioned, and the protocol of the first source (by
// name) that declares one wins. An endpoint address:port that several sources
// report for one service is kept once, from the first source by name. A
// service labelled LabelMerge=false does not merge.
func merge(log *slog.Logger, states map[string][]*Service) []*Service {
	byKey := contributions(log, states)
	list := make([]*Service, 0, len(byKey))
	for key, in := range byKey {
		list = append(list, mergeService(log, key, in))
	}
	return list
}

// mergeInput is one source's service, to be merged with its namesakes.
type mergeInput struct {
	src string
	svc *Service
}

// mergedService is what merging a list of inputs gave.
type mergedService struct {
	inputs []mergeInput
	svc    *Service
}

// mergeCached is merge, reusing the services merged last time from the very
// same inputs: a change to one service of one source merges that service
// alone. Sources do not modify the services they sent, and snapshots do not
// modify theirs, so the same inputs merge to the same service; and a service
// reused is the one in the latest snapshot, or one no snapshot published.
func (c *Catalog) mergeCached() []*Service {
	byKey := contributions(c.log, c.states)
	next := make(map[ServiceKey]mergedService, len(byKey))
	list := make([]*Service, 0, len(byKey))
	for key, in := range byKey {
		m, ok := c.merged[key]
		if !ok || !slices.Equal(m.inputs, in) {
			m = mergedService{inputs: in, svc: mergeService(c.log, key, in)}
		}
		next[key] = m
		list = append(list, m.svc)
	}
	c.merged = next
	return list
}

// contributions lists, for every service, the services of each source (by
// source name) that merge into it, leaving out the namesakes of a service
// opted out of merging.
func contributions(log *slog.Logger, states map[string][]*Service) map[ServiceKey][]mergeInput {
	sources := slices.Sorted(maps.Keys(states))
	owner := map[ServiceKey]string{} // services opted out of merging -> their source
	n := 0
	for _, src := range sources {
		n += len(states[src])
		for _, svc := range states[src] {
			key := ServiceKey{Namespace: cmp.Or(svc.Namespace, DefaultNamespace), Name: svc.Name}
			if _, ok := owner[key]; !ok && svc.Labels[LabelMerge] == "false" {
				owner[key] = src
			}
		}
	}
	out := make(map[ServiceKey][]mergeInput, n)
	for _, src := range sources {
		for _, svc := range states[src] {
			key := svc.ServiceKey
			if key.Namespace == "" {
				key.Namespace = DefaultNamespace
			}
			if o, ok := owner[key]; ok && o != src {
				log.Info("service opted out of merging; leaving out its namesake from another source", "service", key, "kept", o, "left_out", src)
				continue
			}
			out[key] = append(out[key], mergeInput{src: src, svc: svc})
		}
	}
	return out
}

// mergeService merges the services of several sources (in source order)
// into one service named key.
func mergeService(log *slog.Logger, key ServiceKey, inputs []mergeInput) *Service {
	cur := &Service{ServiceKey: key, Endpoints: []Endpoint{}}
	seen := map[string]string{} // address:port -> source that reported it
	for i, in := range inputs {
		src, svc := in.src, in.svc
		if i == 0 {
			cur.Protocol = svc.Protocol
		}
		if cur.Protocol == "" {
			cur.Protocol = svc.Protocol
		} else if svc.Protocol != "" && svc.Protocol != cur.Protocol {
			log.Warn("sources disagree on a service's protocol; keeping the first", "service", key, "source", src, "protocol", svc.Protocol, "kept", cur.Protocol)
		}
		for k, v := range svc.Labels {
			if cur.Labels == nil {
				cur.Labels = map[string]string{}
			}
			if _, set := cur.Labels[k]; !set {
				cur.Labels[k] = v
			}
		}
		cur.Upstreams = append(cur.Upstreams, svc.Upstreams...)
		cur.Sources = append(cur.Sources, src)
		if len(inputs) == 1 {
			cur.Endpoints = make([]Endpoint, 0, len(svc.Endpoints))
		}
		for _, e := range svc.Endpoints {
			e.Labels = maps.Clone(e.Labels)
			if e.Source == "" {
				e.Source = src
			}
			// An address:port (or, for an endpoint behind a sidecar, the
			// sidecar's address:port, where mesh traffic goes) taken by an
			// earlier source is the same instance reported twice: keep one,
			// as gRPC-Go rejects EDS with duplicate addresses.
			addrs := []string{net.JoinHostPort(e.Address, strconv.FormatUint(uint64(e.Port), 10))}
			if e.SidecarPort != 0 {
				addrs = append(addrs, net.JoinHostPort(e.Address, strconv.FormatUint(uint64(e.SidecarPort), 10)))
			}
			if i := slices.IndexFunc(addrs, func(a string) bool { first, ok := seen[a]; return ok && first != src }); i >= 0 {
				log.Debug("two sources report one endpoint; keeping the first", "service", key, "endpoint", addrs[i], "kept", seen[addrs[i]], "left_out", src)
				continue
			}
			for _, a := range addrs {
				seen[a] = src
			}
			cur.Endpoints = append(cur.Endpoints, e)
		}
	}
	if cur.Protocol == "" {
		cur.Protocol = ProtocolTCP
	}
	return cur
}

// Snapshot returns the latest snapshot, or nil before the first one.
func (c *Catalog) Snapshot() *Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.latest
}

// Ready is closed once the first snapshot is published.
func (c *Catalog) Ready() <-chan struct{} { return c.ready }

// Sources reports the status of every source, ordered by name.
func (c *Catalog) Sources() []SourceStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]SourceStatus, 0, len(c.status))
	for _, name := range slices.Sorted(maps.Keys(c.status)) {
		out = append(out, *c.status[name])
	}
	return out
}

// Subscribe returns a channel that receives every new snapshot (a slow reader
// gets the newest one, with the changed sets it missed folded in), starting
// with the current one if any. Call cancel to stop.
func (c *Catalog) Subscribe() (snaps <-chan *Snapshot, cancel func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan *Snapshot, 1)
	id := c.nextSub
	c.nextSub++
	c.subs[id] = ch
	if c.latest != nil {
		ch <- c.latest.withChanged(nil)
	}
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.subs, id)
	}
}
