package xdsbench

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bowlinemesh/bowline/test/adsclient"
)

// Fleet is N simulated Envoys (test/adsclient in its Light mode), each on its
// own gRPC connection, that follow which generation of every service's
// endpoints they have applied and ACKed.
type Fleet struct {
	w       Workload
	addr    string
	delta   bool
	node    func(i int) *core.Node
	ownSvc  bool // proxies receive the service they front
	proxies []*proxy

	wire     atomic.Int64 // bytes read from the server, all connections
	resBytes atomic.Int64 // resource bytes applied
	opened   atomic.Int64 // streams opened
	failed   atomic.Int64 // streams that ended while the fleet ran
	nacks    atomic.Int64
	live     atomic.Int64 // proxies whose stream has delivered a response
	cancel   context.CancelFunc
	wg       sync.WaitGroup

	// claCache remembers, per service, the last ClusterLoadAssignment
	// decoded and its generation: every proxy receives the same bytes, so
	// each is walked once instead of N times.
	claCache []atomic.Pointer[claGen]
}

type claGen struct {
	b   []byte
	gen int
}

// generation returns the generation of service k's ClusterLoadAssignment b.
func (f *Fleet) generation(k int, b []byte) int {
	if c := f.claCache[k].Load(); c != nil && bytes.Equal(c.b, b) {
		return c.gen
	}
	g := markerGeneration(b)
	f.claCache[k].Store(&claGen{b: bytes.Clone(b), gen: g}) // b is the proxy's receive buffer
	return g
}

type proxy struct {
	f    *Fleet
	i    int
	conn *grpc.ClientConn

	mu   sync.Mutex
	gens []int32 // generation of each service's endpoints held, -1: none
	live bool
	ph   *phase
	have int // services at the phase's wanted generation
}

// phase waits for every proxy to hold a wanted generation of some services.
type phase struct {
	want      []int32     // -1: not part of the phase
	need      []int       // per proxy: wanted services it receives (0: unaffected)
	at        []time.Time // per proxy: when it got there (zero: not yet)
	remaining atomic.Int64
	done      chan struct{}
}

// NewFleet prepares n proxies for addr; node returns proxy i's node. ownSvc
// tells whether a proxy receives the service it fronts (Bowline's
// all_services sidecars do, Consul's transparent proxies do not).
func NewFleet(w Workload, addr string, delta bool, ownSvc bool, node func(i int) *core.Node) *Fleet {
	f := &Fleet{w: w, addr: addr, delta: delta, node: node, ownSvc: ownSvc, claCache: make([]atomic.Pointer[claGen], w.Services)}
	for i := range w.Proxies {
		p := &proxy{f: f, i: i, gens: make([]int32, w.Services)}
		for k := range p.gens {
			p.gens[k] = -1
		}
		f.proxies = append(f.proxies, p)
	}
	return f
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// Connect dials every proxy and starts its stream; each proxy reconnects on
// its own until Close, as Envoy does: a failed stream is retried after a
// random delay of up to 500ms × 2^k (k failures in a row, at most 30s; reset
// by a response), on a connection that redials with gRPC's backoff (250ms
// base, ×1.6, 1s at most, so that the reconnect storm measures the server
// rather than the proxies' backoff).
func (f *Fleet) Connect(ctx context.Context) error {
	ctx, f.cancel = context.WithCancel(ctx)
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return countingConn{Conn: c, n: &f.wire}, nil
	}
	for _, p := range f.proxies {
		conn, err := grpc.NewClient("passthrough:///"+f.addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(dial),
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
				MinConnectTimeout: 5 * time.Second,
			}),
			grpc.WithDefaultCallOptions(grpc.WaitForReady(true), grpc.MaxCallRecvMsgSize(1<<30)),
		)
		if err != nil {
			f.Close()
			return err
		}
		p.conn = conn
	}
	for _, p := range f.proxies {
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			p.run(ctx)
		}()
	}
	return nil
}

// Close stops every proxy and waits for them.
func (f *Fleet) Close() {
	if f.cancel != nil {
		f.cancel()
	}
	f.wg.Wait()
	for _, p := range f.proxies {
		if p.conn != nil {
			p.conn.Close()
		}
	}
}

func (p *proxy) run(ctx context.Context) {
	fails := 0
	for ctx.Err() == nil {
		got := false
		c := adsclient.New(adsclient.Options{
			Node:  p.f.node(p.i),
			Delta: p.f.delta,
			Light: true,
			OnApplied: func(a adsclient.Applied) {
				got = true
				p.applied(a)
			},
		})
		p.f.opened.Add(1)
		_ = c.Run(ctx, p.conn)
		p.reset()
		if ctx.Err() != nil {
			return
		}
		p.f.failed.Add(1)
		if got {
			fails = 0
		}
		d := min(30*time.Second, (500*time.Millisecond)<<min(fails, 6))
		fails++
		select {
		case <-ctx.Done():
			return
		case <-time.After(rand.N(d)):
		}
	}
}

// applied records the generations of the ClusterLoadAssignments a response
// changed.
func (p *proxy) applied(a adsclient.Applied) {
	p.f.resBytes.Add(int64(a.Bytes))
	if a.NACKed {
		p.f.nacks.Add(1)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.live {
		p.live = true
		p.f.live.Add(1)
	}
	if a.TypeURL != resourcev3.EndpointType || a.NACKed {
		return
	}
	for name, r := range a.Changed {
		if k := ServiceIndex(name); k >= 0 && k < len(p.gens) {
			p.observeLocked(k, int32(p.f.generation(k, r.GetValue())))
		}
	}
	for _, name := range a.Removed {
		if k := ServiceIndex(name); k >= 0 && k < len(p.gens) {
			p.observeLocked(k, -1)
		}
	}
}

func (p *proxy) observeLocked(k int, g int32) {
	old := p.gens[k]
	p.gens[k] = g
	ph := p.ph
	if ph == nil || old == g || ph.want[k] < 0 || ph.need[p.i] == 0 {
		return
	}
	if !p.f.ownSvc && k == p.f.w.ProxyService(p.i) {
		return
	}
	if old == ph.want[k] {
		p.have--
	}
	if g == ph.want[k] {
		p.have++
		if p.have == ph.need[p.i] && ph.at[p.i].IsZero() {
			ph.at[p.i] = time.Now()
			if ph.remaining.Add(-1) == 0 {
				close(ph.done)
			}
		}
	}
}

// reset forgets what a closed stream delivered: the next stream starts from
// nothing, as Envoy's does after a reconnect to another server.
func (p *proxy) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.gens {
		p.gens[k] = -1
	}
	p.have = 0
	if p.live {
		p.live = false
		p.f.live.Add(-1)
	}
}

// Begin starts a phase: it ends when every proxy holds, for every service k
// with want[k] >= 0 that it receives, generation want[k]. Proxies that
// receive none of them are not part of the phase; a proxy that holds them
// already counts as there at once.
func (f *Fleet) Begin(want []int32) *phase {
	want = append([]int32(nil), want...)
	ph := &phase{want: want, need: make([]int, len(f.proxies)), at: make([]time.Time, len(f.proxies)), done: make(chan struct{})}
	total := 0
	for _, g := range want {
		if g >= 0 {
			total++
		}
	}
	affected := 0
	for _, p := range f.proxies {
		ph.need[p.i] = total
		if own := f.w.ProxyService(p.i); !f.ownSvc && want[own] >= 0 {
			ph.need[p.i]--
		}
		if ph.need[p.i] > 0 {
			affected++
		}
	}
	ph.remaining.Store(int64(affected))
	if affected == 0 {
		close(ph.done)
	}
	now := time.Now()
	for _, p := range f.proxies {
		p.mu.Lock()
		p.ph = ph
		p.have = 0
		for k, g := range p.gens {
			if want[k] >= 0 && g == want[k] && (f.ownSvc || k != f.w.ProxyService(p.i)) {
				p.have++
			}
		}
		if ph.need[p.i] > 0 && p.have == ph.need[p.i] {
			ph.at[p.i] = now
			if ph.remaining.Add(-1) == 0 {
				close(ph.done)
			}
		}
		p.mu.Unlock()
	}
	return ph
}

// Wait waits for the phase to end, or for ctx; it reports whether every
// proxy got there. Read the latencies with Fleet.Latencies.
func (ph *phase) Wait(ctx context.Context) bool {
	select {
	case <-ph.done:
		return true
	case <-ctx.Done():
		return false
	}
}

// Latencies returns how long after start each affected proxy got there
// (-1: not there), read under every proxy's lock.
func (f *Fleet) Latencies(ph *phase, start time.Time) []time.Duration {
	var out []time.Duration
	for _, p := range f.proxies {
		if ph.need[p.i] == 0 {
			continue
		}
		p.mu.Lock()
		if t := ph.at[p.i]; t.IsZero() {
			out = append(out, -1)
		} else {
			out = append(out, max(0, t.Sub(start)))
		}
		p.mu.Unlock()
	}
	return out
}

// Live counts the proxies whose current stream has delivered a response.
func (f *Fleet) Live() int { return int(f.live.Load()) }

// Counters is a reading of the fleet's counters.
type Counters struct {
	Wire, Resources, Opened, Failed, NACKs int64
}

// Counters reads the fleet's counters.
func (f *Fleet) Counters() Counters {
	return Counters{Wire: f.wire.Load(), Resources: f.resBytes.Load(), Opened: f.opened.Load(), Failed: f.failed.Load(), NACKs: f.nacks.Load()}
}
