package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/bowlinemesh/bowline/xds/controlplane"
)

func runServer(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		o                   controlplane.Options
		logLevel, logFormat string
	)
	fs := newFlagSet("server", stderr)
	fs.StringVar(&o.ConfigDir, "config", envOr("BOWLINE_CONFIG", "."), "directory of HCL configuration files (*.hcl, *.hcl.json)")
	fs.StringVar(&o.XDSAddr, "xds-addr", envOr("BOWLINE_XDS_ADDR", "127.0.0.1:15010"), "address of the xDS (ADS) gRPC server")
	fs.StringVar(&o.AdminAddr, "admin-addr", envOr("BOWLINE_ADMIN_ADDR", "127.0.0.1:15014"), "address of the HTTP admin API")
	fs.StringVar(&o.DataDir, "data-dir", envOr("BOWLINE_DATA_DIR", "./data"), "directory for state that must survive restarts (the CA)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	fs.DurationVar(&o.Debounce, "debounce", 10*time.Millisecond, "least time between two rebuilds of the proxies' configuration: a change after a quiet period goes out at once, later ones within this time are gathered")
	fs.BoolVar(&o.Check, "check", false, "validate every proxy configuration (ValidateAll and consistency) before serving it")
	var sans multiFlag
	fs.BoolVar(&o.XDSTLS, "xds-tls", envOr("BOWLINE_XDS_TLS", "") == "true", "serve xDS over TLS with a certificate from the mesh CA (clients trust `bowline ca roots`: bootstrap --xds-ca)")
	fs.Var(&sans, "xds-tls-san", "with --xds-tls: a further DNS name or IP address for the server certificate (repeatable; the --xds-addr host is always in)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	log, err := newLogger(stderr, logLevel, logFormat)
	if err != nil {
		return err
	}
	o.Log = log
	o.Sources = sourcesFor
	o.Attestors = attestorsFor // attestors.go
	o.XDSTLSHosts = sans
	cp, err := controlplane.New(o)
	if err != nil {
		return err
	}
	transport := "gRPC"
	if o.XDSTLS {
		transport = "gRPC, TLS"
	}
	fmt.Fprintf(stdout, "bowline server %s\n  xDS (ADS, %s):  %s\n  admin API:        http://%s\n  config directory: %s\n",
		version, transport, cp.XDSAddr(), cp.AdminAddr(), o.ConfigDir)
	return cp.Run(ctx)
}
