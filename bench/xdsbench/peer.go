package xdsbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// Peer is an xDS server under test, run as its own process.
type Peer interface {
	// Name is "bowline", "snapshotcache" or "consul".
	Name() string
	// Protocols lists the ADS variants it serves: "sotw", "delta".
	Protocols() []string
	// Launch starts the server with the workload (every service at
	// generation gens[k]) and returns once it serves all of it.
	Launch(ctx context.Context, w Workload, gens []int32) error
	// Stop stops the server (SIGTERM, as an operator would); Start starts
	// it again with the same state and returns once it listens.
	Stop() error
	Start(ctx context.Context) error
	// Change sets services ks to generations gens[k]. The change is made
	// at the source (a file rename, a Consul transaction); it returns the
	// moment the source was changed (when the first write happened).
	Change(ctx context.Context, ks []int, gens []int32) (time.Time, error)
	// Node is the xDS node proxy i presents.
	Node(i int) *core.Node
	// ServesOwnService tells whether a proxy receives the service it
	// fronts among "every service".
	ServesOwnService() bool
	// XDSAddr is the ADS server's address.
	XDSAddr() string
	// PID is the server's process id.
	PID() int
	// Heap returns the server's live Go heap, after a forced GC.
	Heap(ctx context.Context) (int64, error)
	// Close stops everything and removes what Launch created.
	Close()
	// Notes describe how the peer runs (settings, versions).
	Notes() []string
}

// PprofPeer is a peer whose server serves net/http/pprof at PprofURL.
type PprofPeer interface {
	PprofURL() string
}

// Profiler is a peer whose server can write a CPU profile.
type Profiler interface {
	StartProfile(ctx context.Context, path string) error
	StopProfile(ctx context.Context) error
}

// proc is a server subprocess.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	log    *os.File
}

// startProc runs argv with env, output appended to logPath, pinned to cpus
// (taskset -c) when cpus is set.
func startProc(argv []string, env []string, logPath, cpus string) (*proc, error) {
	if cpus != "" {
		argv = append([]string{"taskset", "-c", cpus}, argv...)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a ^C to the harness reaches it
	// through the harness's cleanup, in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	p := &proc{cmd: cmd, exited: make(chan struct{}), log: logf}
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) pid() int {
	if p == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *proc) running() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits up to grace before killing.
func (p *proc) stop(grace time.Duration) {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// freePort returns a loopback port free right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func loopback(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

var httpClient = &http.Client{Timeout: 60 * time.Second}

func httpDo(ctx context.Context, method, url string, body io.Reader) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return b, fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// pprofHeap forces a GC in a Go server that serves net/http/pprof and reads
// its live heap (runtime.MemStats.HeapAlloc) from the text heap profile.
func pprofHeap(ctx context.Context, base string) (int64, error) {
	b, err := httpDo(ctx, http.MethodGet, base+"/debug/pprof/heap?gc=1&debug=1", nil)
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapAlloc = "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, errors.New("heap profile: no HeapAlloc line")
}

// poll calls f every interval until it returns nil or ctx ends.
func poll(ctx context.Context, interval time.Duration, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(interval):
		}
	}
}

var (
	_ PprofPeer = (*dirPeer)(nil)
	_ PprofPeer = (*consulPeer)(nil)
	_ Profiler  = (*dirPeer)(nil)
)
