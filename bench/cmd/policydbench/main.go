// Command policydbench measures bowline policyd's ext_authz Check next to a
// do-nothing ext_authz server (docs/PERFORMANCE.md, "policyd: ext_authz
// Check"). Both run pinned to one core (-server-cpus); the callers run on
// the other cores (-pin).
//
//	go run ./bench/cmd/policydbench -pin -out bench/results/policyd.json
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

	"github.com/bowlinemesh/bowline/bench/policydbench"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == policydbench.NoopArg {
		if err := policydbench.ServeNoop(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "noop ext_authz:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "policydbench:", err)
		os.Exit(1)
	}
}

func run() error {
	var o policydbench.Options
	bowline := flag.String("bowline", "", "the bowline binary (default: built from this module)")
	flag.IntVar(&o.Callers, "callers", 16, "concurrent callers, one connection each")
	flag.DurationVar(&o.Warmup, "warmup", 2*time.Second, "warmup before each measurement")
	flag.DurationVar(&o.Duration, "duration", 10*time.Second, "length of each measurement")
	flag.IntVar(&o.Rounds, "rounds", 3, "times the two servers are measured, alternating")
	flag.StringVar(&o.ServerCPUs, "server-cpus", "0", "CPUs the servers are pinned to (taskset -c); empty: not pinned")
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
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o.Self, o.Bowline = self, *bowline
	if o.Bowline == "" {
		dir, err := os.MkdirTemp("", "policydbench-bin-")
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
	fmt.Fprintf(os.Stderr, "servers on CPU %q, callers on %d CPU(s) (GOMAXPROCS %d), %d callers\n", o.ServerCPUs, runtime.NumCPU(), runtime.GOMAXPROCS(0), o.Callers)
	results, err := policydbench.Run(ctx, o)
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

func printTable(rs []policydbench.Result) {
	fmt.Println("| round | server | Check/s | p50 | p90 | p99 | max | server CPU per Check | requests (allowed / denied) | errors |")
	fmt.Println("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
	for _, r := range rs {
		fmt.Printf("| %d | %s | %.0f | %s | %s | %s | %s | %.1f µs | %d (%d / %d) | %d |\n", r.Round, r.Server, r.RPS, us(r.P50), us(r.P90), us(r.P99), us(r.Max),
			float64(r.CPUPerCheck)/1e3, r.Requests, r.Allowed, r.Denied, r.Errors)
	}
	med := func(server string, f func(policydbench.Result) float64) float64 {
		var v []float64
		for _, r := range rs {
			if r.Server == server {
				v = append(v, f(r))
			}
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		return v[len(v)/2]
	}
	rps := func(r policydbench.Result) float64 { return r.RPS }
	p99 := func(r policydbench.Result) float64 { return float64(r.P99) }
	cpu := func(r policydbench.Result) float64 { return float64(r.CPUPerCheck) }
	fmt.Printf("\nmedian of rounds: policyd %.0f Check/s, do-nothing %.0f Check/s: ratio %.2f; p99 policyd %s, do-nothing %s; "+
		"server CPU per Check policyd %.1f µs, do-nothing %.1f µs: throughput bound ratio %.2f\n",
		med("policyd", rps), med("do-nothing", rps), med("policyd", rps)/med("do-nothing", rps),
		us(time.Duration(med("policyd", p99))), us(time.Duration(med("do-nothing", p99))),
		med("policyd", cpu)/1e3, med("do-nothing", cpu)/1e3, med("do-nothing", cpu)/med("policyd", cpu))
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }
