package main

import (
	"fmt"
	"io"
	"os"

	"github.com/bowlinemesh/bowline/policy/policyd"
)

// openAuditLog points policyd's audit log at path: "" for none, "-" for
// stdout, else a file opened for appending (created 0640). The returned
// function closes it.
func openAuditLog(path string, stdout io.Writer, o *policyd.Options) (func(), error) {
	switch path {
	case "":
		return func() {}, nil
	case "-":
		o.AuditLog = stdout
		return func() {}, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	o.AuditLog = f
	return func() { _ = f.Close() }, nil
}
