// Package rlsbench measures bowline policyd's rate limit service (RLS v3
// ShouldRateLimit) next to a do-nothing RLS server, the same way in the
// same run (docs/PERFORMANCE.md, "policyd: rate limit service"): each
// server is its own process pinned to one core, with Redis (when used) on
// that same core, and callers on loopback on the other cores send the
// descriptors an Envoy sidecar of orders sends for a limit by header.
package rlsbench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	commonrl "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bowlinemesh/bowline/policy/ratelimit/redistest"
)

// Config is the configuration directory policyd reads: a limit on orders by
// the caller's x-user header that the run never reaches (every decision
// counts, none is answered from the over-limit cache), and one on tight
// (1,000 per hour) that almost every request is over.
const Config = `mesh {
  policyd {
    address = "127.0.0.1:15020"
  }
}

service "orders" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8080
    sidecar_port = 21000
  }
}
service "tight" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8081
    sidecar_port = 21001
  }
}

rate_limit "orders" {
  global {
    requests = 4000000000
    per      = "1h"
    by       = ["request.headers[\"x-user\"]"]
  }
}
rate_limit "tight" {
  global {
    requests = 1000
    per      = "1h"
    by       = ["request.headers[\"x-user\"]"]
  }
}
`

// Requests are what a sidecar sends for destination dest with values
// distinct x-user values (u0, u1, ...), one request per value.
func Requests(dest string, values int) []*rlsv3.RateLimitRequest {
	out := make([]*rlsv3.RateLimitRequest, values)
	for i := range out {
		out[i] = &rlsv3.RateLimitRequest{Domain: "bowline", Descriptors: []*commonrl.RateLimitDescriptor{{Entries: []*commonrl.RateLimitDescriptor_Entry{
			{Key: "destination", Value: "default/" + dest}, {Key: "header:x-user", Value: "u" + strconv.Itoa(i)},
		}}}}
	}
	return out
}

// Noop is the do-nothing RLS server: every descriptor OK, with a response
// built once per descriptor count.
type Noop struct {
	rlsv3.UnimplementedRateLimitServiceServer
}

var noopOK = &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK,
	Statuses: []*rlsv3.RateLimitResponse_DescriptorStatus{{Code: rlsv3.RateLimitResponse_OK}}}

// ShouldRateLimit implements RLS v3.
func (Noop) ShouldRateLimit(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	if len(req.GetDescriptors()) == 1 {
		return noopOK, nil
	}
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}
	for range req.GetDescriptors() {
		resp.Statuses = append(resp.Statuses, &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK})
	}
	return resp, nil
}

// ServeNoop serves the do-nothing server on addr, with policyd's gRPC
// server options.
func ServeNoop(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s := grpc.NewServer(grpc.MaxConcurrentStreams(1 << 20))
	rlsv3.RegisterRateLimitServiceServer(s, Noop{})
	return s.Serve(lis)
}

// NoopArg is the argument that makes the benchmark binary serve the
// do-nothing server (it re-executes itself, pinned).
const NoopArg = "noop-rls"

// Scenario is one server setup and request mix.
type Scenario struct {
	// Server is "do-nothing", "memory" (policyd, counters in memory) or
	// "redis" (policyd --redis-addr).
	Server string `json:"server"`
	// Dest is the destination ("orders": never over; "tight": over).
	Dest string `json:"dest"`
	// Values is the number of distinct x-user values.
	Values int `json:"values"`
}

func (s Scenario) String() string {
	v := fmt.Sprintf("%s %d value", s.Server, s.Values)
	if s.Values != 1 {
		v += "s"
	}
	if s.Dest == "tight" {
		v += ", over the limit"
	}
	return v
}

// Plan is the default list of scenarios.
var Plan = []Scenario{
	{"do-nothing", "orders", 1}, {"memory", "orders", 1}, {"redis", "orders", 1},
	{"do-nothing", "orders", 1000}, {"memory", "orders", 1000}, {"redis", "orders", 1000},
}

// OverPlan adds the scenarios over the limit.
var OverPlan = []Scenario{{"memory", "tight", 1}, {"redis", "tight", 1}}

// Options tune a run.
type Options struct {
	// Bowline is the bowline binary; Self the benchmark binary (for the
	// do-nothing server).
	Bowline, Self string
	// RedisServer is the redis-server binary.
	RedisServer string
	Scenarios   []Scenario
	// Callers is the number of concurrent callers (16), each on its own
	// connection, as 16 sidecars would be.
	Callers int
	// Warmup and Duration of each measurement; Rounds repeats the plan.
	Warmup, Duration time.Duration
	Rounds           int
	// ServerCPUs pins the servers and Redis (taskset -c); empty: not
	// pinned.
	ServerCPUs string
	WorkDir    string
	Logf       func(string, ...any)
}

// Result is one measurement.
type Result struct {
	Scenario
	Round    int           `json:"round"`
	Requests int           `json:"requests"`
	Errors   int           `json:"errors"`
	OK       int           `json:"ok"`
	Over     int           `json:"over_limit"`
	RPS      float64       `json:"rps"`
	P50      time.Duration `json:"p50_ns"`
	P90      time.Duration `json:"p90_ns"`
	P99      time.Duration `json:"p99_ns"`
	Max      time.Duration `json:"max_ns"`
	// CPUPerCall is the server's CPU time (user + system) per decision
	// while measuring, RedisCPUPerCall Redis's: what bounds the pinned
	// core's throughput, and what a loaded machine distorts least.
	CPUPerCall      time.Duration `json:"cpu_per_call_ns"`
	RedisCPUPerCall time.Duration `json:"redis_cpu_per_call_ns"`
	// PipelineRequests is the mean number of requests per Redis round
	// trip (policyd's bowline_policyd_ratelimit_redis_pipeline_requests).
	PipelineRequests float64 `json:"pipeline_requests,omitempty"`
}

// Run measures the scenarios, in order, Rounds times.
func Run(ctx context.Context, o Options) ([]Result, error) {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	dir, err := os.MkdirTemp(o.WorkDir, "rlsbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	cfgDir := filepath.Join(dir, "config")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "limits.hcl"), []byte(Config), 0o644); err != nil {
		return nil, err
	}
	var out []Result
	for round := 1; round <= o.Rounds; round++ {
		for _, sc := range o.Scenarios {
			r, err := runOne(ctx, o, dir, cfgDir, sc)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", sc, err)
			}
			r.Round = round
			o.Logf("round %d %-36s %8.0f req/s  p50 %6.0fµs  p99 %6.0fµs  CPU/call %5.1fµs (+ Redis %4.1fµs, %.1f requests/pipeline)  (%d requests, %d over, %d errors)",
				round, sc, r.RPS, float64(r.P50)/1e3, float64(r.P99)/1e3, float64(r.CPUPerCall)/1e3, float64(r.RedisCPUPerCall)/1e3, r.PipelineRequests, r.Requests, r.Over, r.Errors)
			out = append(out, r)
		}
	}
	return out, nil
}

func (o Options) pinned(argv ...string) []string {
	if o.ServerCPUs == "" {
		return argv
	}
	return append([]string{"taskset", "-c", o.ServerCPUs}, argv...)
}

// runOne starts the scenario's processes (Redis fresh each time), measures,
// and stops them.
func runOne(ctx context.Context, o Options, dir, cfgDir string, sc Scenario) (Result, error) {
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}()
	start := func(argv []string) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", argv[0], err)
		}
		procs = append(procs, cmd)
		return cmd, nil
	}
	redisPid, httpAddr := 0, ""
	var argv []string
	addr, err := freeAddr()
	if err != nil {
		return Result{}, err
	}
	switch sc.Server {
	case "do-nothing":
		argv = o.pinned(o.Self, NoopArg, addr)
	case "memory", "redis":
		if httpAddr, err = freeAddr(); err != nil {
			return Result{}, err
		}
		argv = o.pinned(o.Bowline, "policyd", "--config", cfgDir, "--grpc-addr", addr, "--http-addr", httpAddr, "--log-level", "warn")
		if sc.Server == "redis" {
			redisAddr, err := freeAddr()
			if err != nil {
				return Result{}, err
			}
			_, port, _ := net.SplitHostPort(redisAddr)
			rdir, err := os.MkdirTemp(dir, "redis-")
			if err != nil {
				return Result{}, err
			}
			rc, err := start(o.pinned(o.RedisServer, "--port", port, "--bind", "127.0.0.1", "--dir", rdir, "--save", "", "--appendonly", "no", "--loglevel", "warning"))
			if err != nil {
				return Result{}, err
			}
			redisPid = rc.Process.Pid
			if err := waitRedis(redisAddr); err != nil {
				return Result{}, err
			}
			argv = append(argv, "--redis-addr", redisAddr)
		}
	default:
		return Result{}, fmt.Errorf("unknown server %q", sc.Server)
	}
	srv, err := start(argv)
	if err != nil {
		return Result{}, err
	}
	r, err := measure(ctx, addr, Requests(sc.Dest, sc.Values), o, srv.Process.Pid, redisPid)
	r.Scenario = sc
	if err == nil && sc.Server == "redis" {
		r.PipelineRequests = pipelineMean(httpAddr)
	}
	return r, err
}

// pipelineMean reads policyd's mean requests per Redis pipeline (0 when it
// cannot).
func pipelineMean(httpAddr string) float64 {
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum, count float64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case "bowline_policyd_ratelimit_redis_pipeline_requests_sum":
			sum, _ = strconv.ParseFloat(f[1], 64)
		case "bowline_policyd_ratelimit_redis_pipeline_requests_count":
			count, _ = strconv.ParseFloat(f[1], 64)
		}
	}
	if count == 0 {
		return 0
	}
	return sum / count
}

func waitRedis(addr string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := redistest.Ping(addr)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// measure waits for the server to decide, then runs the callers.
func measure(ctx context.Context, addr string, reqs []*rlsv3.RateLimitRequest, o Options, pid, redisPid int) (Result, error) {
	conns := make([]*grpc.ClientConn, o.Callers)
	for i := range conns {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return Result{}, err
		}
		defer c.Close()
		conns[i] = c
	}
	// Ready: a request is decided (policyd has its limits).
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := rlsv3.NewRateLimitServiceClient(conns[0]).ShouldRateLimit(cctx, reqs[0])
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return Result{}, fmt.Errorf("not ready after 30s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var (
		recording atomic.Bool
		stop      atomic.Bool
		wg        sync.WaitGroup
		lat       = make([][]time.Duration, o.Callers)
		errs      = make([]int, o.Callers)
		ok        = make([]int, o.Callers)
	)
	for i := range o.Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := rlsv3.NewRateLimitServiceClient(conns[i])
			local := make([]time.Duration, 0, 1<<16)
			for n := i; !stop.Load(); n += o.Callers {
				start := time.Now()
				resp, err := client.ShouldRateLimit(ctx, reqs[n%len(reqs)])
				d := time.Since(start)
				if !recording.Load() {
					continue
				}
				if err != nil {
					errs[i]++
					continue
				}
				if resp.GetOverallCode() == rlsv3.RateLimitResponse_OK {
					ok[i]++
				}
				local = append(local, d)
			}
			lat[i] = local
		}()
	}
	time.Sleep(o.Warmup)
	cpu0, rcpu0 := processCPU(pid), processCPU(redisPid)
	recording.Store(true)
	start := time.Now()
	time.Sleep(o.Duration)
	recording.Store(false)
	elapsed := time.Since(start)
	cpu, rcpu := processCPU(pid)-cpu0, processCPU(redisPid)-rcpu0
	stop.Store(true)
	wg.Wait()
	var all []time.Duration
	r := Result{}
	for i := range o.Callers {
		all = append(all, lat[i]...)
		r.Errors += errs[i]
		r.OK += ok[i]
	}
	slices.Sort(all)
	r.Requests = len(all)
	r.Over = r.Requests - r.OK
	r.RPS = float64(len(all)) / elapsed.Seconds()
	if len(all) > 0 {
		r.CPUPerCall = cpu / time.Duration(len(all))
		r.RedisCPUPerCall = rcpu / time.Duration(len(all))
		q := func(p float64) time.Duration { return all[min(len(all)-1, int(p*float64(len(all))))] }
		r.P50, r.P90, r.P99, r.Max = q(0.50), q(0.90), q(0.99), all[len(all)-1]
	}
	return r, nil
}

// processCPU is a process's user + system CPU time so far (Linux, /proc;
// a taskset that exec'd the server has the same pid). 0 for pid 0.
func processCPU(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ
	return time.Duration(utime+stime) * time.Second / ticks
}
