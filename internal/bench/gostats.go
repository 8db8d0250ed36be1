package bench

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// goStats are the bridge process's Go runtime figures from its admin
// listener's /metrics: where a session's memory goes (goroutine stacks or
// heap) beyond the RSS the workloads report.
type goStats struct {
	stack, heap, goroutines float64
}

// goStats scrapes the bridge process's /metrics.
func (p *bridgeProc) goStats() (goStats, error) {
	var st goStats
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + p.admin + "/metrics")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("bench: admin /metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		var dst *float64
		switch name {
		case "go_memstats_stack_inuse_bytes":
			dst = &st.stack
		case "go_memstats_heap_inuse_bytes":
			dst = &st.heap
		case "go_goroutines":
			dst = &st.goroutines
		default:
			continue
		}
		if *dst, err = strconv.ParseFloat(strings.TrimSpace(val), 64); err != nil {
			return st, fmt.Errorf("bench: admin /metrics: %s: %w", name, err)
		}
	}
	return st, sc.Err()
}

// perSession describes the growth from before to after over n sessions.
func (after goStats) perSession(before goStats, n int64) string {
	n = max(n, 1)
	return fmt.Sprintf("Go stacks %.1f KiB, heap in use %.1f KiB, %.1f goroutines per session",
		(after.stack-before.stack)/float64(n)/1024, (after.heap-before.heap)/float64(n)/1024, (after.goroutines-before.goroutines)/float64(n))
}
