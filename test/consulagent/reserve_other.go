//go:build !linux

package consulagent

// reservePorts does nothing here: a stopped agent's ports may be taken
// before Restart.
func reservePorts([]int) func() { return func() {} }
