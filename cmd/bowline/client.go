package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bowlinemesh/bowline/xds/admin"
	"github.com/bowlinemesh/bowline/xds/server"
)

// adminClient reads a running server's admin API.
type adminClient struct {
	base string
	http *http.Client
}

func newAdminClient(addr string) *adminClient {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return &adminClient{base: strings.TrimRight(addr, "/"), http: &http.Client{Timeout: 10 * time.Second}}
}

func (c *adminClient) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e admin.APIError
		if json.Unmarshal(body, &e) == nil && e.Message != "" {
			return nil, fmt.Errorf("%s", e.Message)
		}
		return nil, fmt.Errorf("admin API at %s: %s", c.base, resp.Status)
	}
	return body, nil
}

func clientFlags(name string, args []string, stderr io.Writer, usage string) (*adminClient, []string, bool, error) {
	fs := newFlagSet(name, stderr)
	addr := fs.String("admin-addr", envOr("BOWLINE_ADMIN_ADDR", "127.0.0.1:15014"), "address of bowline server's admin API")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintln(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, nil, false, err
	}
	return newAdminClient(*addr), fs.Args(), *asJSON, nil
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, _, asJSON, err := clientFlags("status", args, stderr, "Usage: bowline status [--admin-addr HOST:PORT] [--json]")
	if err != nil {
		return err
	}
	body, err := c.get(ctx, "/v1/proxies")
	if err != nil {
		return err
	}
	if asJSON {
		_, err = stdout.Write(body)
		return err
	}
	var resp struct {
		Proxies []server.ProxyStatus `json:"proxies"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return fmt.Errorf("decode /v1/proxies: %w", err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROXY\tKIND\tSERVICE\tXDS\tLDS\tRDS\tCDS\tEDS\tLAST NACK")
	for _, p := range resp.Proxies {
		nack := "-"
		if p.LastNACK != nil {
			nack = fmt.Sprintf("%s: %s", p.LastNACK.Type, firstLine(p.LastNACK.Error))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Kind, p.Namespace, p.Service, p.Protocol,
			syncState(p, "listeners"), syncState(p, "routes"), syncState(p, "clusters"), syncState(p, "endpoints"), nack)
	}
	if len(resp.Proxies) == 0 {
		fmt.Fprintln(tw, "(no proxies connected)")
	}
	return tw.Flush()
}

// syncState shows whether a proxy ACKed the version it was sent.
func syncState(p server.ProxyStatus, typ string) string {
	sent, acked := p.Sent[typ], p.Acked[typ]
	switch {
	case sent == "":
		return "-"
	case sent == acked:
		return "SYNCED " + short(acked)
	case acked == "":
		return "SENT " + short(sent)
	default:
		return "STALE " + short(acked)
	}
}

func short(v string) string {
	if len(v) > 8 {
		return v[:8]
	}
	return v
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

func runServices(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, _, asJSON, err := clientFlags("services", args, stderr, "Usage: bowline services [--admin-addr HOST:PORT] [--json]")
	if err != nil {
		return err
	}
	body, err := c.get(ctx, "/v1/services")
	if err != nil {
		return err
	}
	if asJSON {
		_, err = stdout.Write(body)
		return err
	}
	var resp struct {
		Services []admin.ServiceSummary `json:"services"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return fmt.Errorf("decode /v1/services: %w", err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tSERVICE\tPROTOCOL\tENDPOINTS\tHEALTHY\tSOURCES")
	for _, s := range resp.Services {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", s.Namespace, s.Name, s.Protocol, s.Endpoints, s.Healthy, strings.Join(s.Sources, ","))
	}
	return tw.Flush()
}

func runConfigDump(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, rest, _, err := clientFlags("config-dump", args, stderr, "Usage: bowline config-dump [--admin-addr HOST:PORT] PROXY_ID")
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return fmt.Errorf("want exactly one PROXY_ID (see `bowline status`)")
	}
	body, err := c.get(ctx, "/v1/proxies/"+url.PathEscape(rest[0])+"/config")
	if err != nil {
		return err
	}
	_, err = stdout.Write(body)
	return err
}
