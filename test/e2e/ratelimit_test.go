package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	commonrl "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/bowlinemesh/bowline/policy/ratelimit/redistest"
	"github.com/bowlinemesh/bowline/test/meshtest"
)

// The rate limits of the replica tests: orders lets requests through when
// the limits cannot be decided, payments refuses them. Every phase counts
// under its own x-run value, so that it starts from fresh counters.
const rateLimitHCL = `
service "orders" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8080
    sidecar_port = 21000
  }
}
service "payments" {
  protocol = "http"
  endpoint {
    address      = "127.0.0.1"
    port         = 8081
    sidecar_port = 21001
  }
}
rate_limit "orders" {
  global {
    requests = 1000
    per      = "1h"
    by       = ["request.headers[\"x-run\"]"]
  }
}
rate_limit "payments" {
  on_error = "deny"
  global {
    requests = 20
    per      = "1h"
    by       = ["request.headers[\"x-run\"]"]
  }
}
`

// rlPolicyd is a `bowline policyd --redis-addr` subprocess.
type rlPolicyd struct {
	grpcAddr, httpAddr string
	cmd                *exec.Cmd
	mu                 sync.Mutex
	log                bytes.Buffer
	done               chan struct{}
}

func (p *rlPolicyd) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.Write(b)
}

func (p *rlPolicyd) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// Kill stops the replica at once (SIGKILL), as a crash would.
func (p *rlPolicyd) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func startRLPolicyd(t *testing.T, dir, redisAddr string) *rlPolicyd {
	t.Helper()
	p := &rlPolicyd{
		grpcAddr: fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort(t)),
		httpAddr: fmt.Sprintf("127.0.0.1:%d", meshtest.FreePort(t)),
		done:     make(chan struct{}),
	}
	p.cmd = exec.Command(meshtest.Binary(t), "policyd", "--config", dir, "--grpc-addr", p.grpcAddr,
		"--http-addr", p.httpAddr, "--redis-addr", redisAddr)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start bowline policyd: %v", err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("bowline policyd %s log:\n%s", p.grpcAddr, p.Log())
		}
	})
	meshtest.Eventually(t, 60*time.Second, func() error {
		select {
		case <-p.done:
			return fmt.Errorf("bowline policyd exited:\n%s", p.Log())
		default:
		}
		resp, err := http.Get("http://" + p.httpAddr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s", resp.Status)
		}
		return nil
	})
	return p
}

func (p *rlPolicyd) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + p.httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func rlClient(t *testing.T, target string, opts ...grpc.DialOption) rlsv3.RateLimitServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return rlsv3.NewRateLimitServiceClient(conn)
}

// rlRequest is what a sidecar of service sends (the wire contract,
// policy/ratelimit/doc.go) for a request with header x-run: run.
func rlRequest(service, run string) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{Domain: "bowline", Descriptors: []*commonrl.RateLimitDescriptor{{Entries: []*commonrl.RateLimitDescriptor_Entry{
		{Key: "destination", Value: "default/" + service}, {Key: "header:x-run", Value: run},
	}}}}
}

// spread sends total requests from 16 callers, caller i through
// clients[i%len(clients)], and counts the answers by code ("error" for a
// failed call). during, if set, runs once, after total/3 requests.
func spread(clients []rlsv3.RateLimitServiceClient, total int, req func() *rlsv3.RateLimitRequest, during func()) map[string]int {
	var (
		mu   sync.Mutex
		got  = map[string]int{}
		wg   sync.WaitGroup
		once sync.Once
		next = make(chan int, total)
	)
	for i := range total {
		next <- i
	}
	close(next)
	for c := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if during != nil && i >= total/3 {
					once.Do(during)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := clients[c%len(clients)].ShouldRateLimit(ctx, req())
				cancel()
				k := "error"
				if err == nil {
					k = resp.GetOverallCode().String()
				}
				mu.Lock()
				got[k]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return got
}

// inOneWindow runs f until it ran within one hour window (limits of 1h
// count in windows aligned to the hour; a run across the boundary would
// count in two), at most three times. f gets the attempt's x-run value.
func inOneWindow(t *testing.T, name string, f func(run string) map[string]int) map[string]int {
	t.Helper()
	for attempt := range 3 {
		start := time.Now().Truncate(time.Hour)
		got := f(fmt.Sprintf("%s-%d-%d", name, time.Now().UnixNano(), attempt))
		if time.Now().Truncate(time.Hour).Equal(start) {
			return got
		}
	}
	t.Fatal("three runs in a row crossed an hour boundary")
	return nil
}

// Two replicas of bowline policyd share their counters through one real
// Redis: callers spread over both are admitted the limit between them; a
// replica killed mid-load leaves the other answering; Redis killed mid-run
// makes on_error decide, and limits are enforced again once it is back.
func TestRateLimitReplicasByBinary(t *testing.T) {
	rs := redistest.Start(t)
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "limits.hcl", rateLimitHCL)
	p1 := startRLPolicyd(t, dir, rs.Addr())
	p2 := startRLPolicyd(t, dir, rs.Addr())
	both := []rlsv3.RateLimitServiceClient{rlClient(t, p1.grpcAddr), rlClient(t, p2.grpcAddr)}

	// 3,000 requests against 1,000 per hour, spread over both replicas.
	got := inOneWindow(t, "spread", func(run string) map[string]int {
		return spread(both, 3000, func() *rlsv3.RateLimitRequest { return rlRequest("orders", run) }, nil)
	})
	if got["OK"] < 1000 || got["OK"] > 1010 || got["error"] != 0 {
		t.Fatalf("two replicas on one Redis: %v (want 1,000 OK, at most 1%% more)", got)
	}

	// Redis killed mid-run: orders (on_error allow) goes through, payments
	// (on_error deny) is refused; each replica logs the outage once.
	got = inOneWindow(t, "outage", func(run string) map[string]int {
		rs.Kill()
		defer rs.Restart()
		out := spread(both, 400, func() *rlsv3.RateLimitRequest { return rlRequest("orders", run) }, nil)
		for k, v := range spread(both, 400, func() *rlsv3.RateLimitRequest { return rlRequest("payments", run) }, nil) {
			out["payments "+k] += v
		}
		return out
	})
	if got["OK"] != 400 || got["payments OVER_LIMIT"] != 400 || len(got) != 2 {
		t.Fatalf("decisions while Redis was down: %v", got)
	}
	for _, p := range []*rlPolicyd{p1, p2} {
		if n := strings.Count(p.Log(), "does not answer"); n != 1 {
			t.Fatalf("replica %s logged the outage %d times:\n%s", p.grpcAddr, n, p.Log())
		}
		if m := p.metrics(t); !strings.Contains(m, `bowline_policyd_ratelimit_store_errors_total{store="redis"}`) ||
			!strings.Contains(m, `bowline_policyd_ratelimit_decisions_total{limit="default/payments/0",result="error_deny"}`) {
			t.Fatalf("replica %s metrics lack the outage:\n%s", p.grpcAddr, m)
		}
	}
	// Redis back (restarted, empty): limits are enforced again, without a
	// restart of policyd.
	meshtest.Eventually(t, 30*time.Second, func() error {
		resp, err := both[0].ShouldRateLimit(context.Background(), rlRequest("payments", "probe"))
		if err != nil || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK {
			return fmt.Errorf("not counting yet: %v %v", resp.GetOverallCode(), err)
		}
		return nil
	})
	got = inOneWindow(t, "after", func(run string) map[string]int {
		return spread(both, 100, func() *rlsv3.RateLimitRequest { return rlRequest("payments", run) }, nil)
	})
	if got["OK"] != 20 || got["OVER_LIMIT"] != 80 {
		t.Fatalf("after Redis came back: %v (want 20 OK)", got)
	}

	// A replica killed mid-load: one client over both, as Envoy's policyd
	// cluster lists every replica; the other keeps answering.
	r := manual.NewBuilderWithScheme("policyd")
	r.InitialState(resolver.State{Addresses: []resolver.Address{{Addr: p1.grpcAddr}, {Addr: p2.grpcAddr}}})
	rr := rlClient(t, r.Scheme()+":///replicas", grpc.WithResolvers(r), grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin":{}}]}`))
	got = inOneWindow(t, "kill", func(run string) map[string]int {
		return spread([]rlsv3.RateLimitServiceClient{rr}, 3000, func() *rlsv3.RateLimitRequest { return rlRequest("orders", run) }, p1.Kill)
	})
	// Calls in flight on the killed replica may fail (Envoy applies
	// on_error to them); all the others are answered by the survivor.
	if got["error"] > 16 || got["OK"] > 1010 || got["OK"] < 1000-got["error"] || got["OK"]+got["OVER_LIMIT"]+got["error"] != 3000 {
		t.Fatalf("with one replica killed mid-load: %v", got)
	}
}
