// Package policyd is bowline policyd: a stateless daemon that answers
// Envoy's service APIs on one gRPC port (ext_authz v3 today; rate limits and
// access logs next) and serves health, readiness, Prometheus metrics and the
// rules in force on an HTTP port.
//
// It reads the same configuration as bowline server, with the same loader
// (a rejected file keeps its last valid version in force), and follows the
// same discovery sources, so that `services = [...]` resolves to the same
// principals as in the proxies (package policy). Every decision is made by
// policy.Evaluator, which is rebuilt whenever the configuration or the
// catalog changes and swapped in atomically; nothing else is kept, so a
// restart loses nothing.
package policyd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/policy"
	"github.com/bowlinemesh/bowline/policy/ratelimit"
	"github.com/bowlinemesh/bowline/policy/telemetry"
)

// SourcesFunc returns the discovery sources and extra configuration sources
// that a startup configuration enables (cmd/bowline lists them, for the
// server and policyd alike).
type SourcesFunc func(startup *config.Config, store *config.Store, log *slog.Logger) ([]discovery.Source, []config.FileSource, error)

// Options configure policyd.
type Options struct {
	ConfigDir string
	// GRPCAddr serves ext_authz; HTTPAddr the admin endpoints.
	GRPCAddr string
	HTTPAddr string
	// Sources lists discovery and extra config sources (nil: the
	// configuration directory only, and no catalog).
	Sources SourcesFunc
	Log     *slog.Logger
	// AuditLog receives the audit log's JSON lines (nil: none; package
	// telemetry).
	AuditLog io.Writer
	// RedisAddr keeps the rate limit counters in Redis (host:port), shared
	// by every replica given the same one; "" keeps them in memory.
	RedisAddr string
}

// Daemon is a listening, not yet running, policyd.
type Daemon struct {
	Store   *config.Store
	Catalog *discovery.Catalog
	Authz   *Authz
	// Telemetry is the access log service and what it makes: metrics,
	// service graph, audit log, dashboard (package telemetry).
	Telemetry *telemetry.Service
	// RateLimit is the rate limit service (package ratelimit).
	RateLimit *ratelimit.Server
	stopRL    func()

	log         *slog.Logger
	reg         *prometheus.Registry
	sources     []discovery.Source
	fileSources []config.FileSource
	grpcLis     net.Listener
	httpLis     net.Listener
	grpc        *grpc.Server
	http        *http.Server
}

// New reads the startup configuration, builds every part and opens the
// listeners.
func New(o Options) (*Daemon, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if st, err := os.Stat(o.ConfigDir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("config directory %s: not a readable directory", o.ConfigDir)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d := &Daemon{log: log, reg: reg}
	d.Store = config.NewStore(log.With("component", "config"))
	d.Catalog = discovery.NewCatalog(log.With("component", "catalog"), discovery.Options{})
	d.Authz = NewAuthz(log.With("component", "authz"), reg)
	d.Telemetry = telemetry.New(telemetry.Options{Log: log.With("component", "telemetry"), AuditLog: o.AuditLog})
	reg.MustRegister(d.Telemetry.Collectors()...)
	d.Authz.auditor = d.Telemetry.Auditor()
	d.RateLimit, d.stopRL = newRateLimit(o.RedisAddr, log.With("component", "ratelimit"), reg) // ratelimit.go
	d.fileSources = []config.FileSource{&config.DirSource{Dir: o.ConfigDir, Log: log.With("component", "config")}}
	if o.Sources != nil {
		startup, err := startupConfig(o.ConfigDir)
		if err != nil {
			return nil, err
		}
		srcs, files, err := o.Sources(startup, d.Store, log)
		if err != nil {
			return nil, err
		}
		d.sources = srcs
		d.fileSources = append(d.fileSources, files...)
	}
	var err error
	if d.grpcLis, err = net.Listen("tcp", o.GRPCAddr); err != nil {
		return nil, fmt.Errorf("policyd: grpc listen: %w", err)
	}
	if d.httpLis, err = net.Listen("tcp", o.HTTPAddr); err != nil {
		d.grpcLis.Close()
		return nil, fmt.Errorf("policyd: http listen: %w", err)
	}
	d.grpc = grpc.NewServer(
		grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	authv3.RegisterAuthorizationServer(d.grpc, d.Authz)
	d.Telemetry.Register(d.grpc) // ALS v3
	d.RateLimit.Register(d.grpc) // RLS v3
	reg.MustRegister(&configCollector{store: d.Store})
	d.http = &http.Server{Handler: newAdmin(log, d, reg), ReadHeaderTimeout: 10 * time.Second}
	return d, nil
}

func startupConfig(dir string) (*config.Config, error) {
	files, err := config.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	st := config.NewStore(slog.New(slog.DiscardHandler))
	st.Update(config.FileSet{Source: "startup", Files: files})
	return st.Current(), nil
}

// GRPCAddr is the address ext_authz is served on.
func (d *Daemon) GRPCAddr() string { return d.grpcLis.Addr().String() }

// HTTPAddr is the address of the admin endpoints.
func (d *Daemon) HTTPAddr() string { return d.httpLis.Addr().String() }

// Run serves until ctx is cancelled, then shuts down gracefully.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.stopRL()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.Store.Run(ctx, d.fileSources...) })
	g.Go(func() error { return d.Catalog.Run(ctx, d.sources...) })
	g.Go(func() error { return d.follow(ctx) })
	g.Go(func() error { return d.Telemetry.Run(ctx) })
	g.Go(func() error {
		if err := d.grpc.Serve(d.grpcLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("policyd: grpc serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := d.http.Serve(d.httpLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("policyd: http serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		d.log.Info("shutting down")
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = d.http.Shutdown(shutdownCtx)
		stopped := make(chan struct{})
		go func() { d.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-shutdownCtx.Done():
			d.grpc.Stop()
		}
		return nil
	})
	return g.Wait()
}

// follow rebuilds the evaluator on every new configuration or catalog.
func (d *Daemon) follow(ctx context.Context) error {
	cfgs, cancelCfgs := d.Store.Subscribe()
	defer cancelCfgs()
	snaps, cancelSnaps := d.Catalog.Subscribe()
	defer cancelSnaps()
	var (
		cfg  *config.Config
		snap *discovery.Snapshot
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case cfg = <-cfgs:
		case snap = <-snaps:
		}
		d.Telemetry.Follow(cfg, snap)
		d.RateLimit.Update(cfg) // global rate limits need no catalog
		if cfg != nil && snap != nil {
			d.Authz.Update(cfg, snap)
		}
	}
}

// Ready reports whether policyd decides: it has a configuration and a
// catalog.
func (d *Daemon) Ready() bool { return d.Authz.Current() != nil }

// configCollector exports the number of rejected configuration files.
type configCollector struct{ store *config.Store }

var rejectedDesc = prometheus.NewDesc("bowline_config_rejected_files", "Configuration files whose newest version was rejected (the last valid one keeps serving).", nil, nil)

func (c *configCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rejectedDesc }

func (c *configCollector) Collect(ch chan<- prometheus.Metric) {
	n := 0
	if cfg := c.store.Current(); cfg != nil {
		n = len(cfg.Status.Rejected)
	}
	ch <- prometheus.MustNewConstMetric(rejectedDesc, prometheus.GaugeValue, float64(n))
}

// state is one evaluator with the metrics of its rules, swapped as a whole.
type state struct {
	cfg  *config.Config
	eval *policy.Evaluator
	// counters per rule: [0] allow, [1] deny; dry-run ones apart.
	counters map[*policy.Rule]*[2]prometheus.Counter
	dry      map[*policy.Rule]*[2]prometheus.Counter
	// jwt verifies the end-user tokens of the services with jwt blocks, by
	// "namespace/name".
	jwt map[string]*policy.JWTVerifier
}
