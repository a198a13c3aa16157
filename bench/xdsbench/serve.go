package xdsbench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	rpprof "runtime/pprof"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/bowlinemesh/bowline/adapters/file"
	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/controlplane"
)

// serveEnv carries a child's serveConfig (JSON): this program, started with
// it set, is a server under test instead of the harness.
const serveEnv = "XDSBENCH_SERVE"

const (
	serveBowline       = "bowline"
	serveSnapshotCache = "snapshotcache"
)

type serveConfig struct {
	Kind      string `json:"kind"`
	ConfigDir string `json:"config_dir"`
	DataDir   string `json:"data_dir"`
	XDSAddr   string `json:"xds_addr"`
	AdminAddr string `json:"admin_addr"`
	DebugAddr string `json:"debug_addr"`
}

func (c serveConfig) env() (string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	return serveEnv + "=" + string(b), nil
}

// ServeIfChild runs the server under test and exits when this process was
// started as one by the harness; otherwise it returns at once. Call it first
// thing in main (and in TestMain of tests that run the harness).
func ServeIfChild() {
	v := os.Getenv(serveEnv)
	if v == "" {
		return
	}
	var c serveConfig
	if err := json.Unmarshal([]byte(v), &c); err != nil {
		fmt.Fprintf(os.Stderr, "xdsbench: %s: %v\n", serveEnv, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, c); err != nil {
		fmt.Fprintf(os.Stderr, "xdsbench %s: %v\n", c.Kind, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// readiness is what a child tells the harness through /bench/ready.
type readiness interface {
	// services is the number of services served, or -1 when not ready.
	services() int
}

func serve(ctx context.Context, c serveConfig) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var (
		ready readiness
		run   func(context.Context) error
	)
	switch c.Kind {
	case serveBowline:
		cp, err := controlplane.New(controlplane.Options{
			ConfigDir: c.ConfigDir, XDSAddr: c.XDSAddr, AdminAddr: c.AdminAddr, DataDir: c.DataDir,
			Debounce: 10 * time.Millisecond, Log: log,
			Sources: func(_ *config.Config, store *config.Store, _ *slog.Logger) ([]discovery.Source, []config.FileSource, error) {
				return []discovery.Source{file.New(store)}, nil, nil
			},
		})
		if err != nil {
			return err
		}
		ready, run = bowlineReady{cp}, cp.Run
	case serveSnapshotCache:
		s, err := newSnapCacheServer(c, log)
		if err != nil {
			return err
		}
		ready, run = s, s.Run
	default:
		return fmt.Errorf("unknown kind %q", c.Kind)
	}
	dbg, err := debugServer(c.DebugAddr, ready)
	if err != nil {
		return err
	}
	defer dbg.Close()
	return run(ctx)
}

type bowlineReady struct{ cp *controlplane.ControlPlane }

func (b bowlineReady) services() int {
	select {
	case <-b.cp.XDS.Ready():
		return b.cp.Catalog.Snapshot().Len()
	default:
		return -1
	}
}

// debugServer serves net/http/pprof, /bench/ready?services=S (200 once S
// services are served) and /bench/profile/{start,stop} (a CPU profile to a
// file) on addr.
func debugServer(addr string, ready readiness) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/bench/ready", func(w http.ResponseWriter, r *http.Request) {
		want, _ := strconv.Atoi(r.URL.Query().Get("services"))
		n := ready.services()
		if n < 0 || n < want {
			http.Error(w, fmt.Sprintf("serving %d of %d services", n, want), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "%d\n", n)
	})
	var (
		mu   sync.Mutex
		prof *os.File
	)
	mux.HandleFunc("POST /bench/profile/start", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if prof != nil {
			http.Error(w, "a profile is running", http.StatusConflict)
			return
		}
		f, err := os.Create(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := rpprof.StartCPUProfile(f); err != nil {
			f.Close()
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		prof = f
	})
	mux.HandleFunc("POST /bench/profile/stop", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if prof == nil {
			http.Error(w, "no profile is running", http.StatusConflict)
			return
		}
		rpprof.StopCPUProfile()
		err := prof.Close()
		prof = nil
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("/bench/gc", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		_ = json.NewEncoder(w).Encode(map[string]uint64{"heap_alloc": m.HeapAlloc, "heap_inuse": m.HeapInuse, "sys": m.Sys})
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("debug listener: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "xdsbench: debug server: %v\n", err)
		}
	}()
	return srv, nil
}
