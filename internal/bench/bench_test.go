package bench

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func tiny() Options {
	return Options{Rounds: 2, FetchMessages: 3, FetchSize: 64 << 10, Logins: 5, IdleSessions: 20,
		SMTPMessages: 20, SMTPConns: 4, SMTPSize: 4 << 10, BigMessages: []int64{2 << 20}, BigRounds: 1, CPURounds: 1,
		GraphPoll: time.Second, IdleWindow: 2500 * time.Millisecond, IdleMessages: 3}
}

// TestTinyRun runs every workload in miniature, including the separate
// bridge process, so the bench cannot rot. It checks that each workload
// produced real figures, not that the targets are met.
func TestTinyRun(t *testing.T) {
	o := tiny()
	if testing.Short() {
		t.Log("-short: no bridge process (IDLE and large-message workloads skipped)")
	} else {
		o.BridgeBinary = filepath.Join(t.TempDir(), "oauthbridge")
		out, err := exec.Command("go", "build", "-o", o.BridgeBinary, "github.com/oauthbridge/oauthbridge/cmd/oauthbridge").CombinedOutput()
		if err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"IMAP FETCH", "IMAP login", "SMTP 20 x", "Token requests"}
	if o.BridgeBinary != "" {
		want = append(want, "SMTP one 2 MiB", "IMAP IDLE x 20 (bridge process)", "IMAP IDLE x 20, served from Graph (bridge process)", "IMAP FETCH (bridge process", "POP3 RETR", "SMTP DATA (bridge process, large", "SMTP DATA (bridge process, client writing")
	}
	for _, w := range want {
		found := false
		for _, r := range rep.Rows {
			if !strings.HasPrefix(r.Workload, w) {
				continue
			}
			found = true
			if r.Bridge == "" || r.Bridge == "0" && !strings.HasPrefix(w, "Token") {
				t.Errorf("%s %s: no bridge figure", r.Workload, r.Metric)
			}
			if v, err := strconv.ParseFloat(r.Bridge, 64); err != nil || v < 0 {
				t.Errorf("%s %s: bridge figure %q", r.Workload, r.Metric, r.Bridge)
			}
		}
		if !found {
			t.Errorf("no row for %q", w)
		}
	}
	for _, r := range rep.Rows {
		if strings.HasPrefix(r.Workload, "Token requests") && (r.OK == nil || !*r.OK) {
			t.Errorf("token requests: got %s, %s (%s)", r.Bridge, r.Ratio, r.Note)
		}
		if strings.HasPrefix(r.Workload, "IMAP IDLE") && !strings.HasPrefix(r.Note, "0 errors;") {
			t.Errorf("idle sessions: %s", r.Note)
		}
		if strings.HasPrefix(r.Workload, "IMAP IDLE") && !strings.Contains(r.Note, "Go stacks") {
			t.Errorf("idle sessions: no Go runtime figures: %s", r.Note)
		}
		// The Graph-served sessions were polled while idle: the bridge
		// asked Graph for the folder's changes at least once.
		if strings.Contains(r.Workload, "served from Graph") && (!strings.Contains(r.Note, "bridge CPU") || strings.Contains(r.Note, " 0 Graph delta requests")) {
			t.Errorf("Graph-served idle sessions: no poll measured: %s", r.Note)
		}
	}
	var text, md bytes.Buffer
	rep.WriteText(&text)
	rep.WriteMarkdown(&md)
	if !strings.Contains(text.String(), "CPU cores") || !strings.HasPrefix(md.String(), "| Workload |") {
		t.Errorf("table output:\n%s\n%s", text.String(), md.String())
	}
}

func TestHelpers(t *testing.T) {
	for _, size := range []int{100, 4096, 256 << 10, 256<<10 + 1} {
		if m := makeMessage(size); len(m) != size || !bytes.HasSuffix(m, []byte("\r\n")) {
			t.Errorf("makeMessage(%d): len %d", size, len(m))
		}
	}
	if n, ok := literalSize([]byte("* 1 FETCH (BODY[] {262144}\r\n")); !ok || n != 262144 {
		t.Errorf("literalSize = %d, %v", n, ok)
	}
	if _, ok := literalSize([]byte("b1 OK done\r\n")); ok {
		t.Error("literalSize matched a line without a literal")
	}
	// A spliced IDLE session holds 2 descriptors per process, one served
	// from Graph 1: under a hard limit of 20,000 only the Graph row fits
	// 10,000 sessions.
	for _, c := range []struct {
		limit    uint64
		fds, max int
	}{{20000, 2, 9900}, {20000, 1, 19800}, {fdSlack, 1, 0}, {10, 2, 0}} {
		if got := maxIdleSessions(c.limit, c.fds); got != c.max {
			t.Errorf("maxIdleSessions(%d, %d) = %d, want %d", c.limit, c.fds, got, c.max)
		}
	}
}

// TestReportMet: -strict exits 1 exactly when Met is false, that is when
// a row with a target missed it; rows without a target never count.
func TestReportMet(t *testing.T) {
	yes, no := true, false
	rep := &Report{Rows: []Row{{Workload: "a", OK: &yes}, {Workload: "b"}}}
	if !rep.Met() {
		t.Error("Met() = false with every target met")
	}
	rep.Rows = append(rep.Rows, Row{Workload: "c", OK: &no})
	if rep.Met() {
		t.Error("Met() = true with a missed target")
	}
	var text bytes.Buffer
	rep.CPUs, rep.LoadStart, rep.LoadEnd = 2, "8.90", "1.00"
	rep.WriteText(&text)
	if !strings.Contains(text.String(), "load average 8.90 at the start, 1.00 at the end (above the core count") {
		t.Errorf("notes do not say the machine was busy:\n%s", text.String())
	}
	text.Reset()
	rep.LoadStart = "0.50"
	rep.WriteText(&text)
	if strings.Contains(text.String(), "above the core count") {
		t.Errorf("notes call a quiet machine busy:\n%s", text.String())
	}
}
