package policyd

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	commonrl "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// policyd serves the rate limit service on its gRPC port, with the limits
// of its configuration directory, and follows edits.
func TestDaemonRateLimit(t *testing.T) {
	dir := t.TempDir()
	write := func(content string) {
		tmp := filepath.Join(dir, ".limits.hcl.tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "limits.hcl")); err != nil {
			t.Fatal(err)
		}
	}
	limits := func(n string) string {
		return "rate_limit \"orders\" {\n  global {\n    requests = " + n + "\n    per      = \"1h\"\n    by       = [\"request.headers[x-user]\"]\n  }\n}\n"
	}
	write(limits("2"))
	d, err := New(Options{ConfigDir: dir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	conn, err := grpc.NewClient(d.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := rlsv3.NewRateLimitServiceClient(conn)
	call := func(user string) rlsv3.RateLimitResponse_Code {
		resp, err := client.ShouldRateLimit(ctx, &rlsv3.RateLimitRequest{Domain: "bowline", Descriptors: []*commonrl.RateLimitDescriptor{{
			Entries: []*commonrl.RateLimitDescriptor_Entry{{Key: "destination", Value: "default/orders"}, {Key: "header:x-user", Value: user}}}}})
		if err != nil {
			return rlsv3.RateLimitResponse_UNKNOWN
		}
		return resp.GetOverallCode()
	}
	// UNAVAILABLE (UNKNOWN here) until the configuration is loaded.
	eventually(t, func() error {
		if call("probe") == rlsv3.RateLimitResponse_UNKNOWN {
			return io.EOF
		}
		return nil
	})
	if got := []rlsv3.RateLimitResponse_Code{call("a"), call("a"), call("a")}; got[2] != rlsv3.RateLimitResponse_OVER_LIMIT || got[1] != rlsv3.RateLimitResponse_OK {
		t.Fatalf("2 per hour: %v", got)
	}
	// An edit raises the limit; the counter is kept (the limit's ID stays).
	write(limits("4"))
	eventually(t, func() error {
		if call("b") == rlsv3.RateLimitResponse_OK && call("a") == rlsv3.RateLimitResponse_OK {
			return nil
		}
		return io.EOF
	})
	resp, err := http.Get("http://" + d.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(b), `bowline_policyd_ratelimit_decisions_total{limit="default/orders/0",result="over_limit"}`) {
		t.Fatalf("metrics lack the rate limit decisions:\n%s", b)
	}
}
