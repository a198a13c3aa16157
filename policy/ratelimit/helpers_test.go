package ratelimit

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	commonrl "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/bowlinemesh/bowline/config"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	// The start of an hour (and so of every window up to an hour).
	return &fakeClock{t: time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logBuffer collects log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) Count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

func parseConfig(t testing.TB, src string) *config.Config {
	t.Helper()
	cfg, diags := config.Parse([]config.File{{Name: "limits.hcl", Content: []byte(src)}})
	if diags.HasErrors() {
		t.Fatal(diags.Error())
	}
	return cfg
}

// serve runs srv on a loopback port until the test ends and returns its
// address and a stop function (which kills it at once).
func serve(t testing.TB, srv *Server) (string, func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String(), g.Stop
}

func dial(t testing.TB, target string, opts ...grpc.DialOption) rlsv3.RateLimitServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(target, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return rlsv3.NewRateLimitServiceClient(conn)
}

// desc builds a descriptor from key, value pairs.
func desc(kv ...string) *commonrl.RateLimitDescriptor {
	d := &commonrl.RateLimitDescriptor{}
	for i := 0; i+1 < len(kv); i += 2 {
		d.Entries = append(d.Entries, &commonrl.RateLimitDescriptor_Entry{Key: kv[i], Value: kv[i+1]})
	}
	return d
}

func request(descs ...*commonrl.RateLimitDescriptor) *rlsv3.RateLimitRequest {
	return &rlsv3.RateLimitRequest{Domain: config.RateLimitDomain, Descriptors: descs}
}

// hammer sends total requests from callers goroutines and returns how many
// were admitted (overall OK).
func hammer(t testing.TB, clients []rlsv3.RateLimitServiceClient, callers, total int, req func(i int) *rlsv3.RateLimitRequest) int {
	t.Helper()
	var (
		mu       sync.Mutex
		admitted int
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan int, total)
	for i := range total {
		next <- i
	}
	close(next)
	for c := range callers {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			cl := clients[c%len(clients)]
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				resp, err := cl.ShouldRateLimit(ctx, req(i))
				cancel()
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil && resp.GetOverallCode() == rlsv3.RateLimitResponse_OK {
					admitted++
				}
				mu.Unlock()
			}
		}(c)
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("ShouldRateLimit: %v", firstErr)
	}
	return admitted
}
