// Package controlplane assembles bowline server from its parts: the config
// store and its file sources, the discovery catalog and its sources, the xDS
// server and the admin API, each on its listener, all under one errgroup. The
// binary uses it, and so do in-process tests that bring their own sources
// (a Kubernetes fake clientset, say).
package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/xds/admin"
	"github.com/bowlinemesh/bowline/xds/server"
)

// SourcesFunc returns the discovery sources and extra configuration sources
// that a startup configuration enables.
type SourcesFunc func(startup *config.Config, store *config.Store, log *slog.Logger) ([]discovery.Source, []config.FileSource, error)

// Options configure a control plane.
type Options struct {
	ConfigDir string
	XDSAddr   string
	AdminAddr string
	DataDir   string
	Debounce  time.Duration
	// Sources lists the discovery and config sources (besides the config
	// directory itself).
	Sources SourcesFunc
	// Check runs translate.Check on every proxy configuration before it is
	// served (tests).
	Check bool
	Log   *slog.Logger
	// Attestors lists the attestors that the startup configuration turns
	// on besides join tokens (identity.go); nil means join tokens only.
	Attestors AttestorsFunc
	// XDSTLS serves the xDS port over TLS with a certificate of the mesh CA
	// for the listen address and XDSTLSHosts (identity.go).
	XDSTLS      bool
	XDSTLSHosts []string
}

// ControlPlane is a listening, not yet running, bowline server.
type ControlPlane struct {
	Store   *config.Store
	Catalog *discovery.Catalog
	XDS     *server.Server
	Admin   *admin.API
	// Identity is the mesh CA (identity.go).
	Identity *identity.Authority

	opts        Options
	log         *slog.Logger
	sources     []discovery.Source
	fileSources []config.FileSource
	xdsLis      net.Listener
	adminLis    net.Listener
	grpc        *grpc.Server
	http        *http.Server
}

// New reads the startup configuration, builds every part and opens the
// listeners.
func New(opts Options) (*ControlPlane, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if st, err := os.Stat(opts.ConfigDir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("config directory %s: not a readable directory", opts.ConfigDir)
	}
	if opts.DataDir != "" {
		if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("data directory: %w", err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	cp := &ControlPlane{opts: opts, log: log}
	cp.Store = config.NewStore(log.With("component", "config"))
	cp.Catalog = discovery.NewCatalog(log.With("component", "catalog"), discovery.Options{})
	ident, err := newIdentity(opts, cp.Store, cp.Catalog, log.With("component", "identity"), reg)
	if err != nil {
		return nil, err
	}
	cp.Identity = ident
	cp.XDS = server.New(log.With("component", "xds"), server.Options{Debounce: opts.Debounce, Registerer: reg, Check: opts.Check, Identity: ident})
	cp.Admin = admin.New(log.With("component", "admin"), cp.Catalog, cp.Store, cp.XDS, reg, reg)

	startup, err := StartupConfig(opts.ConfigDir)
	if err != nil {
		return nil, err
	}
	cp.fileSources = []config.FileSource{&config.DirSource{Dir: opts.ConfigDir, Log: log.With("component", "config")}}
	if opts.Sources != nil {
		srcs, files, err := opts.Sources(startup, cp.Store, log)
		if err != nil {
			return nil, err
		}
		cp.sources = srcs
		cp.fileSources = append(cp.fileSources, files...)
	}

	if cp.xdsLis, err = net.Listen("tcp", opts.XDSAddr); err != nil {
		return nil, fmt.Errorf("xds: listen: %w", err)
	}
	if cp.adminLis, err = net.Listen("tcp", opts.AdminAddr); err != nil {
		cp.xdsLis.Close()
		return nil, fmt.Errorf("admin: listen: %w", err)
	}
	creds, err := cp.xdsCredentials() // identity.go
	if err != nil {
		cp.xdsLis.Close()
		cp.adminLis.Close()
		return nil, err
	}
	cp.grpc = grpc.NewServer(
		creds,
		grpc.MaxConcurrentStreams(1<<20),
		// A thousand proxies hold a thousand connections that are idle
		// between changes: a write buffer kept per connection would be a
		// large part of the server's memory, so writes go through a pooled
		// buffer released after each flush. The read buffer stays at
		// gRPC's 32 KiB: a state-of-the-world ACK names every endpoint
		// resource (30 KB for a thousand services), and a smaller buffer
		// costs several reads for each.
		grpc.SharedWriteBuffer(true),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	cp.XDS.Register(cp.grpc)
	cp.wireIdentity() // the signing service and the CA's admin endpoints (identity.go)
	cp.http = &http.Server{Handler: cp.Admin, ReadHeaderTimeout: 10 * time.Second}
	return cp, nil
}

// StartupConfig reads the configuration directory once, keeping the files
// that decode on their own, to learn which registries to connect to.
func StartupConfig(dir string) (*config.Config, error) {
	files, err := config.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	st := config.NewStore(slog.New(slog.DiscardHandler))
	st.Update(config.FileSet{Source: "startup", Files: files})
	return st.Current(), nil
}

// XDSAddr is the address the xDS server listens on.
func (cp *ControlPlane) XDSAddr() string { return cp.xdsLis.Addr().String() }

// AdminAddr is the address the admin API listens on.
func (cp *ControlPlane) AdminAddr() string { return cp.adminLis.Addr().String() }

// Run serves until ctx is cancelled, then shuts down gracefully.
func (cp *ControlPlane) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return cp.Store.Run(ctx, cp.fileSources...) })
	g.Go(func() error { return cp.Catalog.Run(ctx, cp.sources...) })
	g.Go(func() error { return cp.XDS.Run(ctx, cp.Catalog, cp.Store) })
	g.Go(func() error {
		if err := cp.grpc.Serve(cp.xdsLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("xds: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := cp.http.Serve(cp.adminLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		select {
		case <-cp.XDS.Ready():
			cp.log.Info("ready", "services", cp.Catalog.Snapshot().Len())
		case <-ctx.Done():
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		cp.log.Info("shutting down")
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = cp.http.Shutdown(shutdownCtx)
		stopped := make(chan struct{})
		go func() { cp.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-shutdownCtx.Done():
			cp.grpc.Stop()
		}
		return nil
	})
	return g.Wait()
}
