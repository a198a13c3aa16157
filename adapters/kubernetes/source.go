// Package kubernetes is the Kubernetes discovery source: it follows the
// Services, EndpointSlices (discovery.k8s.io/v1), Pods and Nodes of a cluster
// with client-go's shared informers and reports every Service as discovery
// state.
//
// # Watching
//
// One informer per resource and namespace (Config.Namespaces, all namespaces
// when empty; Nodes are cluster-wide) lists and watches the API. Their
// transform cuts every object down to the few fields the mesh uses the moment
// it arrives, so the caches stay small and no client-go type goes further
// than this package. After a change the source waits for a quiet period
// (Config.Debounce, default 50ms, at most ten times that in all), rebuilds
// the whole state from the caches and sends it only when it differs from the
// last state sent. A resync or a relist that changes nothing therefore sends
// nothing (and an update whose cut object equals the cached one does not even
// wake the source). The first state is sent once every cache has synced.
//
// While an informer cannot list its resource (the API server is down, or RBAC
// forbids it), the source sends a State with Err: the catalog keeps the last
// good state and reports the source degraded. Once the informer lists again
// the source sends its full state, even if nothing changed. Run never fails
// because the API server is unreachable.
//
// # Conversion
//
// Every Service except ExternalName ones becomes a discovery.Service of the
// same namespace and name. A Service with several ports is routed on one:
// the port named (or numbered) by the annotation bowline.io/port, else the
// first TCP port. Its protocol is the port's appProtocol (http, http2, h2c,
// kubernetes.io/h2c, grpc, tcp), else the port name's prefix (http, http-*,
// http2, http2-*, grpc, grpc-*, tcp, tcp-*), else tcp. The annotation
// bowline.io/upstreams ("name:port,namespace/name:port") declares the
// upstreams of the Service's sidecars, and bowline.io/merge: "false" sets the
// label discovery.LabelMerge, which keeps the Service from merging with its
// namesakes from other discovery sources.
//
// Endpoints come from the EndpointSlices labelled with the Service's name
// (IPv4 and IPv6 ones; the first address of each endpoint; the port of the
// slice port named like the chosen Service port). Bowline routes to pod
// addresses, never to a cluster IP, so headless Services work the same way; a
// headless Service without ports names its pods' port with bowline.io/port.
// For each endpoint:
//
//   - health: ready is healthy; terminating but still serving is degraded (it
//     gets traffic only when no ready endpoint is left, so connections drain);
//     anything else is unhealthy;
//   - labels: the pod's labels, less pod-template-hash,
//     controller-revision-hash and pod-template-generation; "version" falls
//     back to app.kubernetes.io/version;
//   - locality: topology.kubernetes.io/region and topology.kubernetes.io/zone
//     of the endpoint's node (the zone falls back to the slice's);
//   - identity: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
//     of the pod (unset without a trust domain or a pod);
//   - sidecar port: the pod annotation bowline.io/sidecar-port.
//
// An address:port listed twice (a pod moving between slices) is kept once,
// the healthier of the two.
package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	k8s "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/bowlinemesh/bowline/discovery"
)

// DefaultDebounce is the quiet period after a change before the source sends
// its state.
const DefaultDebounce = 50 * time.Millisecond

// Config configures the source.
type Config struct {
	// TrustDomain is the SPIFFE trust domain of workload identities; empty
	// leaves identities unset.
	TrustDomain string
	// Namespaces limits discovery; empty means every namespace.
	Namespaces []string
	// Resync is the informers' resync period; 0, the default, turns resyncs
	// off. The source rebuilds its state from the caches on every change, so
	// it needs none; a resync costs a comparison and sends nothing.
	Resync time.Duration
	// Debounce is the quiet period after a change (default DefaultDebounce).
	// A burst of changes delays a state by at most ten times this.
	Debounce time.Duration
}

// Source reports the Services of a Kubernetes cluster.
type Source struct {
	client k8s.Interface
	cfg    Config
	log    *slog.Logger
	// onEvent, when set (by tests), sees every informer event: the informer's
	// name and whether the object changed.
	onEvent func(informer string, changed bool)
}

var _ discovery.Source = (*Source)(nil)

// New returns a source reading the cluster through client (a real clientset,
// see NewClientset, or client-go's fake one in tests).
func New(client k8s.Interface, cfg Config, log *slog.Logger) *Source {
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Source{client: client, cfg: cfg, log: log}
}

// Name implements discovery.Source.
func (s *Source) Name() string { return "kubernetes" }

// watched is one informer.
type watched struct {
	name     string // "pods", "pods in shop"
	informer cache.SharedIndexInformer
}

// listError is an informer's last list/watch failure; it stands until the
// informer delivers an event again or its last synced resource version moves.
type listError struct {
	err error
	rv  string
}

// run is the state of one Run.
type run struct {
	*Source
	watched []watched
	poke    chan struct{}

	mu   sync.Mutex
	errs map[string]listError // by informer name
}

// Run implements discovery.Source.
func (s *Source) Run(ctx context.Context, updates chan<- discovery.State) error {
	r := &run{Source: s, poke: make(chan struct{}, 1), errs: map[string]listError{}}
	namespaces := slices.Compact(slices.Sorted(slices.Values(s.cfg.Namespaces)))
	if len(namespaces) == 0 {
		namespaces = []string{metav1.NamespaceAll}
	}
	var factories []informers.SharedInformerFactory
	for _, ns := range namespaces {
		f := informers.NewSharedInformerFactoryWithOptions(s.client, s.cfg.Resync, informers.WithNamespace(ns), informers.WithTransform(cut))
		factories = append(factories, f)
		suffix := ""
		if ns != metav1.NamespaceAll {
			suffix = " in " + ns
		}
		r.watched = append(r.watched,
			watched{"services" + suffix, f.Core().V1().Services().Informer()},
			watched{"endpointslices" + suffix, f.Discovery().V1().EndpointSlices().Informer()},
			watched{"pods" + suffix, f.Core().V1().Pods().Informer()},
		)
	}
	nodes := informers.NewSharedInformerFactoryWithOptions(s.client, s.cfg.Resync, informers.WithTransform(cut))
	factories = append(factories, nodes)
	r.watched = append(r.watched, watched{"nodes", nodes.Core().V1().Nodes().Informer()})

	for _, w := range r.watched {
		if err := w.informer.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
			r.failed(ctx, w, err)
		}); err != nil {
			return fmt.Errorf("kubernetes: %s: %w", w.name, err)
		}
		if _, err := w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { r.event(w, true) },
			UpdateFunc: func(old, cur any) { r.event(w, !reflect.DeepEqual(old, cur)) },
			DeleteFunc: func(any) { r.event(w, true) },
		}); err != nil {
			return fmt.Errorf("kubernetes: %s: %w", w.name, err)
		}
	}
	for _, f := range factories {
		f.Start(ctx.Done())
		defer f.Shutdown()
	}
	return r.loop(ctx, updates)
}

// event records that an informer delivered an object: it works, and the
// state may have changed.
func (r *run) event(w watched, changed bool) {
	if r.onEvent != nil {
		r.onEvent(w.name, changed)
	}
	r.mu.Lock()
	if _, failed := r.errs[w.name]; failed {
		delete(r.errs, w.name)
		changed = true
		r.log.Info("kubernetes: listing works again", "resource", w.name)
	}
	r.mu.Unlock()
	if changed {
		r.wake()
	}
}

// failed records a list/watch failure reported by an informer's reflector.
func (r *run) failed(ctx context.Context, w watched, err error) {
	if ctx.Err() != nil || errors.Is(err, context.Canceled) {
		return
	}
	r.mu.Lock()
	prev, had := r.errs[w.name]
	r.errs[w.name] = listError{err: err, rv: w.informer.LastSyncResourceVersion()}
	r.mu.Unlock()
	if !had || prev.err.Error() != err.Error() {
		r.log.Warn("kubernetes: list/watch failed; serving the last known state", "resource", w.name, "err", err)
	}
	r.wake()
}

// recheck clears the failures of informers that have listed since (their
// last synced resource version moved), which an empty cache would not
// otherwise show.
func (r *run) recheck() {
	r.mu.Lock()
	cleared := false
	for _, w := range r.watched {
		if e, ok := r.errs[w.name]; ok && w.informer.LastSyncResourceVersion() != e.rv {
			delete(r.errs, w.name)
			cleared = true
			r.log.Info("kubernetes: listing works again", "resource", w.name)
		}
	}
	r.mu.Unlock()
	if cleared {
		r.wake()
	}
}

func (r *run) wake() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// failure returns the failures standing now, as one error.
func (r *run) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) == 0 {
		return nil
	}
	var msgs []string
	for _, name := range slices.Sorted(maps.Keys(r.errs)) {
		msgs = append(msgs, fmt.Sprintf("%s: %v", name, r.errs[name].err))
	}
	return fmt.Errorf("kubernetes: list/watch: %s", strings.Join(msgs, "; "))
}

// loop sends a state after every change, debounced, once the caches synced.
func (r *run) loop(ctx context.Context, updates chan<- discovery.State) error {
	synced := make(chan struct{})
	go func() {
		syncs := make([]cache.InformerSynced, len(r.watched))
		for i, w := range r.watched {
			syncs[i] = w.informer.HasSynced
		}
		if cache.WaitForCacheSync(ctx.Done(), syncs...) {
			close(synced)
		}
	}()
	recheck := time.NewTicker(2 * time.Second)
	defer recheck.Stop()

	var (
		isSynced  bool
		last      []*discovery.Service // last state sent
		sent      bool                 // a good state was sent
		lastErr   string               // the error sent last, until a good state follows
		problems  map[string]bool      // the conversion problems logged
		timer     *time.Timer
		fire      <-chan time.Time
		burstFrom time.Time
	)
	send := func(st discovery.State) bool {
		select {
		case updates <- st:
			return true
		case <-ctx.Done():
			return false
		}
	}
	flush := func() bool {
		err := r.failure()
		if err != nil {
			if err.Error() == lastErr {
				return true
			}
			lastErr = err.Error()
			return send(discovery.State{Err: err})
		}
		if !isSynced {
			return true
		}
		services, probs := convert(r.objects(), r.cfg.TrustDomain)
		now := map[string]bool{}
		for _, p := range probs {
			now[p] = true
			if !problems[p] {
				r.log.Warn("kubernetes: " + p)
			}
		}
		problems = now
		// After an error, the full state goes out even if unchanged: it
		// tells the catalog that the source is healthy again.
		if sent && lastErr == "" && slices.EqualFunc(last, services, (*discovery.Service).Equal) {
			return true
		}
		if !send(discovery.State{Services: services}) {
			return false
		}
		last, sent, lastErr = services, true, ""
		return true
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-synced:
			synced, isSynced = nil, true
			if !flush() {
				return nil
			}
		case <-recheck.C:
			r.recheck()
		case <-r.poke:
			now := time.Now()
			if timer == nil {
				burstFrom = now
				timer = time.NewTimer(r.cfg.Debounce)
				fire = timer.C
			} else if now.Sub(burstFrom) < 10*r.cfg.Debounce {
				timer.Reset(r.cfg.Debounce)
			}
		case <-fire:
			timer, fire = nil, nil
			if !flush() {
				return nil
			}
		}
	}
}

// objects reads the informers' caches.
func (r *run) objects() objects {
	var o objects
	for _, w := range r.watched {
		for _, obj := range w.informer.GetStore().List() {
			switch v := obj.(type) {
			case *service:
				o.services = append(o.services, v)
			case *endpointSlice:
				o.slices = append(o.slices, v)
			case *pod:
				o.pods = append(o.pods, v)
			case *node:
				o.nodes = append(o.nodes, v)
			}
		}
	}
	return o
}
