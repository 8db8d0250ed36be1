package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/oauthbridge/oauthbridge/internal/fakems"
)

// fdSlack is the descriptors a process needs besides the IDLE sessions'
// sockets (listeners, the other workloads' idle connections, files).
const fdSlack = 200

// maxIdleSessions is how many IDLE sessions of fds descriptors each fit
// under an RLIMIT_NOFILE of limit.
func maxIdleSessions(limit uint64, fds int) int {
	if limit <= fdSlack {
		return 0
	}
	return int(limit-fdSlack) / fds
}

// Which bench account each workload uses (SMTP uses the first SMTPConns).
const (
	fetchAccount = iota
	loginAccount
	idleAccount
	bigAccount
	minAccounts
)

// Options sizes the workloads. Full and Quick are the two presets.
type Options struct {
	Rounds        int // alternating direct/bridge rounds (FETCH, SMTP)
	FetchMessages int // messages in the FETCH mailbox
	FetchSize     int // bytes per message
	Logins        int // login samples per path
	IdleSessions  int // concurrent IDLE sessions through the bridge process
	SMTPMessages  int // messages per SMTP round
	SMTPConns     int // concurrent SMTP connections (one mailbox each)
	SMTPSize      int // bytes per SMTP message
	// BigMessages are the sizes of the single large SMTP messages, each
	// sent BigRounds times directly and through the bridge process.
	BigMessages []int64
	BigRounds   int
	// CPURounds is how often the bridge process relays the FETCH mailbox
	// (IMAP FETCH, POP3 RETR) for the CPU-per-MB figures.
	CPURounds int
	// GraphPoll is the bridge's imap { graph_poll_interval } (0: its
	// default); IdleWindow is how long the Graph-served IDLE workload
	// measures the bridge's CPU with every session idling.
	GraphPoll  time.Duration
	IdleWindow time.Duration
	// IdleMessages are delivered to each IDLE account's INBOX first (a
	// Graph-served session keeps its own view of the selected folder:
	// UID, flags, size, date per message).
	IdleMessages int
	// IdleOnly runs only the IDLE workloads (and the token count).
	IdleOnly bool
	// BridgeBinary is an oauthbridge binary to run as a separate process for
	// the RSS workloads (IDLE, large message). Empty skips them.
	BridgeBinary string
	// Progress, if set, receives one line per finished workload.
	Progress io.Writer
}

// Full is the complete run (a few minutes).
func Full() Options {
	return Options{Rounds: 6, FetchMessages: 200, FetchSize: 256 << 10, Logins: 400, IdleSessions: 10000,
		SMTPMessages: 1000, SMTPConns: 20, SMTPSize: 20 << 10, BigMessages: []int64{25e6, 50 << 20}, BigRounds: 4, CPURounds: 3,
		IdleWindow: 60 * time.Second} // two of the default 30 s polls
}

// Quick is a reduced run for CI (well under a minute).
func Quick() Options {
	return Options{Rounds: 2, FetchMessages: 40, FetchSize: 256 << 10, Logins: 100, IdleSessions: 500,
		SMTPMessages: 200, SMTPConns: 20, SMTPSize: 20 << 10, BigMessages: []int64{25e6}, BigRounds: 2, CPURounds: 1,
		GraphPoll: 5 * time.Second, IdleWindow: 10 * time.Second}
}

// Row is one line of the result table. OK is nil for figures without a
// target.
type Row struct {
	Workload, Metric      string
	Direct, Bridge, Ratio string
	Target                string
	OK                    *bool
	Note                  string
}

// Report is the outcome of Run.
type Report struct {
	Rows     []Row
	CPUs     int
	Elapsed  time.Duration
	Warnings []string
	// The machine: CPU model and the 1-minute load average at the start
	// and the end of the run (other work on the machine skews the ratios).
	CPUModel           string
	LoadStart, LoadEnd string
}

// Met reports whether every row with a target met it.
func (r *Report) Met() bool {
	for _, row := range r.Rows {
		if row.OK != nil && !*row.OK {
			return false
		}
	}
	return true
}

// Run starts the fake upstream and the bridge and runs every workload.
func Run(ctx context.Context, o Options) (*Report, error) {
	if o.Rounds < 1 {
		o.Rounds = 1
	}
	rep := &Report{CPUs: runtime.NumCPU(), CPUModel: cpuModel(), LoadStart: loadAverage()}
	defer func() { rep.LoadEnd = loadAverage() }()
	if o.BridgeBinary != "" {
		// A spliced IDLE session costs two descriptors in the bridge
		// process (client and upstream socket) and two in this one (the
		// client and the fake's end); one served from Graph costs one in
		// each. The bridge process inherits the limit.
		lim, err := raiseNoFile(uint64(2*o.IdleSessions + fdSlack))
		if err != nil {
			rep.Warnings = append(rep.Warnings, err.Error())
		}
		for _, r := range []struct {
			name string
			fds  int
		}{{"spliced IMAP IDLE", 2}, {"Graph-served IMAP IDLE", 1}} {
			if n := maxIdleSessions(lim, r.fds); n < o.IdleSessions {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("RLIMIT_NOFILE hard limit %d (raising it needs CAP_SYS_RESOURCE) is below the %d descriptors the %s workload needs "+
					"(%d per session in the bridge process and in the bench process, plus %d): at most %d sessions fit (-idle)", lim, r.fds*o.IdleSessions+fdSlack, r.name, r.fds, fdSlack, n))
			}
		}
	}
	start := time.Now()
	e, err := newEnv(ctx, max(o.SMTPConns, minAccounts), o.GraphPoll, o.Progress)
	if err != nil {
		return nil, err
	}
	defer e.close()
	tokBase := e.f.TokenRequests()
	grantsBase := e.f.TokenRequestsByGrant()
	e.logf("setup: %d accounts signed in, %d token requests so far", len(e.accounts), tokBase)

	add := func(rows []Row, err error) error {
		rep.Rows = append(rep.Rows, rows...)
		return err
	}
	if !o.IdleOnly {
		if err := add(e.runFetch(o)); err != nil {
			return rep, err
		}
		if err := add(e.runLogin(o)); err != nil {
			return rep, err
		}
		if err := add(e.runSMTP(o)); err != nil {
			return rep, err
		}
	}
	if o.BridgeBinary != "" {
		if err := e.runProcess(ctx, o, rep); err != nil {
			return rep, err
		}
	} else {
		rep.Warnings = append(rep.Warnings, "no bridge binary: IDLE and large-message RSS workloads skipped")
	}
	rep.Elapsed = time.Since(start)

	// Token requests: the bridge holds an access token per account (and a
	// Graph token per Graph-served account) for its lifetime and refreshes
	// it when a quarter of the lifetime is left, so a run shorter than 3/4
	// of the lifetime needs no request at all.
	got := e.f.TokenRequests() - tokBase
	life := fakems.DefaultAccessTokenLifetime
	want := (len(e.accounts) + e.graphAccounts()) * int(rep.Elapsed/(life*3/4))
	ok := got == want
	grants := e.f.TokenRequestsByGrant()
	var parts []string
	for g, n := range grants {
		if d := n - grantsBase[g]; d != 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", g, d))
		}
	}
	slices.Sort(parts)
	note := fmt.Sprintf("%d setup requests (device-code sign-in of %d accounts, %d of them read from Graph) not counted; lifetime %v", tokBase, len(e.accounts), e.graphAccounts(), life)
	if len(parts) > 0 {
		note += "; during run: " + strings.Join(parts, ", ")
	}
	rep.Rows = append(rep.Rows, Row{Workload: "Token requests during all workloads", Metric: "requests at the token endpoint",
		Direct: "0 (pre-issued)", Bridge: fmt.Sprint(got), Ratio: fmt.Sprintf("expected %d", want), Target: "= expected", OK: &ok, Note: note})
	return rep, nil
}

// runProcess runs the RSS workloads against a bridge in its own process.
func (e *env) runProcess(ctx context.Context, o Options, rep *Report) error {
	p, err := e.startProc(o.BridgeBinary)
	if err != nil {
		return err
	}
	defer p.stop()
	if !o.IdleOnly {
		// The large messages first: the IDLE workload grows the heap, and a
		// grown heap would hide a message's peak.
		rows, big, err := e.runBig(ctx, o, p)
		rep.Rows = append(rep.Rows, rows...)
		if err != nil {
			return err
		}
		rows, err = e.runCPU(o, p, big)
		rep.Rows = append(rep.Rows, rows...)
		if err != nil {
			return err
		}
	}
	rows, err := e.runIdle(ctx, o, p, e.splicedIdle())
	rep.Rows = append(rep.Rows, rows...)
	if err != nil {
		return err
	}
	p.stop()
	// A fresh process for the Graph-served sessions: memory the spliced
	// sessions freed but the runtime still holds would otherwise make room
	// for them without growing the RSS.
	g, err := e.startProc(o.BridgeBinary)
	if err != nil {
		return err
	}
	defer g.stop()
	rows, err = e.runIdle(ctx, o, g, e.graphIdleRow(o))
	rep.Rows = append(rep.Rows, rows...)
	return err
}

// raiseNoFile raises RLIMIT_NOFILE to at least n: the hard limit too where
// the process may (root, CAP_SYS_RESOURCE), else up to the hard limit. The
// bridge process inherits it. It returns the soft limit now in force.
func raiseNoFile(n uint64) (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("bench: getrlimit: %w", err)
	}
	if rl.Cur >= n {
		return rl.Cur, nil
	}
	if rl.Max < n {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: n, Max: n}); err == nil {
			return n, nil
		}
	}
	cur := rl.Cur
	rl.Cur = min(n, rl.Max)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return cur, fmt.Errorf("bench: setrlimit: %w", err)
	}
	return rl.Cur, nil
}

// noFileLimit is the soft RLIMIT_NOFILE in force (the bridge process's too).
func noFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	return rl.Cur, err
}

// ratioRow builds a row for a higher-is-better figure with a minimum ratio.
func ratioRow(name, metric string, direct, bridge, minRatio float64, format string) Row {
	ratio := bridge / direct
	ok := ratio >= minRatio
	return Row{Workload: name, Metric: metric, Direct: fmt.Sprintf(format, direct), Bridge: fmt.Sprintf(format, bridge),
		Ratio: fmt.Sprintf("%.2f", ratio), Target: fmt.Sprintf(">= %.2f", minRatio), OK: &ok}
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func f2(v float64) string        { return fmt.Sprintf("%.2f", v) }

func sizeName(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	case n >= 1e6 && n%1e6 == 0:
		return fmt.Sprintf("%d MB", n/1e6)
	}
	return fmt.Sprintf("%d B", n)
}

func (r Row) met() string {
	switch {
	case r.OK == nil:
		return "-"
	case *r.OK:
		return "yes"
	}
	return "NO"
}

var header = []string{"Workload", "Metric", "Direct", "Bridge", "Bridge/direct", "Target", "Met"}

func (r Row) cells() []string {
	return []string{r.Workload, r.Metric, r.Direct, r.Bridge, r.Ratio, r.Target, r.met()}
}

// WriteText writes the table in aligned columns.
func (r *Report) WriteText(w io.Writer) {
	widths := make([]int, len(header))
	all := [][]string{header}
	for _, row := range r.Rows {
		all = append(all, row.cells())
	}
	for _, cells := range all {
		for i, c := range cells {
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, cells := range all {
		for i, c := range cells {
			fmt.Fprintf(w, "%-*s  ", widths[i], c)
		}
		fmt.Fprintln(w)
	}
	r.writeNotes(w, "")
}

// WriteMarkdown writes the table as GitHub markdown for the README.
func (r *Report) WriteMarkdown(w io.Writer) {
	fmt.Fprintln(w, "| "+strings.Join(header, " | ")+" |")
	fmt.Fprintln(w, "|"+strings.Repeat("---|", len(header)))
	for _, row := range r.Rows {
		fmt.Fprintln(w, "| "+strings.Join(row.cells(), " | ")+" |")
	}
	fmt.Fprintln(w)
	r.writeNotes(w, "- ")
}

func (r *Report) writeNotes(w io.Writer, bullet string) {
	fmt.Fprintf(w, "%s%d CPU cores (runtime.NumCPU)", bullet, r.CPUs)
	if r.CPUModel != "" {
		fmt.Fprintf(w, " of %q", r.CPUModel)
	}
	fmt.Fprintf(w, ", %s, total %v", runtime.Version(), r.Elapsed.Round(time.Second))
	if r.LoadStart != "" {
		fmt.Fprintf(w, "; load average %s at the start, %s at the end", r.LoadStart, r.LoadEnd)
		if busy(r.LoadStart, r.CPUs) || busy(r.LoadEnd, r.CPUs) {
			fmt.Fprint(w, " (above the core count: other work shared the machine)")
		}
	}
	fmt.Fprintln(w, ".")
	fmt.Fprintf(w, "%sClient-perceived: the direct client speaks TLS + XOAUTH2 to the fake upstream; the bridged client speaks TLS + password to the bridge on loopback (IDLE sessions: plaintext, as local legacy clients do), and the bridge speaks TLS + XOAUTH2 upstream. Direct and bridge rounds alternate in one run; rates are from each path's median round. CPU per MB is the bridge process's user+system time (/proc/PID/stat) divided by the bytes it relayed.\n", bullet)
	for _, row := range r.Rows {
		if row.Note != "" {
			fmt.Fprintf(w, "%s%s: %s\n", bullet, row.Workload, row.Note)
		}
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "%swarning: %s\n", bullet, warn)
	}
}

// cpuModel is the first "model name" of /proc/cpuinfo, or "".
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// loadAverage is the 1-minute load average from /proc/loadavg, or "".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return ""
}

func busy(load string, cpus int) bool {
	v, err := strconv.ParseFloat(load, 64)
	return err == nil && v > float64(cpus)
}
