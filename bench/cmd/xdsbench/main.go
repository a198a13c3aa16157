// Command xdsbench measures xDS servers with simulated Envoys: Bowline, the
// go-control-plane SnapshotCache baseline and Consul's own xDS server, on
// the same workload in the same run (see bench/README.md).
//
//	xdsbench [flags]          run a plan or one point, save JSON results, render the doc
//	xdsbench render [flags]   rewrite the doc's tables from saved results
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bowlinemesh/bowline/bench/xdsbench"
)

// resultsDir holds the results docs/PERFORMANCE.md is rendered from.
const resultsDir = "bench/results/xds"

type plan struct {
	points  []xdsbench.Workload
	peers   []string
	protos  []string
	one     int
	all     int
	out     string
	doc     string
	timeout time.Duration
}

var plans = map[string]plan{
	// quick: what `make bench` runs, a minute or two.
	"quick": {
		points: []xdsbench.Workload{{Proxies: 50, Services: 100, Endpoints: 10}},
		peers:  []string{"bowline", "snapshotcache"}, protos: []string{"sotw", "delta"},
		one: 3, all: 1, out: filepath.Join(os.TempDir(), "xdsbench-quick"), timeout: 15 * time.Minute,
	},
	// full: every point of docs/PERFORMANCE.md (Consul is left out at N =
	// 1,000 × S = 1,000, which does not fit in memory).
	"full": {
		points: []xdsbench.Workload{
			{Proxies: 100, Services: 1000, Endpoints: 10},
			{Proxies: 1000, Services: 100, Endpoints: 10},
			{Proxies: 1000, Services: 1000, Endpoints: 10},
		},
		peers: []string{"bowline", "snapshotcache", "consul"}, protos: []string{"sotw", "delta"},
		one: 5, all: 2, out: resultsDir, doc: "docs/PERFORMANCE.md", timeout: 4 * time.Hour,
	},
}

func main() {
	xdsbench.ServeIfChild()
	if len(os.Args) > 1 && os.Args[1] == "render" {
		if err := render(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "xdsbench render:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "xdsbench:", err)
		os.Exit(1)
	}
}

func render(args []string) error {
	fs := flag.NewFlagSet("render", flag.ExitOnError)
	results := fs.String("results", resultsDir, "directory of JSON results")
	doc := fs.String("doc", "docs/PERFORMANCE.md", "document whose generated section is rewritten")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rs, err := xdsbench.LoadResults(*results)
	if err != nil {
		return err
	}
	if len(rs) == 0 {
		return fmt.Errorf("no results in %s", *results)
	}
	if err := xdsbench.RenderInto(*doc, rs); err != nil {
		return err
	}
	fmt.Printf("rendered %d results from %s into %s\n", len(rs), *results, *doc)
	return nil
}

func run(args []string) error {
	fs := flag.NewFlagSet("xdsbench", flag.ExitOnError)
	var (
		planName = fs.String("plan", "", "quick (make bench) or full (every point of docs/PERFORMANCE.md); flags below override it")
		n        = fs.Int("n", 0, "proxies (a single point instead of a plan's)")
		s        = fs.Int("s", 0, "services")
		e        = fs.Int("e", 10, "endpoints per service")
		peers    = fs.String("peer", "", "peers, comma-separated: bowline, snapshotcache, consul (default: the plan's, else bowline)")
		protos   = fs.String("proto", "", "ADS variants: sotw, delta (Consul serves delta only) (default: the plan's, else both)")
		one      = fs.Int("one", 0, "one-service changes per run (default: the plan's, else 5)")
		all      = fs.Int("all", 0, "every-service changes per run (default: the plan's, else 2)")
		out      = fs.String("out", "", "directory for the JSON results (default: the plan's, else "+resultsDir+")")
		doc      = fs.String("doc", "", "document to re-render from -out after the run (full plan: docs/PERFORMANCE.md; \"none\": none)")
		pin      = fs.Bool("pin", false, "pin the server to CPU 0 and the simulated proxies to CPU 1 (taskset)")
		perFile  = fs.Bool("files-per-service", false, "Bowline and the baseline read one file per service instead of one file for all")
		consul   = fs.String("consul", "bin/consul", "Consul binary (make consul)")
		profile  = fs.String("profile", "", "directory for CPU profiles of the Bowline and baseline servers across the first one-service and every-service changes, and heap profiles of every server")
		phaseTO  = fs.Duration("phase-timeout", 10*time.Minute, "bound on each phase")
		timeout  = fs.Duration("timeout", 0, "bound on the whole run (default: the plan's, else 2h)")
		workDir  = fs.String("workdir", "", "where servers' directories go (default: the system's temporary directory)")
		keep     = fs.Bool("keep", false, "keep the servers' directories (logs, config)")
		rev      = fs.String("revision", "", "the code measured, for the results (default: git describe --dirty here)")
		quieter  = fs.Bool("keep-quieter", false, "keep a saved result of the same revision when it was measured on a quieter machine (other processes using less CPU)")
		hprof    = fs.String("harness-profile", "", "write a CPU profile of the harness (the simulated proxies) to this file")
		as       = fs.String("as", "", "name the results' peer so (e.g. bowline@15efc05, to keep another build's rows); one peer only")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	p := plan{peers: []string{"bowline"}, protos: []string{"sotw", "delta"}, one: 5, all: 2, out: resultsDir, timeout: 2 * time.Hour}
	if *planName != "" {
		var ok bool
		if p, ok = plans[*planName]; !ok {
			return fmt.Errorf("unknown plan %q (quick, full)", *planName)
		}
	}
	if *n > 0 || *s > 0 {
		if *n <= 0 || *s <= 0 {
			return errors.New("-n and -s go together")
		}
		p.points = []xdsbench.Workload{{Proxies: *n, Services: *s, Endpoints: *e}}
	}
	if len(p.points) == 0 {
		return errors.New("give -plan, or -n and -s")
	}
	if *peers != "" {
		p.peers = strings.Split(*peers, ",")
	}
	if *protos != "" {
		p.protos = strings.Split(*protos, ",")
	}
	p.one = cmpOr(*one, p.one)
	p.all = cmpOr(*all, p.all)
	if *out != "" {
		p.out = *out
	}
	switch *doc {
	case "":
	case "none":
		p.doc = ""
	default:
		p.doc = *doc
	}
	if *timeout > 0 {
		p.timeout = *timeout
	}
	if *as != "" && len(p.peers) != 1 {
		return errors.New("-as names one peer: give -peer too")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()

	o := xdsbench.Options{
		WorkDir: *workDir, KeepWorkDir: *keep, FilesPerService: *perFile, ConsulBin: *consul,
		OneRepeats: p.one, AllRepeats: p.all, PhaseTimeout: *phaseTO, ProfileDir: *profile,
		Revision: *rev, As: *as,
		Logf: func(format string, args ...any) {
			fmt.Printf("%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
		},
	}
	if *pin {
		// All of this process's threads; those started later inherit it.
		if err := exec.Command("taskset", "-a", "-p", "-c", "1", strconv.Itoa(os.Getpid())).Run(); err != nil {
			return fmt.Errorf("pin the harness: %w", err)
		}
		os.Setenv("XDSBENCH_HARNESS_CPUS", "1")
		o.ServerCPUs = "0"
	}
	for _, dir := range []string{*profile, *workDir} {
		if dir != "" {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
	}

	if *hprof != "" {
		f, err := os.Create(*hprof)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}

	var failed []string
	for _, w := range p.points {
		for _, name := range p.peers {
			if name == "consul" && w.Proxies*w.Services > 100_000 && len(p.points) > 1 {
				fmt.Printf("skipping consul at %s: about 86 MB per proxy at S = 1,000 does not fit in memory (docs/PERFORMANCE.md)\n", w)
				continue
			}
			for _, proto := range p.protos {
				peer, err := newPeer(name, o)
				if err != nil {
					return err
				}
				if !slices.Contains(peer.Protocols(), proto) {
					continue
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r, err := xdsbench.Run(ctx, peer, proto, w, o)
				if err != nil {
					failed = append(failed, fmt.Sprintf("%s/%s %s: %v", name, proto, w, err))
					fmt.Println("FAILED:", failed[len(failed)-1])
					continue
				}
				var path string
				saved := true
				if *quieter {
					path, saved, err = r.SaveIfQuieter(p.out)
				} else {
					path, err = r.Save(p.out)
				}
				if err != nil {
					return err
				}
				if saved {
					fmt.Printf("saved %s (other processes used %.0f%% of the CPU)\n", path, 100*r.Disturbance)
				} else {
					fmt.Printf("kept %s: measured on a quieter machine than this run (other processes used %.0f%% of the CPU)\n", path, 100*r.Disturbance)
				}
				if len(r.Errors) > 0 {
					failed = append(failed, fmt.Sprintf("%s/%s %s: %s", name, proto, w, strings.Join(r.Errors, "; ")))
				}
			}
		}
	}
	if p.doc != "" {
		if err := render([]string{"-results", p.out, "-doc", p.doc}); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d runs had errors:\n  %s", len(failed), strings.Join(failed, "\n  "))
	}
	return nil
}

func newPeer(name string, o xdsbench.Options) (xdsbench.Peer, error) {
	switch name {
	case "bowline":
		return xdsbench.NewBowline(o), nil
	case "snapshotcache":
		return xdsbench.NewSnapshotCache(o), nil
	case "consul":
		return xdsbench.NewConsul(o), nil
	}
	return nil, fmt.Errorf("unknown peer %q (bowline, snapshotcache, consul)", name)
}

func cmpOr(a, b int) int {
	if a > 0 {
		return a
	}
	return b
}
