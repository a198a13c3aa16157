package consul

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

func TestMaxConnsFor(t *testing.T) {
	for _, c := range []struct{ limit, want int }{
		{200, 150}, // Consul's default limit
		{1100, 825},
		{4096, 3072},
		{2, 2}, // never below one for the catalog and one for services
		{0, -1},
		{-1, -1},
	} {
		if got := maxConnsFor(c.limit); got != c.want {
			t.Errorf("maxConnsFor(%d) = %d, want %d", c.limit, got, c.want)
		}
	}
}

// TestSizeConnsFromAgent serves the /v1/agent/self captured from a
// Consul 1.14.11 dev agent (testdata/agent_self.json), with the limit set
// per case, and checks the bound the source takes, and the fallback when the
// agent does not say.
func TestSizeConnsFromAgent(t *testing.T) {
	captured, err := os.ReadFile("testdata/agent_self.json")
	if err != nil {
		t.Fatal(err)
	}
	withLimit := func(limit int) string {
		var self map[string]map[string]any
		if err := json.Unmarshal(captured, &self); err != nil {
			t.Fatal(err)
		}
		self["DebugConfig"]["HTTPMaxConnsPerClient"] = limit
		b, _ := json.Marshal(self)
		return string(b)
	}
	for _, c := range []struct {
		name     string
		status   int
		body     string
		maxConns int // Config.MaxConns
		want     int
		wantConn int // the transport's MaxConnsPerHost
	}{
		{"captured (Consul's default 200)", 200, string(captured), 0, 150, 150},
		{"raised limit", 200, withLimit(1100), 0, 825, 825},
		{"no limit", 200, withLimit(0), 0, -1, 0},
		{"ACL denied", 403, "Permission denied", 0, DefaultMaxConns, DefaultMaxConns},
		{"no DebugConfig", 200, `{"Config":{}}`, 0, DefaultMaxConns, DefaultMaxConns},
		{"set by the operator: not read", 200, withLimit(1100), 40, 40, 40},
	} {
		t.Run(c.name, func(t *testing.T) {
			var selfReads int
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/v1/agent/self" {
					http.NotFound(w, r)
					return
				}
				selfReads++
				w.WriteHeader(c.status)
				_, _ = w.Write([]byte(c.body))
			}))
			defer srv.Close()
			s, err := New(Config{Address: strings.TrimPrefix(srv.URL, "http://"), MaxConns: c.maxConns}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if s.autoConns {
				s.sizeConns(context.Background())
			}
			if s.cfg.MaxConns != c.want {
				t.Errorf("MaxConns = %d, want %d", s.cfg.MaxConns, c.want)
			}
			if got := s.transport.MaxConnsPerHost; got != c.wantConn {
				t.Errorf("transport MaxConnsPerHost = %d, want %d", got, c.wantConn)
			}
			if wantReads := map[bool]int{true: 0, false: 1}[c.maxConns != 0]; selfReads != wantReads {
				t.Errorf("read /v1/agent/self %d times, want %d", selfReads, wantReads)
			}
		})
	}
}
