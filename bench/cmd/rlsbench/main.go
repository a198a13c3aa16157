// Command rlsbench measures bowline policyd's rate limit service next to a
// do-nothing RLS server (docs/PERFORMANCE.md, "policyd: rate limit
// service"). The servers, and Redis, run pinned to one core
// (-server-cpus); the callers run on the other cores (-pin).
//
//	go run ./bench/cmd/rlsbench -pin -out bench/results/ratelimit.json
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bowlinemesh/bowline/bench/rlsbench"
	"github.com/bowlinemesh/bowline/policy/ratelimit/redistest"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == rlsbench.NoopArg {
		if err := rlsbench.ServeNoop(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "noop RLS:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "rlsbench:", err)
		os.Exit(1)
	}
}

func run() error {
	var o rlsbench.Options
	bowline := flag.String("bowline", "", "the bowline binary (default: built from this module)")
	flag.IntVar(&o.Callers, "callers", 16, "concurrent callers, one connection each")
	flag.DurationVar(&o.Warmup, "warmup", 2*time.Second, "warmup before each measurement")
	flag.DurationVar(&o.Duration, "duration", 10*time.Second, "length of each measurement")
	flag.IntVar(&o.Rounds, "rounds", 3, "times the plan is measured")
	flag.StringVar(&o.ServerCPUs, "server-cpus", "0", "CPUs the servers and Redis are pinned to (taskset -c); empty: not pinned")
	only := flag.String("only", "", "comma-separated servers to measure (do-nothing, memory, redis); default: all")
	over := flag.Bool("over", false, "also measure requests over their limit (answered from the over-limit cache)")
	pin := flag.Bool("pin", false, "pin the callers to every CPU but the servers' (Linux)")
	out := flag.String("out", "", "write the results as JSON here")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *pin {
		if err := pinAway(o.ServerCPUs); err != nil {
			return err
		}
	}
	o.Scenarios = rlsbench.Plan
	if *over {
		o.Scenarios = append(slices.Clone(o.Scenarios), rlsbench.OverPlan...)
	}
	if *only != "" {
		keep := strings.Split(*only, ",")
		o.Scenarios = slices.DeleteFunc(slices.Clone(o.Scenarios), func(s rlsbench.Scenario) bool { return !slices.Contains(keep, s.Server) })
	}
	if o.RedisServer = redistest.Binary(); o.RedisServer == "" {
		return fmt.Errorf("redis-server not found: apt-get install -y redis-server, or set BOWLINE_REDIS_SERVER")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o.Self, o.Bowline = self, *bowline
	if o.Bowline == "" {
		dir, err := os.MkdirTemp("", "rlsbench-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.Bowline = filepath.Join(dir, "bowline")
		cmd := exec.Command("go", "build", "-o", o.Bowline, "./cmd/bowline")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/bowline (run from the module root, or pass -bowline): %w", err)
		}
	}
	o.Logf = func(f string, args ...any) { fmt.Fprintf(os.Stderr, f+"\n", args...) }
	fmt.Fprintf(os.Stderr, "servers and Redis on CPU %q, callers on %d CPU(s) (GOMAXPROCS %d), %d callers\n", o.ServerCPUs, runtime.NumCPU(), runtime.GOMAXPROCS(0), o.Callers)
	results, err := rlsbench.Run(ctx, o)
	if err != nil {
		return err
	}
	printTable(results)
	if *out != "" {
		b, err := json.MarshalIndent(map[string]any{"options": map[string]any{"callers": o.Callers, "warmup": o.Warmup.String(),
			"duration": o.Duration.String(), "rounds": o.Rounds, "server_cpus": o.ServerCPUs, "machine_cpus": runtime.NumCPU(),
			"at": time.Now().UTC()}, "results": results}, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// pinAway pins this process to every CPU not in cpus.
func pinAway(cpus string) error {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return err
	}
	for _, c := range strings.Split(cpus, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(c)); err == nil {
			set.Clear(n)
		}
	}
	if set.Count() == 0 {
		return fmt.Errorf("-pin: no CPU left for the callers")
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return err
	}
	runtime.GOMAXPROCS(set.Count())
	return nil
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }

func printTable(rs []rlsbench.Result) {
	fmt.Println("| round | server | values | decisions/s | p50 | p90 | p99 | server CPU per decision | Redis CPU per decision | requests (OK / over) | errors |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
	for _, r := range rs {
		name := r.Server
		if r.Dest == "tight" {
			name += " (over the limit)"
		}
		fmt.Printf("| %d | %s | %d | %.0f | %s | %s | %s | %.1f µs | %.1f µs | %d (%d / %d) | %d |\n", r.Round, name, r.Values, r.RPS,
			us(r.P50), us(r.P90), us(r.P99), float64(r.CPUPerCall)/1e3, float64(r.RedisCPUPerCall)/1e3, r.Requests, r.OK, r.Over, r.Errors)
	}
	type key struct {
		server, dest string
		values       int
	}
	med := func(k key, f func(rlsbench.Result) float64) float64 {
		var v []float64
		for _, r := range rs {
			if (key{r.Server, r.Dest, r.Values}) == k {
				v = append(v, f(r))
			}
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		return v[len(v)/2]
	}
	rps := func(r rlsbench.Result) float64 { return r.RPS }
	p99 := func(r rlsbench.Result) float64 { return float64(r.P99) }
	cpu := func(r rlsbench.Result) float64 { return float64(r.CPUPerCall + r.RedisCPUPerCall) }
	fmt.Println("\nmedians of rounds (ratios against the do-nothing server with the same values):")
	fmt.Println("| server | values | decisions/s | ratio | p99 | CPU per decision (server + Redis) | CPU ratio |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	seen := map[key]bool{}
	for _, r := range rs {
		k := key{r.Server, r.Dest, r.Values}
		if seen[k] {
			continue
		}
		seen[k] = true
		base := key{"do-nothing", "orders", r.Values}
		name := r.Server
		if r.Dest == "tight" {
			name += " (over the limit)"
		}
		ratio, cpuRatio := 0.0, 0.0
		if b := med(base, rps); b > 0 {
			ratio = med(k, rps) / b
		}
		if c := med(k, cpu); c > 0 {
			cpuRatio = med(base, cpu) / c
		}
		fmt.Printf("| %s | %d | %.0f | %.2f | %s | %.1f µs | %.2f |\n", name, r.Values, med(k, rps), ratio, us(time.Duration(med(k, p99))), med(k, cpu)/1e3, cpuRatio)
	}
}
