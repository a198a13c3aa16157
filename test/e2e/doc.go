// Package e2e holds end-to-end tests: the real bowline binary, real gRPC
// servers and gRPC-Go's xDS client, talking over loopback.
package e2e
