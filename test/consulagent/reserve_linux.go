package consulagent

import "syscall"

// reservePorts binds a TCP socket (without listening) and a UDP socket to
// each loopback port, where it can; the returned function closes them. A
// bound socket keeps the kernel from choosing its port as an ephemeral port
// and makes other agents' free-port checks (TCP and UDP) skip it.
func reservePorts(ports []int) func() {
	var fds []int
	for _, port := range ports {
		for _, typ := range []int{syscall.SOCK_STREAM, syscall.SOCK_DGRAM} {
			fd, err := syscall.Socket(syscall.AF_INET, typ|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				continue
			}
			if typ == syscall.SOCK_STREAM {
				// The agent's connections may linger in TIME_WAIT.
				_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			}
			if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
				syscall.Close(fd)
				continue
			}
			fds = append(fds, fd)
		}
	}
	return func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}
}
