// Package consulagent runs a real Consul agent for tests.
//
// Start launches the binary named by BOWLINE_CONSUL_BIN, else <repo>/bin/consul
// (built by `make consul`), as a single-node server on free loopback ports,
// and waits until it has a leader and has registered itself. The agent is not
// run with -dev, whose state lives in memory: it is a normal server
// (server = true, bootstrap_expect = 1) with a data directory under
// t.TempDir(), the fastest raft timings (it elects itself in about a
// second), and connect enabled. That is
// what makes Restart useful: the agent comes back on the same ports with the
// same node ID, raft log and locally registered services and checks, so a
// client sees Consul go away and return with its state intact, as after a
// real restart. Its HTTP connection limit per client is raised to 4096 unless
// Options say otherwise, since watchers that hold one long poll per service
// exceed Consul's default of 200 with a few hundred services. ACLs are off
// unless Options.ACLManagementToken turns them on (default policy deny).
package consulagent

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// NodeName and Datacenter are those of every agent started here.
const (
	NodeName   = "bowline-test"
	Datacenter = "dc1"
)

const (
	startAttempts = 3
	readyTimeout  = 60 * time.Second
	stopTimeout   = 15 * time.Second
)

// Agent is a running (or stopped) Consul agent.
type Agent struct {
	t       testing.TB
	bin     string
	dir     string
	config  string
	logPath string
	ports   ports
	client  *http.Client
	opts    Options

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	// reserved releases the ports held while the agent is stopped
	// (reserve.go).
	reserved func()
}

type ports struct {
	HTTP, DNS, SerfLAN, SerfWAN, Server int
}

// Options tune an agent; the zero value gives what Start starts.
type Options struct {
	// HTTPMaxConnsPerClient is Consul's limits.http_max_conns_per_client:
	// 0 means 4096, a negative value leaves Consul's default (200).
	HTTPMaxConnsPerClient int
	// ACLManagementToken, when set, turns ACLs on with the default policy
	// "deny": the token (a UUID) is the initial management token and the
	// agent's own token, and the agent's readiness checks use it.
	ACLManagementToken string
}

// Start starts an agent and registers its shutdown with t.Cleanup. It fails
// the test when no Consul binary can be found.
func Start(t testing.TB) *Agent {
	t.Helper()
	return StartWith(t, Options{})
}

// StartWith is Start with options.
func StartWith(t testing.TB, o Options) *Agent {
	t.Helper()
	bin, err := binary()
	if err != nil {
		t.Fatalf("consulagent: %v", err)
	}
	dir := t.TempDir()
	a := &Agent{
		t:       t,
		bin:     bin,
		dir:     dir,
		config:  filepath.Join(dir, "agent.hcl"),
		logPath: filepath.Join(dir, "agent.log"),
		client:  &http.Client{Timeout: 5 * time.Second},
		opts:    o,
	}
	t.Cleanup(func() {
		a.Stop()
		a.release()
		if t.Failed() {
			a.logTail(60)
		}
	})
	for attempt := 1; ; attempt++ {
		// Ports picked free may be taken before the agent binds them (by
		// another test process): then try again with others.
		p, err := freePorts()
		if err != nil {
			t.Fatalf("consulagent: %v", err)
		}
		a.ports = p
		if err := a.writeConfig(); err != nil {
			t.Fatalf("consulagent: %v", err)
		}
		err = a.start()
		if err == nil {
			return a
		}
		a.Stop()
		if attempt == startAttempts {
			t.Fatalf("consulagent: start: %v", err) // the cleanup shows the log
		}
		t.Logf("consulagent: start attempt %d failed (%v); retrying on other ports", attempt, err)
		if err := os.RemoveAll(filepath.Join(a.dir, "data")); err != nil {
			t.Fatalf("consulagent: %v", err)
		}
	}
}

// Address returns the HTTP API address, "127.0.0.1:<port>".
func (a *Agent) Address() string { return "127.0.0.1:" + strconv.Itoa(a.ports.HTTP) }

// URL returns the HTTP API's base URL.
func (a *Agent) URL() string { return "http://" + a.Address() }

// Stop shuts the agent down (an interrupt, as an operator would; a kill after
// 15s) and waits for it to exit. Its data stay for Restart. Stopping a
// stopped agent does nothing.
func (a *Agent) Stop() {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-exited
	}
	a.reserve() // until Restart (reserve.go)
}

// Restart stops the agent if it runs and starts it again on the same ports
// with the same data, waiting until it is ready. Like Start, it must be called
// from the test's goroutine (it fails the test when the agent does not come
// back).
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	if err := a.start(); err != nil {
		a.t.Fatalf("consulagent: restart: %v", err) // the cleanup shows the log
	}
}

// Binary returns the path of the Consul binary the agent runs, for tests
// that use Consul's CLI against it.
func (a *Agent) Binary() string { return a.bin }

// LogPath returns the path of the agent's log file.
func (a *Agent) LogPath() string { return a.logPath }

// start launches the agent and waits until it is ready.
func (a *Agent) start() error {
	a.release()
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(a.bin, "agent", "-config-file", a.config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = a.dir
	cmd.SysProcAttr = dieWithParent()
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		// The agent is killed when the thread that started it ends (where
		// dieWithParent can arrange it), so that a test binary killed by
		// -timeout leaves no agent behind: keep this thread, and this
		// goroutine on it, until the agent exits.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("run %s: %w", a.bin, err)
	}
	a.mu.Lock()
	a.cmd, a.exited = cmd, exited
	a.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	for {
		err := a.ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("agent exited before it was ready (see %s)", a.logPath)
		case <-ctx.Done():
			return fmt.Errorf("agent not ready after %s: %w", readyTimeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ready reports nil once the agent has a leader and its node and the consul
// service are in the catalog.
func (a *Agent) ready(ctx context.Context) error {
	leader, err := a.get(ctx, "/v1/status/leader")
	if err != nil {
		return err
	}
	if s := strings.Trim(strings.TrimSpace(string(leader)), `"`); s == "" {
		return errors.New("no leader yet")
	}
	node, err := a.get(ctx, "/v1/catalog/node/"+NodeName)
	if err != nil {
		return err
	}
	if !bytes.Contains(node, []byte(`"consul"`)) {
		return errors.New("node not registered yet")
	}
	return nil
}

func (a *Agent) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.URL()+path, nil)
	if err != nil {
		return nil, err
	}
	if a.opts.ACLManagementToken != "" {
		req.Header.Set("X-Consul-Token", a.opts.ACLManagementToken)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(buf.String()))
	}
	return buf.Bytes(), nil
}

// writeConfig writes the agent's configuration for the current ports.
func (a *Agent) writeConfig() error {
	limits := ""
	if n := cmp.Or(a.opts.HTTPMaxConnsPerClient, 4096); n > 0 {
		limits = fmt.Sprintf("limits {\n  http_max_conns_per_client = %d\n}\n", n)
	}
	if t := a.opts.ACLManagementToken; t != "" {
		limits += fmt.Sprintf("acl {\n  enabled        = true\n  default_policy = \"deny\"\n  tokens {\n    initial_management = %q\n    agent              = %q\n  }\n}\n", t, t)
	}
	cfg := fmt.Sprintf(`# Written by test/consulagent.
node_name            = %q
datacenter           = %q
data_dir             = %q
server               = true
bootstrap_expect     = 1
bind_addr            = "127.0.0.1"
advertise_addr       = "127.0.0.1"
client_addr          = "127.0.0.1"
log_level            = "INFO"
disable_update_check = true

ports {
  http     = %d
  dns      = %d
  serf_lan = %d
  serf_wan = %d
  server   = %d
  grpc     = -1
  grpc_tls = -1
  https    = -1
}

connect {
  enabled = true
}

node_meta {
  zone = "zone-a"
}

%s
# As with -dev: the fastest raft timings (a lone server elects itself within
# about a second) and check output synced at once.
performance {
  raft_multiplier = 1
}
check_update_interval = "0s"
`, NodeName, Datacenter, filepath.Join(a.dir, "data"),
		a.ports.HTTP, a.ports.DNS, a.ports.SerfLAN, a.ports.SerfWAN, a.ports.Server, limits)
	if err := os.WriteFile(a.config, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// logTail logs the last n lines of the agent's log.
func (a *Agent) logTail(n int) {
	f, err := os.Open(a.logPath)
	if err != nil {
		return
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	a.t.Logf("consulagent: last lines of %s:\n%s", a.logPath, strings.Join(lines, "\n"))
}

// binary finds the Consul binary.
func binary() (string, error) {
	if bin := os.Getenv("BOWLINE_CONSUL_BIN"); bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("BOWLINE_CONSUL_BIN: %w", err)
		}
		return bin, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			bin := filepath.Join(dir, "bin", "consul")
			if _, err := os.Stat(bin); err != nil {
				return "", fmt.Errorf("no Consul binary at %s: run `make consul` (or set BOWLINE_CONSUL_BIN)", bin)
			}
			return bin, nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("no go.mod above %s to find bin/consul: set BOWLINE_CONSUL_BIN", wd)
		}
	}
}

// freePorts picks five distinct loopback ports free for TCP and UDP (serf and
// DNS use both).
func freePorts() (ports, error) {
	var held []func()
	defer func() {
		for _, release := range held {
			release()
		}
	}()
	pick := func() (int, error) {
		for range 50 {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return 0, err
			}
			port := l.Addr().(*net.TCPAddr).Port
			u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err != nil {
				l.Close()
				if errors.Is(err, syscall.EADDRINUSE) {
					continue
				}
				return 0, err
			}
			held = append(held, func() { l.Close(); u.Close() })
			return port, nil
		}
		return 0, errors.New("no free port for both TCP and UDP")
	}
	var p ports
	for _, dst := range []*int{&p.HTTP, &p.DNS, &p.SerfLAN, &p.SerfWAN, &p.Server} {
		port, err := pick()
		if err != nil {
			return ports{}, fmt.Errorf("pick port: %w", err)
		}
		*dst = port
	}
	return p, nil
}
