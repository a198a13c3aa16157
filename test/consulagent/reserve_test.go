//go:build linux

package consulagent

import (
	"errors"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestStoppedAgentHoldsItsPorts: while stopped, the agent's ports refuse
// connections (as a stopped agent's do) but cannot be taken by anyone else;
// Restart gets them back.
func TestStoppedAgentHoldsItsPorts(t *testing.T) {
	a := Start(t)
	a.Stop()
	conn, err := net.DialTimeout("tcp", a.Address(), 2*time.Second)
	if err == nil {
		conn.Close()
		t.Fatal("a stopped agent's HTTP port accepts connections")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial a stopped agent: %v, want connection refused", err)
	}
	for _, port := range []int{a.ports.HTTP, a.ports.DNS, a.ports.SerfLAN, a.ports.SerfWAN, a.ports.Server} {
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			pc.Close()
			t.Errorf("port %d of a stopped agent could be taken (UDP)", port)
		}
	}
	a.Restart()
	if _, err := a.get(t.Context(), "/v1/status/leader"); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}
