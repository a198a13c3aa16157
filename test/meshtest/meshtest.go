// Package meshtest runs Bowline for end-to-end tests the way users run it: it
// builds the bowline binary (with the race detector when the tests have it),
// starts `bowline server` on free loopback ports, starts real gRPC backends,
// and dials them through gRPC-Go's xDS resolver with a bootstrap written by
// `bowline bootstrap grpc`.
package meshtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// RepoRoot finds the module root (the directory holding go.mod).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("meshtest: go.mod not found above the working directory")
		}
		dir = parent
	}
}

// Binary builds cmd/bowline once per test process and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("BOWLINE_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bowline-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "bowline")
		args := []string{"build", "-o", buildPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		args = append(args, "./cmd/bowline")
		cmd := exec.Command("go", args...)
		cmd.Dir = RepoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("meshtest: %v", buildErr)
	}
	return buildPath
}

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Server is a running `bowline server`.
type Server struct {
	XDSAddr   string
	AdminAddr string
	ConfigDir string
	cmd       *exec.Cmd
	stop      func()
	log       *bytes.Buffer
	logMu     *sync.Mutex
	done      chan struct{}
}

// ServerOptions configure StartServer.
type ServerOptions struct {
	// ConfigDir is the configuration directory (default: a new temp dir).
	ConfigDir string
	// Args are extra flags for `bowline server`.
	Args []string
	// Env is extra environment, KEY=VALUE.
	Env []string
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// StartServer starts `bowline server` and waits until /readyz answers 200.
// The server is stopped when the test ends; its log is printed if the test
// failed.
func StartServer(t testing.TB, o ServerOptions) *Server {
	t.Helper()
	if o.ConfigDir == "" {
		o.ConfigDir = t.TempDir()
	}
	s := &Server{
		XDSAddr:   fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		AdminAddr: fmt.Sprintf("127.0.0.1:%d", FreePort(t)),
		ConfigDir: o.ConfigDir,
		log:       &bytes.Buffer{},
		logMu:     &sync.Mutex{},
		done:      make(chan struct{}),
	}
	args := append([]string{"server", "--config", o.ConfigDir, "--xds-addr", s.XDSAddr, "--admin-addr", s.AdminAddr,
		"--data-dir", filepath.Join(t.TempDir(), "data"), "--log-level", "debug"}, o.Args...)
	s.cmd = exec.Command(Binary(t), args...)
	s.cmd.Env = append(os.Environ(), o.Env...)
	w := lockedWriter{s.logMu, s.log}
	s.cmd.Stdout, s.cmd.Stderr = w, w
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("meshtest: start bowline server: %v", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("bowline server log:\n%s", s.Log())
		}
	})
	Eventually(t, 30*time.Second, func() error {
		select {
		case <-s.done:
			return fmt.Errorf("bowline server exited:\n%s", s.Log())
		default:
		}
		resp, err := http.Get("http://" + s.AdminAddr + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s", resp.Status)
		}
		return nil
	})
	return s
}

// Log returns what the server printed so far.
func (s *Server) Log() string {
	if s.logMu == nil {
		return ""
	}
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return s.log.String()
}

// Stop stops the server (SIGINT, then kill after 5s).
func (s *Server) Stop() {
	if s.stop != nil {
		s.stop()
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// GetJSON decodes an admin API response; it fails the test unless the status is 200.
func (s *Server) GetJSON(t testing.TB, path string, v any) {
	t.Helper()
	code, body := s.Get(t, path)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, code, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: decode: %v\n%s", path, err, body)
	}
}

// Get returns an admin API response's status and body.
func (s *Server) Get(t testing.TB, path string) (int, []byte) {
	t.Helper()
	resp, err := http.Get("http://" + s.AdminAddr + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, body
}

// Run runs the bowline binary with args and returns stdout, stderr and the
// exit code.
func Run(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, Binary(t), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run bowline %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return o.String(), e.String(), code
}

// WriteFile writes a config file atomically (temp file + rename), the way
// editors and configuration tools do.
func WriteFile(t testing.TB, dir, name, content string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// Eventually retries f until it returns nil or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
