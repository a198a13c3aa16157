package meshtest

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/bowlinemesh/bowline/xds/controlplane"
)

// StartInProcess runs a control plane inside the test process, for tests
// that bring sources a subprocess cannot have (a Kubernetes fake clientset,
// say). Empty addresses get free loopback ports; Check is always on. The
// returned Server works like StartServer's (admin requests, addresses), and
// its ControlPlane field gives access to the parts.
func StartInProcess(t testing.TB, o controlplane.Options) (*Server, *controlplane.ControlPlane) {
	t.Helper()
	if o.ConfigDir == "" {
		o.ConfigDir = t.TempDir()
	}
	if o.XDSAddr == "" {
		o.XDSAddr = "127.0.0.1:0"
	}
	if o.AdminAddr == "" {
		o.AdminAddr = "127.0.0.1:0"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	o.Check = true
	cp, err := controlplane.New(o)
	if err != nil {
		t.Fatalf("meshtest: control plane: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Run(ctx) }()
	var once sync.Once
	s := &Server{XDSAddr: cp.XDSAddr(), AdminAddr: cp.AdminAddr(), ConfigDir: o.ConfigDir, stop: func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("control plane: %v", err)
			}
		})
	}}
	t.Cleanup(s.Stop)
	Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get("http://" + s.AdminAddr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s", resp.Status)
		}
		return nil
	})
	return s, cp
}

// testWriter sends log lines to t.Log until the test ends.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a log line after the test ended
	w.t.Log(string(p))
	return len(p), nil
}
