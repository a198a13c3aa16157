package attest_test

import (
	"encoding/pem"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// pemBlock returns the DER bytes of a PEM document's first block.
func pemBlock(t *testing.T, b []byte) []byte {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatal("no PEM block")
	}
	return blk.Bytes
}

// failures reads bowline_identity_attestation_failures_total{via, reason}
// from a registry (0 when never counted).
func failures(t *testing.T, reg *prometheus.Registry, via, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "bowline_identity_attestation_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["via"] == via && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
