package rlsbench

import (
	"context"
	"testing"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/policy/ratelimit"
)

// The requests decide as the benchmark assumes: orders is never over its
// limit, tight is over after 1,000, and the do-nothing server admits all.
func TestRequestsAndConfig(t *testing.T) {
	cfg, diags := config.Parse([]config.File{{Name: "limits.hcl", Content: []byte(Config)}})
	if diags.HasErrors() || len(cfg.Warnings) != 0 {
		t.Fatalf("config: %s", diags.Error())
	}
	s := ratelimit.NewServer(ratelimit.Options{})
	s.Update(cfg)
	ctx := context.Background()
	reqs := Requests("orders", 1000)
	if len(reqs) != 1000 || reqs[999].GetDescriptors()[0].GetEntries()[1].GetValue() != "u999" {
		t.Fatalf("requests: %v", reqs[999])
	}
	for _, r := range reqs[:10] {
		resp, err := s.ShouldRateLimit(ctx, r)
		if err != nil || resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || resp.GetStatuses()[0].GetCurrentLimit() == nil {
			t.Fatalf("orders: %v %v", resp, err)
		}
	}
	tight := Requests("tight", 1)[0]
	over := 0
	for range 1100 {
		resp, err := s.ShouldRateLimit(ctx, tight)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetOverallCode() == rlsv3.RateLimitResponse_OVER_LIMIT {
			over++
		}
	}
	if over != 100 {
		t.Fatalf("tight: %d of 1100 over", over)
	}
	if resp, _ := (Noop{}).ShouldRateLimit(ctx, tight); resp.GetOverallCode() != rlsv3.RateLimitResponse_OK || len(resp.GetStatuses()) != 1 {
		t.Fatalf("noop: %v", resp)
	}
}
