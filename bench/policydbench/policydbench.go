// Package policydbench measures bowline policyd's ext_authz Check next to a
// do-nothing ext_authz server, the same way in the same run: each server
// runs as its own process pinned to one core, and callers on loopback send
// both the CheckRequests an Envoy sidecar of orders would send for the
// policy issue's rule (docs/PERFORMANCE.md, "policyd: ext_authz Check").
package policydbench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// Config is the configuration directory policyd reads: the policy issue's
// rule about orders.
const Config = `mesh { trust_domain = "mesh.test" }

service "orders" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8080
    sidecar_port = 21000
  }
}
service "frontend" {
  protocol = "http"
}

authorization "orders" {
  namespace = "default"
  rule {
    action = "allow"
    from { services = ["frontend"] }
    to { methods = ["GET"]  paths = ["/api/*"] }
  }
}
`

// Requests is the mix sent to both servers: nine in ten from frontend (GET
// /api/orders/<n>, allowed), one in ten from backend (denied), with the
// attributes and headers Envoy puts in a CheckRequest.
func Requests() []*authv3.CheckRequest {
	var out []*authv3.CheckRequest
	for i := range 100 {
		src, path := "spiffe://mesh.test/ns/default/svc/frontend", fmt.Sprintf("/api/orders/%d", i)
		if i%10 == 9 {
			src = "spiffe://mesh.test/ns/default/svc/backend"
		}
		out = append(out, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:      &authv3.AttributeContext_Peer{Principal: src, Address: sock("10.0.0.20", 40000+uint32(i))},
			Destination: &authv3.AttributeContext_Peer{Principal: "spiffe://mesh.test/ns/default/svc/orders", Address: sock("10.0.0.10", 21000)},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Id: strconv.Itoa(i), Method: "GET", Path: path, Host: "orders", Scheme: "http", Protocol: "HTTP/1.1",
				Headers: map[string]string{
					":authority": "orders", ":method": "GET", ":path": path, ":scheme": "http",
					"accept": "application/json", "user-agent": "curl/8.5.0", "x-forwarded-proto": "http",
					"x-request-id": fmt.Sprintf("5b3c4a2e-0000-4000-8000-%012d", i),
				},
			}},
			ContextExtensions: map[string]string{"destination": "default/orders", "port": "8080"},
		}})
	}
	return out
}

func sock(addr string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

// Noop is the do-nothing ext_authz server: it allows everything with a
// response built once.
type Noop struct {
	authv3.UnimplementedAuthorizationServer
}

var noopOK = &authv3.CheckResponse{Status: &rpcstatus.Status{Code: int32(codes.OK)},
	HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}

// Check implements ext_authz.
func (Noop) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return noopOK, nil
}

// ServeNoop serves the do-nothing server on addr, with the same gRPC
// server options as policyd.
func ServeNoop(addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s := grpc.NewServer(grpc.MaxConcurrentStreams(1 << 20))
	authv3.RegisterAuthorizationServer(s, Noop{})
	return s.Serve(lis)
}

// NoopArg is the argument that makes the benchmark binary serve the
// do-nothing server (it re-executes itself, pinned).
const NoopArg = "noop-authz"

// Options tune a run.
type Options struct {
	// Bowline is the bowline binary; Self the benchmark binary (for the
	// do-nothing server).
	Bowline, Self string
	// Callers is the number of concurrent callers (16), each on its own
	// connection.
	Callers int
	// Warmup and Duration of each measurement; Rounds alternates the two
	// servers this many times.
	Warmup, Duration time.Duration
	Rounds           int
	// ServerCPUs pins the servers (taskset -c); empty: not pinned.
	ServerCPUs string
	WorkDir    string
	Logf       func(string, ...any)
}

// Result is one measurement.
type Result struct {
	Server   string        `json:"server"`
	Round    int           `json:"round"`
	Requests int           `json:"requests"`
	Errors   int           `json:"errors"`
	Allowed  int           `json:"allowed"`
	Denied   int           `json:"denied"`
	RPS      float64       `json:"rps"`
	P50      time.Duration `json:"p50_ns"`
	P90      time.Duration `json:"p90_ns"`
	P99      time.Duration `json:"p99_ns"`
	Max      time.Duration `json:"max_ns"`
	// CPUPerCheck is the server process's CPU time (user + system) per
	// request while measuring: what bounds a dedicated core's throughput,
	// and what a loaded machine does not distort.
	CPUPerCheck time.Duration `json:"cpu_per_check_ns"`
}

// Run measures both servers, alternating, Rounds times.
func Run(ctx context.Context, o Options) ([]Result, error) {
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	dir, err := os.MkdirTemp(o.WorkDir, "policydbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "orders.hcl"), []byte(Config), 0o644); err != nil {
		return nil, err
	}
	reqs := Requests()
	var out []Result
	for round := 1; round <= o.Rounds; round++ {
		for _, server := range []string{"do-nothing", "policyd"} {
			addr, err := freeAddr()
			if err != nil {
				return nil, err
			}
			var argv []string
			if server == "policyd" {
				httpAddr, err := freeAddr()
				if err != nil {
					return nil, err
				}
				argv = []string{o.Bowline, "policyd", "--config", dir, "--grpc-addr", addr, "--http-addr", httpAddr, "--log-level", "warn"}
			} else {
				argv = []string{o.Self, NoopArg, addr}
			}
			if o.ServerCPUs != "" {
				argv = append([]string{"taskset", "-c", o.ServerCPUs}, argv...)
			}
			cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			if err := cmd.Start(); err != nil {
				return nil, fmt.Errorf("start %s: %w", server, err)
			}
			r, err := measure(ctx, addr, reqs, o, cmd.Process.Pid)
			_ = cmd.Process.Signal(os.Interrupt)
			_ = cmd.Wait()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", server, err)
			}
			r.Server, r.Round = server, round
			o.Logf("round %d %-10s %8.0f req/s  p50 %6.0fµs  p99 %6.0fµs  (%d requests, %d errors)", round, server, r.RPS,
				float64(r.P50)/1e3, float64(r.P99)/1e3, r.Requests, r.Errors)
			out = append(out, r)
		}
	}
	return out, nil
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
func measure(ctx context.Context, addr string, reqs []*authv3.CheckRequest, o Options, pid int) (Result, error) {
	conns := make([]*grpc.ClientConn, o.Callers)
	for i := range conns {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return Result{}, err
		}
		defer c.Close()
		conns[i] = c
	}
	// Ready: the request it allows is allowed (policyd has its rules).
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := authv3.NewAuthorizationClient(conns[0]).Check(cctx, reqs[0])
		cancel()
		if err == nil && codes.Code(resp.GetStatus().GetCode()) == codes.OK {
			break
		}
		if time.Now().After(deadline) {
			return Result{}, fmt.Errorf("not ready after 30s: %v", errors.Join(err, statusErr(resp)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	var (
		recording atomic.Bool
		stop      atomic.Bool
		wg        sync.WaitGroup
		lat       = make([][]time.Duration, o.Callers)
		errs      = make([]int, o.Callers)
		allowed   = make([]int, o.Callers)
	)
	for i := range o.Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := authv3.NewAuthorizationClient(conns[i])
			local := make([]time.Duration, 0, 1<<16)
			for n := i; !stop.Load(); n++ {
				start := time.Now()
				resp, err := client.Check(ctx, reqs[n%len(reqs)])
				d := time.Since(start)
				if !recording.Load() {
					continue
				}
				if err != nil {
					errs[i]++
					continue
				}
				if codes.Code(resp.GetStatus().GetCode()) == codes.OK {
					allowed[i]++
				}
				local = append(local, d)
			}
			lat[i] = local
		}()
	}
	time.Sleep(o.Warmup)
	cpu0 := processCPU(pid)
	recording.Store(true)
	start := time.Now()
	time.Sleep(o.Duration)
	recording.Store(false)
	elapsed := time.Since(start)
	cpu := processCPU(pid) - cpu0
	stop.Store(true)
	wg.Wait()
	var all []time.Duration
	r := Result{}
	for i := range o.Callers {
		all = append(all, lat[i]...)
		r.Errors += errs[i]
		r.Allowed += allowed[i]
	}
	slices.Sort(all)
	r.Requests = len(all)
	r.Denied = r.Requests - r.Allowed
	r.RPS = float64(len(all)) / elapsed.Seconds()
	if len(all) > 0 && cpu > 0 {
		r.CPUPerCheck = cpu / time.Duration(len(all))
	}
	if len(all) > 0 {
		q := func(p float64) time.Duration { return all[min(len(all)-1, int(p*float64(len(all))))] }
		r.P50, r.P90, r.P99, r.Max = q(0.50), q(0.90), q(0.99), all[len(all)-1]
	}
	return r, nil
}

func statusErr(resp *authv3.CheckResponse) error {
	if resp == nil {
		return nil
	}
	return fmt.Errorf("status %v", resp.GetStatus())
}

// processCPU is a process's user + system CPU time so far (Linux, through
// /proc; the process may be a taskset that exec'd the server: same pid).
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which is in parentheses).
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
