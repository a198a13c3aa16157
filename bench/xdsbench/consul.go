package xdsbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// envoyVersion is the Envoy every simulated proxy claims to be (Consul 1.14
// supports 1.21 to 1.24 and refuses others).
var envoyVersion = &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 24, Patch: 0}

// consulPeer is Consul's own xDS server: a single-server agent (as -dev, but
// with a data directory so that it keeps its catalog across the reconnect
// storm's restart), the workload registered in its catalog through /v1/txn
// on nodes other than the agent's own, every proxy a connect-proxy service
// there, proxy-defaults in transparent mode so that every proxy gets every
// service. Simulated Envoys connect as consul-dataplane does: node.id = the
// sidecar's service ID, metadata node_name = its catalog node.
type consulPeer struct {
	opts Options

	w      Workload
	gens   []int32
	dir    string
	ports  map[string]int
	proc   *proc
	client *http.Client
}

// NewConsul returns the Consul peer.
func NewConsul(o Options) Peer {
	return &consulPeer{opts: o, client: &http.Client{Timeout: 2 * time.Minute}}
}

const consulAgentNode = "xdsbench-agent"

func (c *consulPeer) Name() string        { return "consul" }
func (c *consulPeer) Protocols() []string { return []string{"delta"} }
func (c *consulPeer) XDSAddr() string     { return loopback(c.ports["grpc"]) }

// ServesOwnService: a transparent proxy's upstreams are the other services.
func (c *consulPeer) ServesOwnService() bool { return false }
func (c *consulPeer) PID() int               { return c.proc.pid() }
func (c *consulPeer) httpURL() string        { return "http://" + loopback(c.ports["http"]) }

func (c *consulPeer) Notes() []string {
	notes := []string{"Consul " + consulVersion(c.bin()) + ", one server agent (-dev's raft timings, connect on, ACLs off, data dir for the restart), plaintext gRPC port, delta ADS only",
		"proxy-defaults global Mode = transparent (every proxy gets every service); default xds update_max_per_second (250/s) and CSR rate limit (50/s)",
		"registered via /v1/txn (128 ops per call) on catalog nodes node-<j>; the changed endpoint is the sidecar of instance E-1, re-registered with a new port"}
	return notes
}

func (c *consulPeer) bin() string {
	if c.opts.ConsulBin != "" {
		return c.opts.ConsulBin
	}
	return "bin/consul"
}

func consulVersion(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "(unknown version)"
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimPrefix(strings.TrimSpace(line), "Consul ")
}

func (c *consulPeer) Launch(ctx context.Context, w Workload, gens []int32) error {
	c.w, c.gens = w, append([]int32(nil), gens...)
	if _, err := os.Stat(c.bin()); err != nil {
		return fmt.Errorf("consul binary: %w (run `make consul`)", err)
	}
	var err error
	if c.dir, err = os.MkdirTemp(c.opts.WorkDir, "consul-"); err != nil {
		return err
	}
	c.ports = map[string]int{}
	for _, name := range []string{"http", "grpc", "dns", "serf_lan", "serf_wan", "server"} {
		if c.ports[name], err = freePort(); err != nil {
			return err
		}
	}
	if err := c.writeConfig(); err != nil {
		return err
	}
	if err := c.Start(ctx); err != nil {
		return err
	}
	return c.register(ctx)
}

func (c *consulPeer) writeConfig() error {
	cfg := fmt.Sprintf(`# Written by bench/xdsbench.
node_name            = %q
datacenter           = "dc1"
data_dir             = %q
server               = true
bootstrap_expect     = 1
bind_addr            = "127.0.0.1"
advertise_addr       = "127.0.0.1"
client_addr          = "127.0.0.1"
log_level            = "WARN"
disable_update_check = true
enable_debug         = true
ui_config {
  enabled = false
}

ports {
  http     = %d
  grpc     = %d
  grpc_tls = -1
  https    = -1
  dns      = %d
  serf_lan = %d
  serf_wan = %d
  server   = %d
}

connect {
  enabled = true
}

limits {
  http_max_conns_per_client = 8192
}

performance {
  raft_multiplier = 1
}
`, consulAgentNode, filepath.Join(c.dir, "data"),
		c.ports["http"], c.ports["grpc"], c.ports["dns"], c.ports["serf_lan"], c.ports["serf_wan"], c.ports["server"])
	return os.WriteFile(filepath.Join(c.dir, "agent.hcl"), []byte(cfg), 0o644)
}

func (c *consulPeer) Start(ctx context.Context) error {
	var err error
	c.proc, err = startProc([]string{c.bin(), "agent", "-config-file", filepath.Join(c.dir, "agent.hcl")}, nil,
		filepath.Join(c.dir, "agent.log"), c.opts.ServerCPUs)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return poll(ctx, 50*time.Millisecond, func() error {
		if !c.proc.running() {
			return fmt.Errorf("consul exited (see %s)", filepath.Join(c.dir, "agent.log"))
		}
		b, err := c.do(ctx, http.MethodGet, "/v1/status/leader", nil)
		if err != nil {
			return err
		}
		if strings.Trim(strings.TrimSpace(string(b)), `"`) == "" {
			return errors.New("no leader yet")
		}
		b, err = c.do(ctx, http.MethodGet, "/v1/catalog/node/"+consulAgentNode, nil)
		if err != nil {
			return err
		}
		if !bytes.Contains(b, []byte(`"consul"`)) {
			return errors.New("agent not registered yet")
		}
		return nil
	})
}

func (c *consulPeer) Stop() error {
	c.proc.stop(30 * time.Second)
	return nil
}

func (c *consulPeer) do(ctx context.Context, method, path string, body any) ([]byte, error) {
	var r *bytes.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		r = bytes.NewReader(b)
	} else {
		r = bytes.NewReader(nil)
	}
	return httpDo(ctx, method, c.httpURL()+path, r)
}

func consulNode(j int) string { return "node-" + strconv.Itoa(j) }

// sidecarOp is the txn operation registering the sidecar of instance j of
// service k.
func (c *consulPeer) sidecarOp(k, j int) map[string]any {
	port := SidecarPort
	if j == c.w.Marker() {
		port = MarkerBase + int(c.gens[k])
	}
	return map[string]any{"Service": map[string]any{
		"Verb": "set",
		"Node": consulNode(j),
		"Service": map[string]any{
			"ID":      InstanceID(k, j) + "-sidecar-proxy",
			"Service": ServiceName(k) + "-sidecar-proxy",
			"Kind":    "connect-proxy",
			"Address": EndpointAddress(k, j),
			"Port":    port,
			"Proxy": map[string]any{
				"DestinationServiceName": ServiceName(k),
				"DestinationServiceID":   InstanceID(k, j),
				"LocalServiceAddress":    "127.0.0.1",
				"LocalServicePort":       AppPort,
			},
		},
	}}
}

// txn applies ops in transactions of at most 128 operations.
func (c *consulPeer) txn(ctx context.Context, ops []map[string]any) error {
	for len(ops) > 0 {
		n := min(len(ops), 128)
		if _, err := c.do(ctx, http.MethodPut, "/v1/txn", ops[:n]); err != nil {
			return fmt.Errorf("consul: txn: %w", err)
		}
		ops = ops[n:]
	}
	return nil
}

func (c *consulPeer) register(ctx context.Context) error {
	if _, err := c.do(ctx, http.MethodPut, "/v1/config", map[string]any{
		"Kind": "proxy-defaults", "Name": "global", "Mode": "transparent",
	}); err != nil {
		return fmt.Errorf("consul: proxy-defaults: %w", err)
	}
	var ops []map[string]any
	for j := range c.w.Endpoints {
		ops = append(ops, map[string]any{"Node": map[string]any{
			"Verb": "set",
			"Node": map[string]any{"Node": consulNode(j), "Address": fmt.Sprintf("10.255.%d.%d", j/256, j%256+1)},
		}})
	}
	for k := range c.w.Services {
		for j := range c.w.Endpoints {
			ops = append(ops, map[string]any{"Service": map[string]any{
				"Verb": "set",
				"Node": consulNode(j),
				"Service": map[string]any{
					"ID": InstanceID(k, j), "Service": ServiceName(k), "Address": EndpointAddress(k, j), "Port": AppPort,
				},
			}}, c.sidecarOp(k, j))
		}
	}
	if err := c.txn(ctx, ops); err != nil {
		return err
	}
	// Wait until the catalog lists them all.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return poll(ctx, 100*time.Millisecond, func() error {
		b, err := c.do(ctx, http.MethodGet, "/v1/catalog/services", nil)
		if err != nil {
			return err
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		if want := 2*c.w.Services + 1; len(m) < want {
			return fmt.Errorf("catalog lists %d services, want %d", len(m), want)
		}
		return nil
	})
}

func (c *consulPeer) Change(ctx context.Context, ks []int, gens []int32) (time.Time, error) {
	ops := make([]map[string]any, 0, len(ks))
	for _, k := range ks {
		c.gens[k] = gens[k]
		ops = append(ops, c.sidecarOp(k, c.w.Marker()))
	}
	at := time.Now()
	return at, c.txn(ctx, ops)
}

func (c *consulPeer) Node(i int) *core.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"node_name": consulNode(c.w.ProxyInstance(i)),
	})
	return &core.Node{
		Id:            c.w.ProxyID(i),
		Cluster:       ServiceName(c.w.ProxyService(i)),
		Metadata:      md,
		UserAgentName: "envoy",
		UserAgentVersionType: &core.Node_UserAgentBuildVersion{UserAgentBuildVersion: &core.BuildVersion{
			Version: envoyVersion,
		}},
	}
}

func (c *consulPeer) Heap(ctx context.Context) (int64, error) { return pprofHeap(ctx, c.httpURL()) }

func (c *consulPeer) Close() {
	if c.proc != nil {
		c.proc.stop(30 * time.Second)
	}
	if c.dir != "" && !c.opts.KeepWorkDir {
		os.RemoveAll(c.dir)
	}
}

// PprofURL implements PprofPeer (enable_debug is on).
func (c *consulPeer) PprofURL() string { return c.httpURL() }
