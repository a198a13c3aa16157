package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"

	"github.com/bowlinemesh/bowline/identity"
	"github.com/bowlinemesh/bowline/xds/admin"
)

const caUsage = `Usage: bowline ca roots|status|certs|rotate PHASE [--force] [--admin-addr HOST:PORT]

  roots            print the trust bundle (PEM)
  status           the roots and the state of a rotation
  certs            the unexpired certificates issued (serial, SPIFFE ID, expiry)
  rotate PHASE     run a root rotation phase: prepare, activate, finish
                   (one certificate lifetime apart; see docs/identity.md)`

func runCA(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, caUsage)
		return exitError{2}
	}
	sub := args[0]
	fs := newFlagSet("ca "+sub, stderr)
	addr := fs.String("admin-addr", envOr("BOWLINE_ADMIN_ADDR", "127.0.0.1:15014"), "address of bowline server's admin API")
	asJSON := fs.Bool("json", false, "print JSON")
	force := fs.Bool("force", false, "rotate: skip the wait between phases (an emergency)")
	fs.Usage = func() { fmt.Fprintln(stderr, caUsage); fs.PrintDefaults() }
	rest := args[1:]
	var phase string // rotate PHASE, before or after the flags
	if sub == "rotate" && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		phase, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		if sub != "rotate" || phase != "" || fs.NArg() > 1 {
			return fmt.Errorf("unexpected arguments: %v", fs.Args())
		}
		phase = fs.Arg(0)
	}
	c := newAdminClient(*addr)
	switch sub {
	case "roots":
		body, err := c.get(ctx, "/v1/ca/roots")
		if err != nil {
			return err
		}
		_, err = stdout.Write(body)
		return err
	case "status":
		body, err := c.get(ctx, "/v1/ca")
		if err != nil {
			return err
		}
		_, err = stdout.Write(body)
		return err
	case "certs":
		body, err := c.get(ctx, "/v1/certs")
		if err != nil || *asJSON {
			if err == nil {
				_, err = stdout.Write(body)
			}
			return err
		}
		var resp struct {
			Certificates []identity.IssuedCert `json:"certificates"`
		}
		if err := json.Unmarshal(body, &resp); err != nil {
			return fmt.Errorf("decode /v1/certs: %w", err)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SERIAL\tSPIFFE ID\tVIA\tNOT AFTER")
		for _, ic := range resp.Certificates {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ic.Serial, ic.SPIFFEID, ic.Via, ic.NotAfter.Format("2006-01-02T15:04:05Z07:00"))
		}
		return tw.Flush()
	case "rotate":
		if phase == "" {
			return fmt.Errorf("want one PHASE: prepare, activate or finish")
		}
		req, _ := json.Marshal(map[string]any{"phase": phase, "force": *force})
		body, err := c.post(ctx, "/v1/ca/rotate", req)
		if err != nil {
			return err
		}
		_, err = stdout.Write(body)
		return err
	}
	fmt.Fprintln(stderr, caUsage)
	return exitError{2}
}

// post sends a JSON request to the admin API.
func (c *adminClient) post(ctx context.Context, path string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e admin.APIError
		if json.Unmarshal(out, &e) == nil && e.Message != "" {
			return nil, fmt.Errorf("%s", e.Message)
		}
		return nil, fmt.Errorf("admin API at %s: %s", c.base, resp.Status)
	}
	return out, nil
}
