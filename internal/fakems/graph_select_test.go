package fakems

import (
	"slices"
	"testing"
)

// Microsoft Graph accepts spaces around the commas of $select; the message
// list, a single message and delta all honour "subject, isRead".
func TestGraphSelectWithSpaces(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	_ = f.Deliver(alice, []byte("Subject: s0\r\n\r\nx\r\n"))
	tok := f.IssueGraphToken(alice, ScopeGraphMailReadWrite)
	const sel = "$select=subject,%20isRead%20"
	check := func(what string, m map[string]any) {
		t.Helper()
		if m["subject"] != "s0" || m["isRead"] != false {
			t.Errorf("%s: selected properties missing: %v", what, m)
		}
		if _, ok := m["receivedDateTime"]; ok {
			t.Errorf("%s: $select not applied: %v", what, m)
		}
	}
	st, body := graphGet(t, f, "/v1.0/me/mailFolders/inbox/messages?"+sel, tok, "")
	if st != 200 || len(values(body)) != 1 {
		t.Fatalf("list = %d %v", st, body)
	}
	list := values(body)[0]
	check("list", list)
	st, body = graphGet(t, f, "/v1.0/me/messages/"+list["id"].(string)+"?"+sel, tok, "")
	if st != 200 {
		t.Fatalf("get = %d %v", st, body)
	}
	check("get", body)
	st, body = graphGet(t, f, "/v1.0/me/mailFolders/inbox/messages/delta?"+sel, tok, "")
	if st != 200 || len(values(body)) != 1 {
		t.Fatalf("delta = %d %v", st, body)
	}
	check("delta", values(body)[0])
}

func TestParseSelect(t *testing.T) {
	for in, want := range map[string][]string{
		"":                    nil,
		"id":                  {"id"},
		"id,subject":          {"id", "subject"},
		"id, subject ,isRead": {"id", "subject", "isRead"},
	} {
		if got := parseSelect(in); !slices.Equal(got, want) {
			t.Errorf("parseSelect(%q) = %q, want %q", in, got, want)
		}
	}
}
