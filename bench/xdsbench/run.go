package xdsbench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Options tune a run.
type Options struct {
	// WorkDir holds the servers' directories (default: the system's).
	WorkDir     string
	KeepWorkDir bool
	// ServerCPUs pins the server process (taskset -c list); empty: not
	// pinned. The harness pins itself separately (cmd/xdsbench -pin).
	ServerCPUs string
	// FilesPerService writes one file per service for the dir-based peers
	// instead of one file holding them all.
	FilesPerService bool
	// ConsulBin is the Consul binary (default bin/consul).
	ConsulBin string
	// OneRepeats and AllRepeats are how many one-service and every-service
	// changes to make (defaults 5 and 2).
	OneRepeats, AllRepeats int
	// PhaseTimeout bounds each phase (default 10m).
	PhaseTimeout time.Duration
	// ProfileDir, when set, receives CPU profiles of the server across the
	// first one-service and every-service changes (peers that can write
	// them) and heap profiles once the proxies are connected.
	ProfileDir string
	// Revision names the code measured (default: git describe --dirty of
	// the working directory).
	Revision string
	// As renames the peer in the results (to keep another build's rows
	// beside the current ones, e.g. "bowline@15efc05").
	As string
	// Logf reports progress (nil: silent).
	Logf func(format string, args ...any)
}

func (o *Options) defaults() {
	if o.OneRepeats <= 0 {
		o.OneRepeats = 5
	}
	if o.AllRepeats <= 0 {
		o.AllRepeats = 2
	}
	if o.PhaseTimeout <= 0 {
		o.PhaseTimeout = 10 * time.Minute
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	if o.Revision == "" {
		o.Revision = revision()
	}
}

// Result is every figure of one peer, protocol and workload.
type Result struct {
	Peer     string    `json:"peer"`
	Protocol string    `json:"protocol"`
	Workload Workload  `json:"workload"`
	Started  time.Time `json:"started"`
	Seconds  float64   `json:"seconds"`
	Machine  Machine   `json:"machine"`
	Revision string    `json:"revision"`
	Pinning  string    `json:"pinning"`
	Notes    []string  `json:"notes"`

	InitialSync  *Phase   `json:"initial_sync,omitempty"`
	Memory       *Memory  `json:"memory,omitempty"`
	OneService   *Summary `json:"one_service,omitempty"`
	EveryService *Summary `json:"every_service,omitempty"`
	Reconnect    *Phase   `json:"reconnect,omitempty"`
	Phases       []*Phase `json:"phases"`
	Errors       []string `json:"errors,omitempty"`
	// Disturbance is the share of the machine's CPU that other processes
	// used during the phases (0 on a quiet machine): other engineers'
	// builds and tests share these cores.
	Disturbance float64 `json:"disturbance"`
}

// disturbance computes Result.Disturbance from the phases.
func (r *Result) disturbance() float64 {
	var other, wall float64
	for _, p := range r.Phases {
		other += p.OtherCPUSeconds
		wall += p.Seconds
	}
	if wall == 0 {
		return 0
	}
	return other / (wall * float64(max(1, r.Machine.CPUs)))
}

// Phase is one measured event: the proxies' connection, a change, a restart.
type Phase struct {
	Name    string `json:"name"`
	Changed int    `json:"changed_services,omitempty"`
	Proxies int    `json:"proxies"`
	// Converged counts the proxies that got there before the timeout.
	Converged int  `json:"converged"`
	TimedOut  bool `json:"timed_out,omitempty"`
	// Latencies from the event to each proxy's ACK, over converged proxies.
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	// ServerReadyMs is, for the reconnect storm, how long the restarted
	// server took to serve again (from its start); latencies count from
	// its start too, and DowntimeMs is from the stop signal to its start.
	ServerReadyMs float64 `json:"server_ready_ms,omitempty"`
	DowntimeMs    float64 `json:"downtime_ms,omitempty"`
	// Costs from the event until the traffic stopped.
	ServerCPUSeconds  float64 `json:"server_cpu_s"`
	HarnessCPUSeconds float64 `json:"harness_cpu_s"`
	// OtherCPUSeconds is what the rest of the machine used meanwhile (other
	// engineers' builds): a disturbed figure shows here. Seconds is the
	// phase's wall time, from the meter's start until the traffic stopped.
	OtherCPUSeconds float64 `json:"other_cpu_s"`
	Seconds         float64 `json:"seconds"`
	WireBytes       int64   `json:"wire_bytes"`
	ResourceBytes   int64   `json:"resource_bytes"`
	StreamFailures  int64   `json:"stream_failures"`
	NACKs           int64   `json:"nacks"`
	LoadBefore      string  `json:"load_before"`
	LoadAfter       string  `json:"load_after"`
}

// Summary pools the phases of one kind of change.
type Summary struct {
	Changes   int     `json:"changes"`
	Samples   int     `json:"samples"`
	Converged int     `json:"converged"`
	P50Ms     float64 `json:"p50_ms"`
	P99Ms     float64 `json:"p99_ms"`
	MaxMs     float64 `json:"max_ms"`
	// Means per change.
	ServerCPUSeconds  float64  `json:"server_cpu_s"`
	HarnessCPUSeconds float64  `json:"harness_cpu_s"`
	OtherCPUSeconds   float64  `json:"other_cpu_s"`
	WireBytes         float64  `json:"wire_bytes"`
	ResourceBytes     float64  `json:"resource_bytes"`
	Loads             []string `json:"loads"`
}

// Memory is the server's footprint without and with the proxies.
type Memory struct {
	EmptyRSS     int64   `json:"empty_rss"`
	EmptyHeap    int64   `json:"empty_heap"`
	RSS          int64   `json:"rss"`
	Heap         int64   `json:"heap"`
	PerProxyRSS  float64 `json:"per_proxy_rss"`
	PerProxyHeap float64 `json:"per_proxy_heap"`
	Load         string  `json:"load"`
}

// Run measures one peer with one protocol on one workload. Errors in a phase
// are recorded in the result, which is returned whenever the server started.
func Run(ctx context.Context, peer Peer, protocol string, w Workload, o Options) (*Result, error) {
	o.defaults()
	if err := w.Validate(); err != nil {
		return nil, err
	}
	if !slices.Contains(peer.Protocols(), protocol) {
		return nil, fmt.Errorf("%s does not serve %s ADS", peer.Name(), protocol)
	}
	r := &Result{Peer: cmp.Or(o.As, peer.Name()), Protocol: protocol, Workload: w, Started: time.Now().UTC(), Machine: machine(), Revision: o.Revision, Pinning: pinning(o)}
	defer func() {
		r.Seconds = time.Since(r.Started).Seconds()
		r.Disturbance = r.disturbance()
	}()
	logf := func(format string, args ...any) {
		o.Logf("%s/%s %s: "+format, append([]any{r.Peer, protocol, w}, args...)...)
	}
	gens := make([]int32, w.Services)

	// The machine is shared: a server that eats its memory is killed before
	// the kernel picks a victim.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var serverPID atomic.Int64
	var oom atomic.Value
	go guardMemory(ctx, &serverPID, func(err error) {
		oom.Store(err)
		cancel()
	})

	logf("launching the server")
	if err := peer.Launch(ctx, w, gens); err != nil {
		peer.Close()
		return nil, fmt.Errorf("%s: launch: %w", peer.Name(), err)
	}
	defer peer.Close()
	serverPID.Store(int64(peer.PID()))
	r.Notes = peer.Notes()
	fail := func(phase string, err error) {
		if e, ok := oom.Load().(error); ok {
			err = e
		}
		r.Errors = append(r.Errors, phase+": "+err.Error())
		logf("%s: %v", phase, err)
	}

	settle(ctx, peer.PID())
	mem := &Memory{}
	var err error
	if mem.EmptyHeap, mem.EmptyRSS, err = footprint(ctx, peer); err != nil {
		fail("memory", err)
	}

	fleet := NewFleet(w, peer.XDSAddr(), protocol == "delta", peer.ServesOwnService(), peer.Node)
	defer fleet.Close()

	// Initial sync: every proxy connects at once.
	logf("connecting %d proxies", w.Proxies)
	ph := fleet.Begin(gens)
	m := newMeter(peer.PID(), fleet)
	start := time.Now()
	if err := fleet.Connect(ctx); err != nil {
		return r, err
	}
	r.InitialSync, _ = m.finish(ctx, "initial sync", fleet, ph, start, o.PhaseTimeout)
	r.Phases = append(r.Phases, r.InitialSync)
	logf("initial sync: all in %.0f ms (%d/%d)", r.InitialSync.MaxMs, r.InitialSync.Converged, w.Proxies)
	if r.InitialSync.TimedOut {
		fail("initial sync", errors.New("timed out"))
		return r, nil
	}

	settle(ctx, peer.PID())
	if mem.Heap, mem.RSS, err = footprint(ctx, peer); err != nil {
		fail("memory", err)
	}
	mem.Load = loadAvg()
	if pp, ok := peer.(PprofPeer); ok && o.ProfileDir != "" {
		path := filepath.Join(o.ProfileDir, fmt.Sprintf("%s-%s-n%d-s%d-e%d.heap.pprof", r.Peer, protocol, w.Proxies, w.Services, w.Endpoints))
		if err := saveURL(ctx, pp.PprofURL()+"/debug/pprof/heap?gc=1", path); err != nil {
			fail("heap profile", err)
		}
	}
	mem.PerProxyRSS = float64(mem.RSS-mem.EmptyRSS) / float64(w.Proxies)
	mem.PerProxyHeap = float64(mem.Heap-mem.EmptyHeap) / float64(w.Proxies)
	r.Memory = mem
	logf("memory: %.1f KB RSS, %.1f KB heap per proxy", mem.PerProxyRSS/1024, mem.PerProxyHeap/1024)

	change := func(name string, ks []int, profile string) (*Phase, []time.Duration) {
		settle(ctx, peer.PID())
		want := make([]int32, w.Services)
		for k := range want {
			want[k] = -1
		}
		for _, k := range ks {
			gens[k]++
			want[k] = gens[k]
		}
		if prof, ok := peer.(Profiler); ok && profile != "" {
			if err := prof.StartProfile(ctx, profile); err != nil {
				fail(name+": profile", err)
				profile = ""
			}
		}
		ph := fleet.Begin(want)
		m := newMeter(peer.PID(), fleet)
		at, err := peer.Change(ctx, ks, gens)
		if err != nil {
			fail(name, err)
		}
		p, lat := m.finish(ctx, name, fleet, ph, at, o.PhaseTimeout)
		p.Changed = len(ks)
		if prof, ok := peer.(Profiler); ok && profile != "" {
			if err := prof.StopProfile(ctx); err != nil {
				fail(name+": profile", err)
			}
		}
		r.Phases = append(r.Phases, p)
		logf("%s: p50 %.0f ms, p99 %.0f ms, max %.0f ms (%d/%d), server %.2f CPU s, %d bytes", name, p.P50Ms, p.P99Ms, p.MaxMs, p.Converged, p.Proxies, p.ServerCPUSeconds, p.WireBytes)
		if p.TimedOut {
			fail(name, errors.New("timed out"))
		}
		return p, lat
	}

	var ones, alls []*Phase
	var oneLat, allLat [][]time.Duration
	for i := range o.OneRepeats {
		// Spread the changed services over the catalog.
		k := (i*w.Services/o.OneRepeats + i) % w.Services
		profile := ""
		if i == 0 && o.ProfileDir != "" {
			profile, _ = filepath.Abs(filepath.Join(o.ProfileDir, fmt.Sprintf("%s-%s-n%d-s%d-e%d.one.cpu.pprof", r.Peer, protocol, w.Proxies, w.Services, w.Endpoints)))
		}
		p, lat := change(fmt.Sprintf("one-service change %d (%s)", i+1, ServiceName(k)), []int{k}, profile)
		ones = append(ones, p)
		oneLat = append(oneLat, lat)
		if p.TimedOut || ctx.Err() != nil {
			break
		}
	}
	r.OneService = summarize(ones, oneLat)
	all := make([]int, w.Services)
	for k := range all {
		all[k] = k
	}
	for i := range o.AllRepeats {
		profile := ""
		if i == 0 && o.ProfileDir != "" {
			profile, _ = filepath.Abs(filepath.Join(o.ProfileDir, fmt.Sprintf("%s-%s-n%d-s%d-e%d.every.cpu.pprof", r.Peer, protocol, w.Proxies, w.Services, w.Endpoints)))
		}
		p, lat := change(fmt.Sprintf("every-service change %d", i+1), all, profile)
		alls = append(alls, p)
		allLat = append(allLat, lat)
		if p.TimedOut || ctx.Err() != nil {
			break
		}
	}
	r.EveryService = summarize(alls, allLat)

	// Reconnect storm: stop the server, wait until every stream is gone,
	// start it again.
	settle(ctx, peer.PID())
	logf("reconnect storm")
	stopAt := time.Now()
	if err := peer.Stop(); err != nil {
		fail("reconnect storm", err)
		return r, nil
	}
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	_ = poll(waitCtx, 10*time.Millisecond, func() error {
		if n := fleet.Live(); n > 0 {
			return fmt.Errorf("%d proxies still connected", n)
		}
		return nil
	})
	cancel()
	ph = fleet.Begin(gens)
	h0, _ := cpuSeconds(0)
	busy0 := machineBusy()
	c0, load0 := fleet.Counters(), loadAvg()
	restartAt := time.Now()
	if err := peer.Start(ctx); err != nil {
		fail("reconnect storm", err)
		return r, nil
	}
	ready := time.Since(restartAt)
	serverPID.Store(int64(peer.PID()))
	// A new process: all of its CPU counts.
	m = &meter{pid: peer.PID(), cpu: cpuMeter{pid: peer.PID(), harness: h0, machine: busy0, startedAt: restartAt}, c0: c0, load0: load0}
	r.Reconnect, _ = m.finish(ctx, "reconnect storm", fleet, ph, restartAt, o.PhaseTimeout)
	r.Reconnect.ServerReadyMs = ms(ready)
	r.Reconnect.DowntimeMs = ms(restartAt.Sub(stopAt))
	r.Phases = append(r.Phases, r.Reconnect)
	logf("reconnect storm: all in %.0f ms after the restart (server ready in %.0f ms)", r.Reconnect.MaxMs, r.Reconnect.ServerReadyMs)
	if r.Reconnect.TimedOut {
		fail("reconnect storm", errors.New("timed out"))
	}
	return r, nil
}

// meter measures a phase's costs.
type meter struct {
	pid   int
	cpu   cpuMeter
	c0    Counters
	load0 string
}

func newMeter(pid int, f *Fleet) *meter {
	return &meter{pid: pid, cpu: startCPU(pid), c0: f.Counters(), load0: loadAvg()}
}

// finish waits for the phase, then for the traffic to stop, and reports it
// with each affected proxy's latency (-1: not there).
func (m *meter) finish(ctx context.Context, name string, f *Fleet, ph *phase, start time.Time, timeout time.Duration) (*Phase, []time.Duration) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	ok := ph.Wait(wctx)
	cancel()
	quiet(ctx, f)
	server, harness, other := m.cpu.read()
	c := f.Counters()
	lat := f.Latencies(ph, start)
	p := &Phase{
		Name: name, Proxies: len(lat), TimedOut: !ok,
		ServerCPUSeconds: server, HarnessCPUSeconds: harness, OtherCPUSeconds: other,
		Seconds:   time.Since(m.cpu.startedAt).Seconds(),
		WireBytes: c.Wire - m.c0.Wire, ResourceBytes: c.Resources - m.c0.Resources,
		StreamFailures: c.Failed - m.c0.Failed, NACKs: c.NACKs - m.c0.NACKs,
		LoadBefore: m.load0, LoadAfter: loadAvg(),
	}
	var got []time.Duration
	for _, l := range lat {
		if l >= 0 {
			got = append(got, l)
		}
	}
	p.Converged = len(got)
	p.P50Ms, p.P99Ms, p.MaxMs = percentiles(got)
	return p, lat
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)*10) / 10 }

// percentiles returns the nearest-rank p50, p99 and maximum, in ms.
func percentiles(d []time.Duration) (p50, p99, maxMs float64) {
	if len(d) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return ms(rank(0.50)), ms(rank(0.99)), ms(s[len(s)-1])
}

func summarize(ps []*Phase, lats [][]time.Duration) *Summary {
	if len(ps) == 0 {
		return nil
	}
	s := &Summary{Changes: len(ps)}
	var pooled []time.Duration
	for i, p := range ps {
		s.ServerCPUSeconds += p.ServerCPUSeconds / float64(len(ps))
		s.HarnessCPUSeconds += p.HarnessCPUSeconds / float64(len(ps))
		s.OtherCPUSeconds += p.OtherCPUSeconds / float64(len(ps))
		s.WireBytes += float64(p.WireBytes) / float64(len(ps))
		s.ResourceBytes += float64(p.ResourceBytes) / float64(len(ps))
		s.Samples += p.Proxies
		s.Converged += p.Converged
		s.Loads = append(s.Loads, p.LoadBefore)
		for _, l := range lats[i] {
			if l >= 0 {
				pooled = append(pooled, l)
			}
		}
	}
	s.P50Ms, s.P99Ms, s.MaxMs = percentiles(pooled)
	return s
}

// quiet waits until the proxies have received nothing for 300ms (at most
// 10s): the change's traffic is over.
func quiet(ctx context.Context, f *Fleet) {
	deadline := time.Now().Add(10 * time.Second)
	last, since := f.Counters().Wire, time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		if w := f.Counters().Wire; w != last {
			last, since = w, time.Now()
		} else if time.Since(since) >= 300*time.Millisecond {
			return
		}
	}
}

// settle waits until the server has used less than 5% of a core for a
// second (at most 30s), so that a phase does not start in the previous
// one's tail (a GC, a late push).
func settle(ctx context.Context, pid int) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		a, _ := cpuSeconds(pid)
		time.Sleep(time.Second)
		b, _ := cpuSeconds(pid)
		if b-a < 0.05 {
			return
		}
	}
}

// footprint forces a GC in the server and reads its live heap, then its RSS
// a second later.
func footprint(ctx context.Context, peer Peer) (heap, rss int64, err error) {
	heap, err = peer.Heap(ctx)
	time.Sleep(time.Second)
	rss, rerr := rssBytes(peer.PID())
	return heap, rss, errors.Join(err, rerr)
}

func saveURL(ctx context.Context, url, path string) error {
	b, err := httpDo(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

func revision() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty", "--exclude", "*").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

func pinning(o Options) string {
	if o.ServerCPUs == "" {
		return "none"
	}
	h := os.Getenv("XDSBENCH_HARNESS_CPUS")
	if h == "" {
		h = "any"
	}
	return "server on CPU " + o.ServerCPUs + ", harness on CPU " + h
}

// guardMemory kills the server and calls stop when the machine's available
// memory falls below a tenth of it (at least 2 GiB).
func guardMemory(ctx context.Context, pid *atomic.Int64, stop func(error)) {
	total, _ := memInfo("MemTotal:")
	floor := max(total/10, 2<<30)
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		avail, ok := memInfo("MemAvailable:")
		if !ok || avail >= floor {
			continue
		}
		rss := int64(0)
		if p := int(pid.Load()); p > 0 {
			rss, _ = rssBytes(p)
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		stop(fmt.Errorf("stopped: the machine had %d MiB of memory left (server RSS %d MiB); the server was killed", avail>>20, rss>>20))
		return
	}
}
