package xdsbench

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bowlinemesh/bowline/test/registrytest"
	"github.com/bowlinemesh/bowline/xds/server"
)

// dirPeer runs a server that reads the workload from a configuration
// directory through Bowline's file registry: Bowline itself, or the bare
// SnapshotCache baseline. Both are this program run again as a child
// (ServeIfChild), so that the server is a process of its own.
type dirPeer struct {
	kind string // serveBowline or serveSnapshotCache
	opts Options

	w        Workload
	gens     []int32
	dir      string // work directory
	cfgDir   string
	xdsPort  int
	admPort  int
	dbgPort  int
	proc     *proc
	launched bool
}

// NewBowline returns the Bowline peer: xds/controlplane, as `bowline server`
// wires it with the file registry only.
func NewBowline(o Options) Peer { return &dirPeer{kind: serveBowline, opts: o} }

// NewSnapshotCache returns the library baseline: Bowline's config store,
// file registry and catalog in front of a bare go-control-plane SnapshotCache.
func NewSnapshotCache(o Options) Peer { return &dirPeer{kind: serveSnapshotCache, opts: o} }

func (d *dirPeer) Name() string        { return d.kind }
func (d *dirPeer) Protocols() []string { return []string{"sotw", "delta"} }
func (d *dirPeer) XDSAddr() string     { return loopback(d.xdsPort) }

// ServesOwnService: an all_services sidecar receives every service, its own
// included.
func (d *dirPeer) ServesOwnService() bool { return true }
func (d *dirPeer) PID() int               { return d.proc.pid() }
func (d *dirPeer) debugURL() string       { return "http://" + loopback(d.dbgPort) }

func (d *dirPeer) Notes() []string {
	layout := "one file holding every service (a change writes it beside and renames it into place)"
	if d.opts.FilesPerService {
		layout = "one file per service (a change renames the changed services' files into place)"
	}
	source := "source: Bowline's file registry on a config directory, " + layout +
		"; a renamed file is read after the directory watch's 5 ms of quiet, and the catalog's 10 ms debounce delays only a change that follows another"
	switch d.kind {
	case serveBowline:
		return []string{"xds/controlplane wired as `bowline server` wires it (file registry only), with its ADS streams (xds/server) and 10 ms debounce (between rebuilds)", source}
	default:
		return []string{"go-control-plane v0.14 SnapshotCache (ads=true) and serverv3: on each catalog snapshot, translate.Build for every connected proxy (shared between equal node metadata) and SetSnapshot, one version number for every type", source}
	}
}

func (d *dirPeer) Launch(ctx context.Context, w Workload, gens []int32) error {
	d.w, d.gens = w, append([]int32(nil), gens...)
	var err error
	if d.dir, err = os.MkdirTemp(d.opts.WorkDir, d.kind+"-"); err != nil {
		return err
	}
	d.cfgDir = filepath.Join(d.dir, "config")
	if err := os.MkdirAll(d.cfgDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.cfgDir, "mesh.hcl"), []byte(registrytest.MeshHCL), 0o644); err != nil {
		return err
	}
	if d.opts.FilesPerService {
		for k := range w.Services {
			if err := registrytest.Rename(registrytest.File{Name: d.serviceFile(k), Content: []byte(d.serviceHCL(k))}); err != nil {
				return err
			}
		}
	} else if err := registrytest.Rename(registrytest.File{Name: filepath.Join(d.cfgDir, "services.hcl"), Content: []byte(d.allHCL())}); err != nil {
		return err
	}
	for _, p := range []*int{&d.xdsPort, &d.admPort, &d.dbgPort} {
		if *p, err = freePort(); err != nil {
			return err
		}
	}
	d.launched = true
	return d.Start(ctx)
}

func (d *dirPeer) serviceFile(k int) string {
	return filepath.Join(d.cfgDir, ServiceName(k)+".hcl")
}

func (d *dirPeer) serviceHCL(k int) string {
	return registrytest.ServiceHCL(k, d.w.Endpoints, int(d.gens[k]))
}

func (d *dirPeer) allHCL() string {
	var b strings.Builder
	for k := range d.w.Services {
		b.WriteString(d.serviceHCL(k))
	}
	return b.String()
}

func (d *dirPeer) Change(ctx context.Context, ks []int, gens []int32) (time.Time, error) {
	for _, k := range ks {
		d.gens[k] = gens[k]
	}
	if !d.opts.FilesPerService {
		content := d.allHCL()
		path := filepath.Join(d.cfgDir, "services.hcl")
		tmp := filepath.Join(d.cfgDir, ".services.hcl.tmp")
		if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
			return time.Time{}, err
		}
		at := time.Now()
		return at, os.Rename(tmp, path)
	}
	var at time.Time
	for i, k := range ks {
		path := d.serviceFile(k)
		tmp := filepath.Join(d.cfgDir, "."+filepath.Base(path)+".tmp")
		if err := os.WriteFile(tmp, []byte(d.serviceHCL(k)), 0o644); err != nil {
			return at, err
		}
		if i == 0 {
			at = time.Now()
		}
		if err := os.Rename(tmp, path); err != nil {
			return at, err
		}
	}
	return at, nil
}

func (d *dirPeer) Start(ctx context.Context) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cfg := serveConfig{
		Kind: d.kind, ConfigDir: d.cfgDir, DataDir: filepath.Join(d.dir, "data"),
		XDSAddr: d.XDSAddr(), AdminAddr: loopback(d.admPort), DebugAddr: loopback(d.dbgPort),
	}
	env, err := cfg.env()
	if err != nil {
		return err
	}
	if d.proc, err = startProc([]string{exe}, []string{env}, filepath.Join(d.dir, "server.log"), d.opts.ServerCPUs); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return poll(ctx, 20*time.Millisecond, func() error {
		if !d.proc.running() {
			return fmt.Errorf("%s exited (see %s)", d.kind, filepath.Join(d.dir, "server.log"))
		}
		_, err := httpDo(ctx, http.MethodGet, d.debugURL()+"/bench/ready?services="+strconv.Itoa(d.w.Services), nil)
		return err
	})
}

func (d *dirPeer) Stop() error {
	d.proc.stop(15 * time.Second)
	return nil
}

func (d *dirPeer) Node(i int) *core.Node {
	md, _ := structpb.NewStruct(map[string]any{
		server.MetaKind:        "envoy",
		server.MetaService:     ServiceName(d.w.ProxyService(i)),
		server.MetaNamespace:   "default",
		server.MetaInboundPort: strconv.Itoa(SidecarPort),
		server.MetaLocalPort:   strconv.Itoa(AppPort),
		server.MetaAllServices: true,
	})
	return &core.Node{
		Id:            d.w.ProxyID(i),
		Cluster:       ServiceName(d.w.ProxyService(i)),
		Metadata:      md,
		UserAgentName: "envoy",
		UserAgentVersionType: &core.Node_UserAgentBuildVersion{UserAgentBuildVersion: &core.BuildVersion{
			Version: envoyVersion,
		}},
	}
}

func (d *dirPeer) Heap(ctx context.Context) (int64, error) { return pprofHeap(ctx, d.debugURL()) }

func (d *dirPeer) StartProfile(ctx context.Context, path string) error {
	_, err := httpDo(ctx, http.MethodPost, d.debugURL()+"/bench/profile/start?path="+url.QueryEscape(path), nil)
	return err
}

func (d *dirPeer) StopProfile(ctx context.Context) error {
	_, err := httpDo(ctx, http.MethodPost, d.debugURL()+"/bench/profile/stop", nil)
	return err
}

func (d *dirPeer) Close() {
	if d.proc != nil {
		d.proc.stop(15 * time.Second)
	}
	if d.dir != "" && !d.opts.KeepWorkDir {
		os.RemoveAll(d.dir)
	}
}

// PprofURL implements PprofPeer.
func (d *dirPeer) PprofURL() string { return d.debugURL() }
