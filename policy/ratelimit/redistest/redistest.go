// Package redistest runs a real redis-server for tests: Debian's package
// (apt-get install redis-server; .ci/run installs it when missing), or the
// binary named by BOWLINE_REDIS_SERVER. Each server listens on a free
// loopback port with its own directory and no persistence, and is killed
// when the test ends. Kill and Restart reproduce an outage: the server dies
// at once (SIGKILL) and comes back on the same port, empty.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Server is a redis-server run for a test.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	port int

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	reserved net.Listener // holds the port while the server is down
}

const readyTimeout = 10 * time.Second

// Binary returns the redis-server to run, or "" when there is none.
func Binary() string {
	if p := os.Getenv("BOWLINE_REDIS_SERVER"); p != "" {
		return p
	}
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return ""
	}
	return p
}

// Start starts a redis-server and waits until it answers PING.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary()
	if bin == "" {
		t.Fatal("redistest: redis-server not found: apt-get install -y redis-server (.ci/run does), or set BOWLINE_REDIS_SERVER")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir(), port: l.Addr().(*net.TCPAddr).Port, reserved: l}
	t.Cleanup(s.Kill)
	s.Restart()
	return s
}

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Kill stops the server at once (SIGKILL) and keeps its port.
func (s *Server) Kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
	if l, err := net.Listen("tcp", s.Addr()); err == nil {
		s.reserved = l
		go refuse(l)
	}
}

// refuse closes every connection to a reserved port at once, as a dead
// server's port would refuse it.
func refuse(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.Close()
	}
}

// Restart starts the server again on its port (empty: nothing is saved)
// and waits until it answers.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return
	}
	if s.reserved != nil {
		s.reserved.Close()
		s.reserved = nil
	}
	var lastErr error
	for attempt := 0; attempt < 20; attempt++ {
		cmd := exec.Command(s.bin, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
			"--save", "", "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning")
		logf, err := os.Create(fmt.Sprintf("%s/redis-%d.log", s.dir, attempt))
		if err != nil {
			s.t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			s.t.Fatalf("redistest: start %s: %v", s.bin, err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
		if lastErr = waitReady(s.Addr(), exited); lastErr == nil {
			s.cmd, s.exited = cmd, exited
			return
		}
		_ = cmd.Process.Kill()
		<-exited
		time.Sleep(50 * time.Millisecond) // the port may be in TIME_WAIT or briefly taken
	}
	s.t.Fatalf("redistest: redis-server on %s did not start: %v", s.Addr(), lastErr)
}

// waitReady waits until the server answers PING, or exits.
func waitReady(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		if err := Ping(addr); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return err
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Ping sends PING with the inline protocol and expects PONG.
func Ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("redistest: PING answered %q", line)
	}
	return nil
}
