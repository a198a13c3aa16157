package main

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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/bowlinemesh/bowline/config"
	"github.com/bowlinemesh/bowline/discovery"
	"github.com/bowlinemesh/bowline/xds/admin"
	"github.com/bowlinemesh/bowline/xds/server"
)

type serverFlags struct {
	configDir string
	xdsAddr   string
	adminAddr string
	dataDir   string
	logLevel  string
	logFormat string
	debounce  time.Duration
}

func runServer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f serverFlags
	fs := newFlagSet("server", stderr)
	fs.StringVar(&f.configDir, "config", envOr("BOWLINE_CONFIG", "."), "directory of HCL configuration files (*.hcl, *.hcl.json)")
	fs.StringVar(&f.xdsAddr, "xds-addr", envOr("BOWLINE_XDS_ADDR", "127.0.0.1:15010"), "address of the xDS (ADS) gRPC server")
	fs.StringVar(&f.adminAddr, "admin-addr", envOr("BOWLINE_ADMIN_ADDR", "127.0.0.1:15014"), "address of the HTTP admin API")
	fs.StringVar(&f.dataDir, "data-dir", envOr("BOWLINE_DATA_DIR", "./data"), "directory for state that must survive restarts (the CA)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fs.DurationVar(&f.debounce, "debounce", 10*time.Millisecond, "how long changes are gathered before proxies are updated")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	log, err := newLogger(stderr, f.logLevel, f.logFormat)
	if err != nil {
		return err
	}
	return serve(ctx, f, log, stdout)
}

// startupConfig reads the configuration directory once, keeping the files
// that decode on their own, to learn which registries to connect to.
func startupConfig(dir string) (*config.Config, error) {
	files, err := config.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	st := config.NewStore(slog.New(slog.DiscardHandler))
	st.Update(config.FileSet{Source: "startup", Files: files})
	return st.Current(), nil
}

func serve(ctx context.Context, f serverFlags, log *slog.Logger, stdout io.Writer) error {
	if st, err := os.Stat(f.configDir); err != nil || !st.IsDir() {
		return fmt.Errorf("--config %s: not a readable directory", f.configDir)
	}
	if err := os.MkdirAll(f.dataDir, 0o700); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	store := config.NewStore(log.With("component", "config"))
	catalog := discovery.NewCatalog(log.With("component", "catalog"), discovery.Options{})
	xds := server.New(log.With("component", "xds"), server.Options{Debounce: f.debounce, Registerer: reg})
	api := admin.New(log.With("component", "admin"), catalog, store, xds, reg, reg)

	// The registry blocks of the startup configuration decide which
	// adapters run (sources.go lists them).
	dirSource := &config.DirSource{Dir: f.configDir, Log: log.With("component", "config")}
	startup, err := startupConfig(f.configDir)
	if err != nil {
		return err
	}
	sources, extraFiles, err := sourcesFor(startup, store, log)
	if err != nil {
		return err
	}
	fileSources := append([]config.FileSource{dirSource}, extraFiles...)

	xdsLis, err := net.Listen("tcp", f.xdsAddr)
	if err != nil {
		return fmt.Errorf("xds: listen: %w", err)
	}
	adminLis, err := net.Listen("tcp", f.adminAddr)
	if err != nil {
		xdsLis.Close()
		return fmt.Errorf("admin: listen: %w", err)
	}
	grpcServer := grpc.NewServer(
		grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	)
	xds.Register(grpcServer)
	httpServer := &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second}

	fmt.Fprintf(stdout, "bowline server %s\n  xDS (ADS, gRPC):  %s\n  admin API:        http://%s\n  config directory: %s\n",
		version, xdsLis.Addr(), adminLis.Addr(), f.configDir)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return store.Run(ctx, fileSources...) })
	g.Go(func() error { return catalog.Run(ctx, sources...) })
	g.Go(func() error { return xds.Run(ctx, catalog, store) })
	g.Go(func() error {
		if err := grpcServer.Serve(xdsLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("xds: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := httpServer.Serve(adminLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("admin: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		select {
		case <-xds.Ready():
			log.Info("ready", "services", catalog.Snapshot().Len())
		case <-ctx.Done():
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		log.Info("shutting down")
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = httpServer.Shutdown(shutdownCtx)
		stopped := make(chan struct{})
		go func() { grpcServer.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-shutdownCtx.Done():
			grpcServer.Stop()
		}
		return nil
	})
	return g.Wait()
}
