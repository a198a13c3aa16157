//go:build !linux

package consulagent

import "syscall"

// dieWithParent cannot be arranged here: an agent outlives a test binary
// killed before its cleanup.
func dieWithParent() *syscall.SysProcAttr { return nil }
