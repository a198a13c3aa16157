package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bowlinemesh/bowline/test/meshtest"
)

// servicesHCL declares greeter with the backends as v1 (first) and v2 (the rest)
// plus subsets for both.
func servicesHCL(v1 *meshtest.Backend, v2 ...*meshtest.Backend) string {
	var b strings.Builder
	b.WriteString("service \"greeter\" {\n  protocol = \"grpc\"\n")
	fmt.Fprintf(&b, "  endpoint {\n    address = \"127.0.0.1\"\n    port = %d\n    labels = { version = \"v1\" }\n  }\n", v1.Port)
	for _, be := range v2 {
		fmt.Fprintf(&b, "  endpoint {\n    address = \"127.0.0.1\"\n    port = %d\n    labels = { version = \"v2\" }\n  }\n", be.Port)
	}
	b.WriteString("}\n\nsubset \"greeter\" \"v1\" {\n  labels = { version = \"v1\" }\n}\n\nsubset \"greeter\" \"v2\" {\n  labels = { version = \"v2\" }\n}\n")
	return b.String()
}

func splitRoute(w1, w2 int) string {
	return fmt.Sprintf(`
route "greeter" {
  rule {
    match {
      header "x-canary" {
        exact = "true"
      }
    }
    destination {
      subset = "v2"
    }
  }
  rule {
    split {
      subset = "v1"
      weight = %d
    }
    split {
      subset = "v2"
      weight = %d
    }
  }
}
`, w1, w2)
}

// within reports whether got is within tol of want.
func within(got, want, tol int) bool { return got >= want-tol && got <= want+tol }

func TestCanarySplitFollowsTheRoute(t *testing.T) {
	ctx := t.Context()
	v1, v2 := meshtest.StartBackend(t, "v1"), meshtest.StartBackend(t, "v2")
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "services.hcl", servicesHCL(v1, v2))
	meshtest.WriteFile(t, dir, "route.hcl", splitRoute(90, 10))
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--check"}})
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })

	// 90/10 over 2,000 RPCs: the v2 share has a standard deviation of ~13
	// calls; ±60 is more than four of them.
	spread := c.Spread(ctx, 2000)
	t.Logf("90/10 split over 2000 RPCs: %v", spread)
	if spread["error"] > 0 || !within(spread["v2"], 200, 60) {
		t.Fatalf("90/10 split: %v", spread)
	}

	t.Run("a header match routes to v2", func(t *testing.T) {
		hctx := metadata.AppendToOutgoingContext(ctx, "x-canary", "true")
		if s := c.Spread(hctx, 100); s["v2"] != 100 {
			t.Fatalf("x-canary: true must always reach v2: %v", s)
		}
		if s := c.Spread(metadata.AppendToOutgoingContext(ctx, "x-canary", "false"), 200); s["v1"] < 140 {
			t.Fatalf("other requests follow the split: %v", s)
		}
	})

	for _, step := range []struct{ w1, w2, want2 int }{{50, 50, 1000}, {0, 100, 2000}} {
		t.Run(fmt.Sprintf("moving to %d/%d", step.w1, step.w2), func(t *testing.T) {
			start := time.Now()
			meshtest.WriteFile(t, dir, "route.hcl", splitRoute(step.w1, step.w2))
			meshtest.Eventually(t, 3*time.Second, func() error {
				s := c.Spread(ctx, 200)
				if step.w1 == 0 && s["v1"] > 0 {
					return fmt.Errorf("v1 still gets traffic: %v", s)
				}
				if step.w1 == 50 && !within(s["v2"], 100, 40) {
					return fmt.Errorf("not 50/50 yet: %v", s)
				}
				return nil
			})
			t.Logf("%d/%d took effect %s after the file was written", step.w1, step.w2, time.Since(start).Round(time.Millisecond))
			s := c.Spread(ctx, 2000)
			if s["error"] > 0 || !within(s["v2"], step.want2, 80) {
				t.Fatalf("%d/%d over 2000 RPCs: %v", step.w1, step.w2, s)
			}
		})
	}
}

func TestFaultInjection(t *testing.T) {
	ctx := t.Context()
	v1 := meshtest.StartBackend(t, "v1")
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "services.hcl", servicesHCL(v1))
	meshtest.WriteFile(t, dir, "route.hcl", `
route "greeter" {
  rule {
    match {
      header "x-delay" {
        present = true
      }
    }
    fault {
      delay {
        fixed   = "200ms"
        percent = 100
      }
    }
  }
  rule {
    fault {
      abort {
        grpc_status = "UNAVAILABLE"
        percent     = 25
      }
    }
  }
}
`)
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--check"}})
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })

	t.Run("abort returns the status at the percentage", func(t *testing.T) {
		counts := map[codes.Code]int{}
		for range 1000 {
			_, err := c.Call(ctx)
			counts[status.Code(err)]++
		}
		t.Logf("abort 25%% over 1000 RPCs: %v", counts)
		// sd of a 25% share of 1000 is ~14; ±70 is five of them.
		if !within(counts[codes.Unavailable], 250, 70) || counts[codes.OK]+counts[codes.Unavailable] != 1000 {
			t.Fatalf("want ~250 UNAVAILABLE and the rest OK: %v", counts)
		}
	})

	t.Run("a fixed delay shows in latency", func(t *testing.T) {
		dctx := metadata.AppendToOutgoingContext(ctx, "x-delay", "1")
		for range 5 {
			start := time.Now()
			if _, err := c.Call(dctx); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d < 200*time.Millisecond {
				t.Fatalf("a delayed call took %s, want at least 200ms", d)
			}
		}
		start := time.Now()
		for range 5 {
			_, _ = c.Call(ctx)
		}
		t.Logf("undelayed calls: %s each", (time.Since(start) / 5).Round(time.Microsecond))
	})
}

func TestRetriesAndTimeouts(t *testing.T) {
	ctx := t.Context()
	v1 := meshtest.StartBackend(t, "v1")
	// The backend fails every first attempt; a retry succeeds.
	v1.Handler = func(ctx context.Context, b *meshtest.Backend, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		if len(md.Get("x-slow")) > 0 {
			select {
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if len(md.Get("x-flaky")) > 0 && len(md.Get("grpc-previous-rpc-attempts")) == 0 {
			return nil, status.Error(codes.Unavailable, "first attempt fails")
		}
		return &testpb.SimpleResponse{ServerId: b.ID}, nil
	}
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "services.hcl", servicesHCL(v1))
	meshtest.WriteFile(t, dir, "defaults.hcl", `
service_defaults "greeter" {
  request_timeout = "500ms"
  retries {
    attempts = 2
    retry_on = ["unavailable"]
  }
}
`)
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--check"}})
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })

	flaky := metadata.AppendToOutgoingContext(ctx, "x-flaky", "1")
	for i := range 20 {
		if _, err := c.Call(flaky); err != nil {
			t.Fatalf("call %d: a retried call must succeed: %v", i, err)
		}
	}

	slow := metadata.AppendToOutgoingContext(ctx, "x-slow", "1")
	start := time.Now()
	_, err := c.Call(slow)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a call slower than request_timeout: err = %v, want DEADLINE_EXCEEDED", err)
	}
	t.Logf("request_timeout 500ms: the slow call failed after %s", time.Since(start).Round(time.Millisecond))

	// Without the retry policy the flaky calls fail.
	meshtest.WriteFile(t, dir, "defaults.hcl", "service_defaults \"greeter\" {\n  request_timeout = \"500ms\"\n}\n")
	meshtest.Eventually(t, 3*time.Second, func() error {
		if _, err := c.Call(flaky); status.Code(err) != codes.Unavailable {
			return fmt.Errorf("still retried: %v", err)
		}
		return nil
	})
}

func TestCircuitBreaker(t *testing.T) {
	ctx := t.Context()
	v1 := meshtest.StartBackend(t, "v1")
	release := make(chan struct{})
	v1.Handler = func(ctx context.Context, b *meshtest.Backend, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("x-hold")) > 0 {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return &testpb.SimpleResponse{ServerId: b.ID}, nil
	}
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "services.hcl", servicesHCL(v1))
	meshtest.WriteFile(t, dir, "defaults.hcl", "service_defaults \"greeter\" {\n  circuit_breaker {\n    max_requests = 1\n  }\n}\n")
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--check"}})
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })

	// One call holds the only slot; the calls beyond it fail fast.
	held := make(chan error, 1)
	go func() {
		_, err := c.Call(metadata.AppendToOutgoingContext(ctx, "x-hold", "1"))
		held <- err
	}()
	meshtest.Eventually(t, 5*time.Second, func() error {
		if v1.Calls.Load() < 2 {
			return fmt.Errorf("held call not at the backend yet")
		}
		return nil
	})
	var wg sync.WaitGroup
	results := make([]error, 5)
	start := time.Now()
	for i := range results {
		wg.Go(func() { _, results[i] = c.Call(ctx) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	for i, err := range results {
		if status.Code(err) != codes.Unavailable {
			t.Errorf("call %d beyond max_requests: %v, want UNAVAILABLE", i, err)
		}
	}
	t.Logf("5 calls beyond the breaker failed in %s", elapsed.Round(time.Millisecond))
	close(release)
	if err := <-held; err != nil {
		t.Fatalf("the call holding the slot: %v", err)
	}
	if _, err := c.Call(ctx); err != nil {
		t.Fatalf("after the slot is free: %v", err)
	}
}

func TestOutlierDetectionEjectsAFailingEndpoint(t *testing.T) {
	ctx := t.Context()
	good, bad := meshtest.StartBackend(t, "good"), meshtest.StartBackend(t, "bad")
	bad.Handler = func(context.Context, *meshtest.Backend, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
		return nil, status.Error(codes.Internal, "broken")
	}
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "services.hcl", servicesHCL(good, bad))
	meshtest.WriteFile(t, dir, "defaults.hcl", `
service_defaults "greeter" {
  outlier_detection {
    failure_percentage   = 50
    min_requests         = 5
    interval             = "200ms"
    base_ejection_time   = "30s"
    max_ejection_percent = 50
  }
}
`)
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--check"}})
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })
	start := time.Now()
	meshtest.Eventually(t, 10*time.Second, func() error {
		s := c.Spread(ctx, 40)
		if s["error"] > 0 {
			return fmt.Errorf("the failing endpoint still gets traffic: %v", s)
		}
		return nil
	})
	t.Logf("the failing endpoint was ejected %s after traffic started", time.Since(start).Round(time.Millisecond))
	if s := c.Spread(ctx, 200); s["good"] != 200 {
		t.Fatalf("after ejection all traffic goes to the healthy endpoint: %v", s)
	}
}

func TestRingHashIsSticky(t *testing.T) {
	ctx := t.Context()
	b1, b2, b3 := meshtest.StartBackend(t, "b1"), meshtest.StartBackend(t, "b2"), meshtest.StartBackend(t, "b3")
	dir := t.TempDir()
	meshtest.WriteFile(t, dir, "services.hcl", servicesHCL(b1, b2, b3))
	meshtest.WriteFile(t, dir, "defaults.hcl", `
service_defaults "greeter" {
  load_balancer {
    policy = "ring_hash"
    hash {
      header = "x-user"
    }
  }
}
`)
	srv := meshtest.StartServer(t, meshtest.ServerOptions{ConfigDir: dir, Args: []string{"--check"}})
	c := meshtest.Dial(t, srv, "client", "greeter")
	meshtest.Eventually(t, 20*time.Second, func() error { _, err := c.Call(ctx); return err })

	seen := map[string]bool{}
	for u := range 30 {
		uctx := metadata.AppendToOutgoingContext(ctx, "x-user", fmt.Sprintf("user-%d", u))
		s := c.Spread(uctx, 20)
		if len(s) != 1 || s["error"] > 0 {
			t.Fatalf("user-%d landed on several endpoints: %v", u, s)
		}
		for id := range s {
			seen[id] = true
		}
	}
	if len(seen) < 2 {
		t.Fatalf("30 users all hashed to %v: the key is not used", seen)
	}
}
