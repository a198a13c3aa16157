package consulagent

// While an agent is stopped its ports are free, and anything on the machine
// may take one before Restart: another agent picking free ports, or, more
// often, the ephemeral port of an outgoing connection (a watcher opening
// hundreds of them). The restarted agent then fails to bind. So a stopped
// agent's ports are held by sockets that are bound but do not listen: a
// client still gets "connection refused", as from a stopped agent, while the
// kernel gives the ports to no one else until start releases them.

// reserve holds the agent's ports; a.mu must not be held.
func (a *Agent) reserve() {
	release := reservePorts([]int{a.ports.HTTP, a.ports.DNS, a.ports.SerfLAN, a.ports.SerfWAN, a.ports.Server})
	a.mu.Lock()
	prev := a.reserved
	a.reserved = release
	a.mu.Unlock()
	if prev != nil {
		prev()
	}
}

// release gives the reserved ports back, if any.
func (a *Agent) release() {
	a.mu.Lock()
	release := a.reserved
	a.reserved = nil
	a.mu.Unlock()
	if release != nil {
		release()
	}
}
