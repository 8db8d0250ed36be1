package fakems

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// graphGet sends a GET with optional Prefer and returns status and JSON.
func graphGet(t *testing.T, f *Fake, u, token, prefer string) (int, map[string]any) {
	t.Helper()
	if strings.HasPrefix(u, "/") {
		u = f.GraphURL() + u
	}
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	if prefer != "" {
		req.Header.Set("Prefer", prefer)
	}
	st, m := doJSON(t, f, req)
	return st, m
}

func doJSON(t *testing.T, f *Fake, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := f.GraphHTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s %s: %d %q", req.Method, req.URL, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, m
}

func values(m map[string]any) []map[string]any {
	var out []map[string]any
	for _, v := range m["value"].([]any) {
		out = append(out, v.(map[string]any))
	}
	return out
}

func TestGraphReadFoldersAndMessages(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	for i := range 5 {
		if err := f.Deliver(alice, []byte(fmt.Sprintf("Subject: m%d\r\nMessage-ID: <m%d@x>\r\n\r\nbody %d\r\n", i, i, i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.CreateFolder(alice, "Inbox/Tickets"); err != nil {
		t.Fatal(err)
	}
	tok := f.IssueGraphToken(alice, ScopeGraphMailReadWrite)

	st, body := graphGet(t, f, "/v1.0/me/mailFolders", tok, "")
	if st != 200 {
		t.Fatalf("mailFolders = %d %v", st, body)
	}
	var inboxID string
	names := []string{}
	for _, fo := range values(body) {
		names = append(names, fo["displayName"].(string))
		if fo["displayName"] == "Inbox" {
			inboxID = fo["id"].(string)
			if fo["totalItemCount"].(float64) != 5 || fo["childFolderCount"].(float64) != 1 {
				t.Errorf("Inbox = %v", fo)
			}
		}
	}
	if strings.Join(names, ",") != "Deleted Items,Drafts,Inbox,Junk Email,Sent Items" {
		t.Errorf("folders = %v", names)
	}
	st, body = graphGet(t, f, "/v1.0/me/mailFolders/"+inboxID+"/childFolders", tok, "")
	if st != 200 || len(values(body)) != 1 || values(body)[0]["displayName"] != "Tickets" {
		t.Errorf("childFolders = %d %v", st, body)
	}
	st, body = graphGet(t, f, "/v1.0/users/"+alice+"/mailFolders/inbox", tok, "")
	if st != 200 || body["id"] != inboxID {
		t.Errorf("well-known inbox = %d %v", st, body)
	}

	// Paging with $top and nextLink, oldest first.
	var subjects []string
	u := "/v1.0/me/mailFolders/inbox/messages?$select=subject,isRead&$top=2&$orderby=receivedDateTime%20asc&$expand=singleValueExtendedProperties($filter=id%20eq%20'Long%200x0E08')"
	pages := 0
	var first map[string]any
	for u != "" {
		st, body = graphGet(t, f, u, tok, `IdType="ImmutableId"`)
		if st != 200 {
			t.Fatalf("list = %d %v", st, body)
		}
		pages++
		for _, m := range values(body) {
			if first == nil {
				first = m
			}
			subjects = append(subjects, m["subject"].(string))
			if _, ok := m["receivedDateTime"]; ok {
				t.Errorf("$select not applied: %v", m)
			}
		}
		u, _ = body["@odata.nextLink"].(string)
	}
	if pages != 3 || strings.Join(subjects, ",") != "m0,m1,m2,m3,m4" {
		t.Errorf("pages %d subjects %v", pages, subjects)
	}
	props := first["singleValueExtendedProperties"].([]any)[0].(map[string]any)
	raw0 := "Subject: m0\r\nMessage-ID: <m0@x>\r\n\r\nbody 0\r\n"
	if props["id"] != propMessageSize || props["value"] != fmt.Sprint(len(raw0)) {
		t.Errorf("size property = %v", props)
	}

	// $value is the message byte for byte.
	id := first["id"].(string)
	req, _ := http.NewRequest("GET", f.GraphURL()+"/v1.0/me/messages/"+id+"/$value", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := f.GraphHTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(got) != raw0 {
		t.Errorf("$value = %d %q", resp.StatusCode, got)
	}

	// PATCH isRead shows over IMAP; move keeps the immutable id only.
	st, body = graphPatch(t, f, "/v1.0/me/messages/"+id, tok, `{"isRead":true,"flag":{"flagStatus":"flagged"}}`)
	if st != 200 || body["isRead"] != true {
		t.Fatalf("PATCH = %d %v", st, body)
	}
	st, body = graphPost(t, f, "/v1.0/me/messages/"+id+"/move", tok, `{"destinationId":"deleteditems"}`, "")
	if st != 201 || body["id"] == id || body["parentFolderId"] != folderID("Deleted Items") || body["isRead"] != true {
		t.Fatalf("move = %d %v", st, body)
	}
	st, body = graphGet(t, f, "/v1.0/me/messages/"+id+"?$select=parentFolderId,flag", tok, `IdType="ImmutableId"`)
	if st != 200 || body["parentFolderId"] != folderID("Deleted Items") || body["flag"].(map[string]any)["flagStatus"] != "flagged" {
		t.Errorf("immutable id after move = %d %v", st, body)
	}
	if n := len(f.FolderMessages(alice, "INBOX")); n != 4 {
		t.Errorf("INBOX has %d after move", n)
	}
	// Copy then DELETE.
	st, body = graphPost(t, f, "/v1.0/me/messages/"+id+"/copy", tok, `{"destinationId":"inbox"}`, `IdType="ImmutableId"`)
	if st != 201 || body["id"] == id {
		t.Fatalf("copy = %d %v", st, body)
	}
	req, _ = http.NewRequest("DELETE", f.GraphURL()+"/v1.0/me/messages/"+body["id"].(string), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	if st, _ := doJSON(t, f, req); st != 204 {
		t.Errorf("DELETE = %d", st)
	}
	if n := len(f.FolderMessages(alice, "INBOX")); n != 4 {
		t.Errorf("INBOX has %d after copy + delete", n)
	}
	st, body = graphGet(t, f, "/v1.0/me/messages/"+body["id"].(string), tok, "")
	wantGraphError(t, st, body, 404, "ErrorItemNotFound", "")
}

func graphPatch(t *testing.T, f *Fake, u, tok, js string) (int, map[string]any) {
	req, _ := http.NewRequest("PATCH", f.GraphURL()+u, strings.NewReader(js))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	return doJSON(t, f, req)
}

func graphPost(t *testing.T, f *Fake, u, tok, js, prefer string) (int, map[string]any) {
	req, _ := http.NewRequest("POST", f.GraphURL()+u, strings.NewReader(js))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	if prefer != "" {
		req.Header.Set("Prefer", prefer)
	}
	return doJSON(t, f, req)
}

func TestGraphReadDelta(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	for i := range 3 {
		_ = f.Deliver(alice, []byte(fmt.Sprintf("Subject: d%d\r\n\r\nx\r\n", i)))
	}
	tok := f.IssueGraphToken(alice, ScopeGraphMailReadWrite)
	prefer := `IdType="ImmutableId", odata.maxpagesize=2`
	round := func(u string) ([]map[string]any, string) {
		var all []map[string]any
		for {
			st, body := graphGet(t, f, u, tok, prefer)
			if st != 200 {
				t.Fatalf("delta = %d %v", st, body)
			}
			all = append(all, values(body)...)
			if next, ok := body["@odata.nextLink"].(string); ok {
				u = next
				continue
			}
			return all, body["@odata.deltaLink"].(string)
		}
	}
	all, link := round("/v1.0/me/mailFolders/inbox/messages/delta?$select=isRead")
	if len(all) != 3 {
		t.Fatalf("initial delta = %v", all)
	}
	none, link := round(link)
	if len(none) != 0 {
		t.Errorf("delta without changes = %v", none)
	}
	// One new message (over IMAP's store), one read, one deleted.
	_ = f.Deliver(alice, []byte("Subject: d3\r\n\r\nx\r\n"))
	graphPatch(t, f, "/v1.0/me/messages/"+all[0]["id"].(string), tok, `{"isRead":true}`)
	req, _ := http.NewRequest("DELETE", f.GraphURL()+"/v1.0/me/messages/"+all[1]["id"].(string), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	doJSON(t, f, req)
	changes, _ := round(link)
	var changed, removed int
	for _, c := range changes {
		if _, ok := c["@removed"]; ok {
			removed++
			if c["id"] != all[1]["id"] {
				t.Errorf("removed %v", c)
			}
		} else {
			changed++
		}
	}
	if changed != 2 || removed != 1 {
		t.Errorf("changes = %v", changes)
	}
	st, body := graphGet(t, f, "/v1.0/me/mailFolders/inbox/messages/delta?$deltatoken=nope", tok, "")
	wantGraphError(t, st, body, 410, "SyncStateNotFound", "")
}

func TestGraphReadPermissions(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	_ = f.Deliver(shared, []byte("Subject: s\r\n\r\nx\r\n"))
	// Send-only token: 403.
	st, body := graphGet(t, f, "/v1.0/me/mailFolders/inbox/messages", f.IssueGraphToken(alice, ScopeGraphMailSend), "")
	wantGraphError(t, st, body, 403, "ErrorAccessDenied", msgAccessDenied)
	// A delegate needs Mail.ReadWrite.Shared, not just Mail.ReadWrite.
	f.GrantFullAccess(shared, alice)
	st, body = graphGet(t, f, "/v1.0/users/"+shared+"/mailFolders/inbox/messages", f.IssueGraphToken(alice, ScopeGraphMailReadWrite), "")
	wantGraphError(t, st, body, 403, "ErrorAccessDenied", "")
	st, body = graphGet(t, f, "/v1.0/users/"+shared+"/mailFolders/inbox/messages", f.IssueGraphToken(alice, ScopeGraphMailReadWriteShared), "")
	if st != 200 || len(values(body)) != 1 {
		t.Errorf("delegate read = %d %v", st, body)
	}
	// Read-only token cannot PATCH.
	id := values(body)[0]["id"].(string)
	st, body = graphPatch(t, f, "/v1.0/users/"+shared+"/messages/"+id, f.IssueGraphToken(alice, ScopeGraphMailReadShared), `{"isRead":true}`)
	wantGraphError(t, st, body, 403, "ErrorAccessDenied", "")
	// App role Mail.ReadWrite.
	f.AddApp("app1", "s")
	f.SetAppRoles("app1", RoleMailReadWrite)
	st, _ = graphGet(t, f, "/v1.0/users/"+shared+"/mailFolders/inbox/messages", f.IssueGraphAppToken("app1"), "")
	if st != 200 {
		t.Errorf("app read = %d", st)
	}
	// Throttling fault on $value only.
	f.SetGraphFault(GraphFault{Status: 429, Route: RouteGetMIME, Count: 1})
	st, body = graphGet(t, f, "/v1.0/users/"+shared+"/messages/"+id+"/$value", f.IssueGraphAppToken("app1"), "")
	wantGraphError(t, st, body, 429, "TooManyRequests", "")
}

// PATCH, move and copy refuse in Graph's order (403, 400, 404), and a
// refusal leaves the store usable.
func TestGraphReadWriteRefusals(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	_ = f.Deliver(alice, []byte("Subject: s\r\n\r\nx\r\n"))
	tok := f.IssueGraphToken(alice, ScopeGraphMailReadWrite)
	st, body := graphGet(t, f, "/v1.0/me/mailFolders/inbox/messages", tok, "")
	if st != 200 || len(values(body)) != 1 {
		t.Fatalf("list = %d %v", st, body)
	}
	id := values(body)[0]["id"].(string)
	readOnly := f.IssueGraphToken(alice, ScopeGraphMailRead)
	const unknown = "AAMkAGnotthere"
	for _, tc := range []struct {
		name, method, path, tok, body string
		status                        int
		code, msg                     string
	}{
		{"patch read-only", "PATCH", id, readOnly, `{"isRead":true}`, 403, "ErrorAccessDenied", msgAccessDenied},
		{"patch read-only bad body", "PATCH", id, readOnly, `{`, 403, "ErrorAccessDenied", msgAccessDenied},
		{"patch bad body", "PATCH", id, tok, `{`, 400, "ErrorInvalidRequest", "Cannot read the request body."},
		{"patch bad body unknown id", "PATCH", unknown, tok, `[1]`, 400, "ErrorInvalidRequest", "Cannot read the request body."},
		{"patch unknown id", "PATCH", unknown, tok, `{"isRead":true}`, 404, "ErrorItemNotFound", ""},
		{"patch bad flag", "PATCH", id, tok, `{"flag":{"flagStatus":"red"}}`, 400, "ErrorInvalidRequest", "flagStatus must be notFlagged, flagged or complete."},
		{"move read-only", "POST", id + "/move", readOnly, `{"destinationId":"inbox"}`, 403, "ErrorAccessDenied", msgAccessDenied},
		{"move no destination", "POST", id + "/move", tok, `{}`, 400, "ErrorInvalidRequest", "destinationId is required."},
		{"move no destination unknown id", "POST", unknown + "/move", tok, `{}`, 400, "ErrorInvalidRequest", "destinationId is required."},
		{"copy bad body", "POST", id + "/copy", tok, `nope`, 400, "ErrorInvalidRequest", "destinationId is required."},
		{"copy unknown id", "POST", unknown + "/copy", tok, `{"destinationId":"inbox"}`, 404, "ErrorItemNotFound", ""},
		{"move unknown folder", "POST", id + "/move", tok, `{"destinationId":"nowhere"}`, 404, "ErrorInvalidIdMalformed", ""},
	} {
		var st int
		var body map[string]any
		if tc.method == "PATCH" {
			st, body = graphPatch(t, f, "/v1.0/me/messages/"+tc.path, tc.tok, tc.body)
		} else {
			st, body = graphPost(t, f, "/v1.0/me/messages/"+tc.path, tc.tok, tc.body, "")
		}
		t.Run(tc.name, func(t *testing.T) { wantGraphError(t, st, body, tc.status, tc.code, tc.msg) })
	}
	// Nothing was changed, and the store is not left locked.
	st, body = graphGet(t, f, "/v1.0/me/messages/"+id+"?$select=isRead,parentFolderId", tok, "")
	if st != 200 || body["isRead"] != false || body["parentFolderId"] != folderID("INBOX") {
		t.Errorf("message after the refusals = %d %v", st, body)
	}
	st, body = graphPatch(t, f, "/v1.0/me/messages/"+id, tok, `{"isRead":true}`)
	if st != 200 || body["isRead"] != true {
		t.Errorf("PATCH after the refusals = %d %v", st, body)
	}
}
