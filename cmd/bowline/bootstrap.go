package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"strings"

	"github.com/bowlinemesh/bowline/xds/bootstrap"
)

func runBootstrap(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "grpc" && args[0] != "envoy") {
		fmt.Fprintln(stderr, "Usage: bowline bootstrap grpc|envoy --service NAME [--namespace NS] --xds-addr HOST:PORT [flags]")
		return exitError{2}
	}
	kind := args[0]
	fs := newFlagSet("bootstrap "+kind, stderr)
	var (
		o         bootstrap.Options
		upstreams multiFlag
	)
	fs.StringVar(&o.Service, "service", "", "the workload's service name (required)")
	fs.StringVar(&o.Namespace, "namespace", "default", "the workload's namespace")
	fs.StringVar(&o.XDSAddr, "xds-addr", envOr("BOWLINE_XDS_ADDR", "127.0.0.1:15010"), "address of bowline server's xDS port")
	fs.StringVar(&o.NodeID, "node-id", "", "node id (default: <service>.<namespace>~<host>~<random>)")
	fs.StringVar(&o.Version, "version", "", "the workload's version label, reported in telemetry")
	fs.BoolVar(&o.AllServices, "all-services", false, "receive every service of the mesh, not only declared upstreams")
	fs.Var(&upstreams, "upstream", "an upstream as NAME:LOCAL_PORT or NS/NAME:LOCAL_PORT (repeatable; adds to the service's declared upstreams)")
	var adminPort, inboundPort, localPort uint
	if kind == "envoy" {
		fs.UintVar(&adminPort, "admin-port", 19000, "port of Envoy's admin interface (on 127.0.0.1)")
		fs.UintVar(&inboundPort, "inbound-port", 0, "the sidecar's inbound port (default: from the catalog)")
		fs.UintVar(&localPort, "local-port", 0, "the local application's port (default: from the catalog)")
		fs.BoolVar(&o.Delta, "delta", false, "use incremental (delta) xDS")
	}
	certs := identityFlags(fs, kind, &o) // certs.go
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if o.Service == "" {
		return fmt.Errorf("--service is required")
	}
	if _, _, err := net.SplitHostPort(o.XDSAddr); err != nil {
		return fmt.Errorf("--xds-addr %q: %w", o.XDSAddr, err)
	}
	for name, v := range map[string]uint{"admin-port": adminPort, "inbound-port": inboundPort, "local-port": localPort} {
		if v > 65535 {
			return fmt.Errorf("--%s %d: not a port", name, v)
		}
	}
	o.AdminPort, o.InboundPort, o.LocalPort = uint32(adminPort), uint32(inboundPort), uint32(localPort)
	o.Upstreams = strings.Join(upstreams, ",")
	if o.NodeID == "" {
		o.NodeID = defaultNodeID(o.Service, o.Namespace)
	}
	if err := certs.resolve(&o); err != nil {
		return err
	}
	if err := certs.obtain(ctx, o, stderr); err != nil {
		return err
	}
	var (
		out []byte
		err error
	)
	if kind == "grpc" {
		out, err = bootstrap.GRPC(o)
	} else {
		out, err = bootstrap.Envoy(o)
	}
	if err != nil {
		return err
	}
	if _, err = stdout.Write(out); err != nil {
		return err
	}
	return certs.watch(ctx, o, stderr)
}

func defaultNodeID(service, namespace string) string {
	host, _ := os.Hostname()
	if host == "" {
		host = "localhost"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return service + "." + namespace + "~" + host + "~" + hex.EncodeToString(b[:])
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
