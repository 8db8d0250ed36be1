// Command oauthbridge-bench measures what the bridge costs a client. It
// starts the fake Microsoft 365 upstream and a bridge configured against it
// (loopback only), runs each workload directly (TLS + XOAUTH2) and through
// the bridge (TLS + password to the bridge) in alternating rounds, and
// prints a table and its markdown.
//
//	go run ./cmd/oauthbridge-bench           # full run, a few minutes
//	go run ./cmd/oauthbridge-bench -quick    # CI-sized, well under a minute
//	go run ./cmd/oauthbridge-bench -strict   # exit 1 when a target is missed
//	go run ./cmd/oauthbridge-bench -idle N   # hold N IDLE sessions
//	go run ./cmd/oauthbridge-bench -idle-only  # only the IDLE workloads
//
// The IDLE, large-message and CPU-per-MB workloads measure the bridge's RSS
// and CPU time, so they run the bridge as a separate `oauthbridge serve`
// process; the command builds that binary with `go build` unless
// -bridge-bin names one (-bridge-bin=none skips those workloads).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"

	"github.com/oauthbridge/oauthbridge/internal/bench"
)

func main() {
	quick := flag.Bool("quick", false, "CI-sized workloads (well under a minute)")
	bin := flag.String("bridge-bin", "", "oauthbridge binary for the separate-process workloads (default: go build ./cmd/oauthbridge; \"none\" skips them)")
	rounds := flag.Int("rounds", 0, "alternating direct/bridge rounds (0 = preset)")
	idle := flag.Int("idle", 0, "concurrent IDLE sessions (0 = preset)")
	idleMessages := flag.Int("idle-messages", 0, "messages in the IDLE sessions' INBOX (a Graph-served session keeps a view of each)")
	idleOnly := flag.Bool("idle-only", false, "run only the IDLE workloads (spliced and served from Graph)")
	md := flag.Bool("markdown", true, "also print the markdown table")
	strict := flag.Bool("strict", false, "exit 1 when a target is missed")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the bench process (fake + in-process bridge + clients) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(err)
		}
		defer pprof.StopCPUProfile()
	}

	o := bench.Full()
	if *quick {
		o = bench.Quick()
	}
	if *rounds > 0 {
		o.Rounds = *rounds
	}
	if *idle > 0 {
		o.IdleSessions = *idle
	}
	o.IdleOnly = *idleOnly
	o.IdleMessages = *idleMessages
	o.Progress = os.Stderr

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch *bin {
	case "none":
	case "":
		dir, err := os.MkdirTemp("", "oauthbridge-bench-bin-")
		if err != nil {
			fatal(err)
		}
		defer os.RemoveAll(dir)
		o.BridgeBinary = filepath.Join(dir, "oauthbridge")
		fmt.Fprintln(os.Stderr, "building ./cmd/oauthbridge ...")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", o.BridgeBinary, "./cmd/oauthbridge")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fatal(fmt.Errorf("oauthbridge-bench: go build ./cmd/oauthbridge (run from the repository root, or pass -bridge-bin): %w", err))
		}
	default:
		o.BridgeBinary = *bin
	}

	rep, err := bench.Run(ctx, o)
	if rep != nil {
		fmt.Println()
		rep.WriteText(os.Stdout)
		if *md {
			fmt.Println()
			rep.WriteMarkdown(os.Stdout)
		}
	}
	if err != nil {
		pprof.StopCPUProfile()
		fatal(err)
	}
	if *strict && !rep.Met() {
		pprof.StopCPUProfile()
		for _, r := range rep.Rows {
			if r.OK != nil && !*r.OK {
				fmt.Fprintf(os.Stderr, "oauthbridge-bench: target missed: %s, %s: %s (target %s)\n", r.Workload, r.Metric, r.Ratio, r.Target)
			}
		}
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "oauthbridge-bench:", err)
	os.Exit(1)
}
