package main

import (
	"context"
	"fmt"
	"io"

	"github.com/bowlinemesh/bowline/policy/policyd"
)

func runPolicyd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		o                   policyd.Options
		logLevel, logFormat string
		auditLog            string
	)
	fs := newFlagSet("policyd", stderr)
	fs.StringVar(&o.ConfigDir, "config", envOr("BOWLINE_CONFIG", "."), "directory of HCL configuration files (the server's)")
	fs.StringVar(&o.GRPCAddr, "grpc-addr", envOr("BOWLINE_POLICYD_GRPC_ADDR", "127.0.0.1:15020"), "address of the gRPC port (ext_authz v3, rate limit service v3, access log service v3)")
	fs.StringVar(&o.HTTPAddr, "http-addr", envOr("BOWLINE_POLICYD_HTTP_ADDR", "127.0.0.1:15021"), "address of the dashboard (/), /healthz, /readyz, /metrics, /v1/rules, /v1/graph and /v1/signals")
	fs.StringVar(&o.RedisAddr, "redis-addr", envOr("BOWLINE_POLICYD_REDIS_ADDR", ""), "keep the rate limit counters in Redis at host:port, shared by every policyd replica given the same one (default: in memory)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	fs.StringVar(&auditLog, "audit-log", envOr("BOWLINE_POLICYD_AUDIT_LOG", ""), "append the audit log (JSON lines: denials, dry-run denials, audited allows) to this file; - for stdout")
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
	closeAudit, err := openAuditLog(auditLog, stdout, &o) // audit_log.go
	if err != nil {
		return err
	}
	defer closeAudit()
	o.Sources = sourcesFor // the same discovery sources as the server: services resolve to the same principals
	d, err := policyd.New(o)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "bowline policyd %s\n  gRPC (ext_authz v3): %s\n  HTTP:                http://%s\n  config directory:    %s\n",
		version, d.GRPCAddr(), d.HTTPAddr(), o.ConfigDir)
	return d.Run(ctx)
}
