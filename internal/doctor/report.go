package doctor

import (
	"fmt"
	"io"
	"strings"
)

// WriteTable writes rep for people: per account a header, then one line
// per check (status, check, detail) with the upstream reply, the meaning
// and the fix lines indented below a failure.
func WriteTable(w io.Writer, rep *Report) {
	for i, ar := range rep.Accounts {
		if i > 0 {
			fmt.Fprintln(w)
		}
		head := fmt.Sprintf("Account %s (mailbox %s, %s", ar.Account, ar.Mailbox, ar.Flow)
		if ar.Delegate != "" && !strings.EqualFold(ar.Delegate, ar.Mailbox) {
			head += ", delegate " + ar.Delegate
		}
		head += ")"
		fmt.Fprintln(w, head)
		idw := len("CHECK")
		for _, c := range ar.Checks {
			idw = max(idw, len(c.ID))
		}
		fmt.Fprintf(w, "%-6s  %-*s  %s\n", "STATUS", idw, "CHECK", "DETAIL")
		for _, c := range ar.Checks {
			st := string(c.Status)
			if c.Status == Fail {
				st = "FAIL"
			}
			fmt.Fprintf(w, "%-6s  %-*s  %s\n", st, idw, c.ID, c.Detail)
			if c.Status != Fail {
				continue
			}
			if c.Upstream != "" {
				fmt.Fprintf(w, "        server said: %s\n", c.Upstream)
			}
			if c.Meaning != "" {
				fmt.Fprintf(w, "        means:       %s\n", c.Meaning)
			}
			for j, f := range c.Fix {
				label := "fix:        "
				if j > 0 {
					label = "            "
				}
				fmt.Fprintf(w, "        %s %s\n", label, f)
			}
		}
	}
	pass, fail, skip := 0, 0, 0
	for _, ar := range rep.Accounts {
		for _, c := range ar.Checks {
			switch c.Status {
			case Pass:
				pass++
			case Fail:
				fail++
			default:
				skip++
			}
		}
	}
	fmt.Fprintf(w, "\n%d passed, %d failed, %d skipped (checks run by %s)\n", pass, fail, skip, sourceText(rep.Source))
}

func sourceText(s string) string {
	if s == "daemon" {
		return "the running daemon, with its tokens"
	}
	return "this process, with the token store"
}
