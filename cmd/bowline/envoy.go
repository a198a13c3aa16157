package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/bowlinemesh/bowline/xds/bootstrap"
)

// Default Nomad port labels that `bowline envoy` reads when they are set
// (NOMAD_PORT_<label>) and no flag names a port.
const (
	envoyInboundLabel = "sidecar"
	envoyLocalLabel   = "http"
	envoyAdminLabel   = "envoy_admin"
	envoyBootstrap    = "bowline-envoy.json"
)

// execEnvoy replaces the process with Envoy; tests replace it.
var execEnvoy = syscall.Exec

// envoyOptions is what `bowline envoy` resolved from its flags and the
// environment.
type envoyOptions struct {
	bootstrap.Options
	BootstrapPath string
	EnvoyBin      string
	DryRun        bool
	EnvoyArgs     []string
}

func runEnvoy(_ context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseEnvoyFlags(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	out, err := bootstrap.Envoy(o.Options)
	if err != nil {
		return err
	}
	if o.DryRun {
		_, err := stdout.Write(out)
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.BootstrapPath), 0o755); err != nil {
		return fmt.Errorf("bootstrap file: %w", err)
	}
	if err := os.WriteFile(o.BootstrapPath, out, 0o644); err != nil {
		return fmt.Errorf("bootstrap file: %w", err)
	}
	bin, err := findEnvoy(o.EnvoyBin)
	if err != nil {
		return fmt.Errorf("%w; the bootstrap is written to %s (run `envoy -c %s` where Envoy is installed)", err, o.BootstrapPath, o.BootstrapPath)
	}
	argv := append([]string{"envoy", "-c", o.BootstrapPath}, o.EnvoyArgs...)
	fmt.Fprintf(stderr, "bowline envoy: %s.%s (node %s) -> %s; exec %s %s\n", o.Service, o.Namespace, o.NodeID, o.XDSAddr, bin, strings.Join(argv[1:], " "))
	if err := execEnvoy(bin, argv, envoyEnv(os.Environ(), o.Options)); err != nil { // envoy_env.go
		return fmt.Errorf("exec %s: %w", bin, err)
	}
	return nil
}

// errEnvoyMissing reports that no Envoy binary was found.
var errEnvoyMissing = errors.New("envoy not found")

// findEnvoy returns the Envoy binary: bin (by default "envoy") as a path,
// or looked up in PATH.
func findEnvoy(bin string) (string, error) {
	bin = cmp.Or(bin, "envoy")
	p, err := exec.LookPath(bin)
	if err == nil {
		return p, nil
	}
	if strings.ContainsRune(bin, filepath.Separator) {
		return "", fmt.Errorf("%w: --envoy-bin %s is not an executable file", errEnvoyMissing, bin)
	}
	return "", fmt.Errorf("%w: no %q executable in PATH (%s); install Envoy in the task (its image or an artifact) or pass --envoy-bin", errEnvoyMissing, bin, os.Getenv("PATH"))
}

// parseEnvoyFlags resolves the options from the flags, then Nomad's task
// environment (getenv), then defaults.
func parseEnvoyFlags(args []string, getenv func(string) string, stderr io.Writer) (envoyOptions, error) {
	fs := newFlagSet("envoy", stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: bowline envoy [flags] [-- envoy flags]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Writes the Envoy bootstrap of one service instance and execs Envoy. In a Nomad")
		fmt.Fprintln(stderr, "task, the service, namespace, node id and ports come from NOMAD_* variables;")
		fmt.Fprintln(stderr, "a port flag takes a number or a Nomad port label (NOMAD_PORT_<label>).")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	var (
		o                             envoyOptions
		upstreams                     multiFlag
		inbound, local, admin, nodeID string
	)
	fs.StringVar(&o.Service, "service", "", "the workload's service name (default $NOMAD_GROUP_NAME, else $NOMAD_JOB_NAME)")
	fs.StringVar(&o.Namespace, "namespace", "", "the workload's namespace (default $NOMAD_NAMESPACE, else default)")
	fs.StringVar(&o.XDSAddr, "xds-addr", "", "address of bowline server's xDS port (default $BOWLINE_XDS_ADDR, else 127.0.0.1:15010)")
	fs.StringVar(&nodeID, "node-id", "", "node id (default <service>.<namespace>~<$NOMAD_ALLOC_ID>, or a random one outside Nomad)")
	fs.StringVar(&o.Version, "version", "", "the workload's version label (default $NOMAD_META_version)")
	fs.StringVar(&inbound, "inbound-port", "", "the sidecar's inbound port or port label (default the label \""+envoyInboundLabel+"\" when set, else from the catalog)")
	fs.StringVar(&local, "local-port", "", "the application's port or port label (default the label \""+envoyLocalLabel+"\" when set, else from the catalog)")
	fs.StringVar(&admin, "admin-port", "", "Envoy's admin port (on 127.0.0.1) or port label (default the label \""+envoyAdminLabel+"\" when set, else 19000)")
	fs.Var(&upstreams, "upstream", "an upstream as NAME:PORT, NS/NAME:PORT or NAME:LABEL (repeatable; adds to the service's declared upstreams)")
	fs.BoolVar(&o.AllServices, "all-services", false, "receive every service of the mesh, not only declared upstreams")
	fs.BoolVar(&o.Delta, "delta", false, "use incremental (delta) xDS")
	fs.StringVar(&o.BootstrapPath, "bootstrap-path", "", "where to write the bootstrap (default $NOMAD_TASK_DIR/"+envoyBootstrap+", else a temporary file)")
	fs.StringVar(&o.EnvoyBin, "envoy-bin", "", "the Envoy binary (default: envoy, looked up in PATH)")
	var tokens certFlags
	fs.StringVar(&o.Token, "token", "", "proof of the workload's identity, sent in the node metadata (default $BOWLINE_TOKEN)")
	fs.StringVar(&tokens.tokenFile, "token-file", "", "read the proof from this file, such as a Nomad workload identity (${NOMAD_SECRETS_DIR}/nomad_bowline.jwt)")
	fs.StringVar(&o.XDSCA, "xds-ca", "", "the mesh's trust bundle, to reach a server run with --xds-tls over TLS (default $BOWLINE_XDS_CA)")
	fs.BoolVar(&o.DryRun, "dry-run", false, "print the bootstrap and exit, without writing it or starting Envoy")
	fs.BoolVar(&o.DryRun, "print", false, "same as --dry-run")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	o.EnvoyArgs = fs.Args()

	o.Service = cmp.Or(o.Service, getenv("NOMAD_GROUP_NAME"), getenv("NOMAD_JOB_NAME"))
	if o.Service == "" {
		return o, errors.New("no service name: pass --service, or run in a Nomad task (NOMAD_GROUP_NAME)")
	}
	o.Namespace = cmp.Or(o.Namespace, getenv("NOMAD_NAMESPACE"), "default")
	o.XDSAddr = cmp.Or(o.XDSAddr, getenv("BOWLINE_XDS_ADDR"), "127.0.0.1:15010")
	if _, _, err := net.SplitHostPort(o.XDSAddr); err != nil {
		return o, fmt.Errorf("--xds-addr %q: %w", o.XDSAddr, err)
	}
	o.Version = cmp.Or(o.Version, getenv("NOMAD_META_version"), getenv("NOMAD_META_VERSION"))
	if tokens.tokenFile == "" {
		o.Token = cmp.Or(o.Token, getenv("BOWLINE_TOKEN"))
	}
	o.XDSCA = cmp.Or(o.XDSCA, getenv("BOWLINE_XDS_CA"))
	if err := tokens.resolve(&o.Options); err != nil { // certs.go
		return o, err
	}
	switch alloc := getenv("NOMAD_ALLOC_ID"); {
	case nodeID != "":
		o.NodeID = nodeID
	case alloc != "":
		o.NodeID = o.Service + "." + o.Namespace + "~" + alloc
	default:
		o.NodeID = defaultNodeID(o.Service, o.Namespace)
	}

	for _, p := range []struct {
		flag, value, label string
		dst                *uint32
	}{
		{"inbound-port", inbound, envoyInboundLabel, &o.InboundPort},
		{"local-port", local, envoyLocalLabel, &o.LocalPort},
		{"admin-port", admin, envoyAdminLabel, &o.AdminPort},
	} {
		v := p.value
		if v == "" {
			if getenv(portEnv(p.label)) == "" {
				continue // the catalog's or bootstrap's default
			}
			v = p.label
		}
		port, err := resolveNomadPort(v, getenv)
		if err != nil {
			return o, fmt.Errorf("--%s: %w", p.flag, err)
		}
		*p.dst = port
	}
	var ups []string
	for _, u := range upstreams {
		name, port, ok := strings.Cut(u, ":")
		if !ok || name == "" {
			return o, fmt.Errorf("--upstream %q: want NAME:PORT or NAME:LABEL", u)
		}
		n, err := resolveNomadPort(port, getenv)
		if err != nil {
			return o, fmt.Errorf("--upstream %q: %w", u, err)
		}
		ups = append(ups, name+":"+strconv.Itoa(int(n)))
	}
	o.Upstreams = strings.Join(ups, ",")

	if o.BootstrapPath == "" {
		if dir := getenv("NOMAD_TASK_DIR"); dir != "" {
			o.BootstrapPath = filepath.Join(dir, envoyBootstrap)
		} else {
			o.BootstrapPath = filepath.Join(os.TempDir(), fmt.Sprintf("bowline-envoy-%s-%d.json", o.Service, os.Getpid()))
		}
	}
	return o, nil
}

// portEnv is the variable Nomad sets for a port label: NOMAD_PORT_<label>,
// with what is not a letter, digit or underscore replaced by "_".
func portEnv(label string) string {
	return "NOMAD_PORT_" + strings.Map(func(r rune) rune {
		if r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '_'
	}, label)
}

// resolveNomadPort reads a port number, or a Nomad port label through
// NOMAD_PORT_<label> (the port as the task sees it).
func resolveNomadPort(v string, getenv func(string) string) (uint32, error) {
	if n, err := strconv.ParseUint(v, 10, 16); err == nil && n > 0 {
		return uint32(n), nil
	} else if err == nil || v == "" || v[0] >= '0' && v[0] <= '9' {
		return 0, fmt.Errorf("%q is not a port", v)
	}
	env := portEnv(v)
	s := getenv(env)
	if s == "" {
		return 0, fmt.Errorf("%s is not set: declare port %q in the group's network block, or pass a port number", env, v)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%s=%q is not a port", env, s)
	}
	return uint32(n), nil
}
