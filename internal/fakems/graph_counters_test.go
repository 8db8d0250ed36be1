package fakems

import (
	"io"
	"net/http"
	"testing"
)

// GraphContentRequests counts $value and single-message GETs, not
// listings.
func TestGraphContentRequests(t *testing.T) {
	t.Parallel()
	f := newFake(t, Options{})
	_ = f.Deliver(alice, []byte("Subject: s\r\n\r\nx\r\n"))
	tok := f.IssueGraphToken(alice, ScopeGraphMailReadWrite)
	st, body := graphGet(t, f, "/v1.0/me/mailFolders/inbox/messages", tok, "")
	if st != 200 || len(values(body)) != 1 {
		t.Fatalf("list = %d %v", st, body)
	}
	if n := f.GraphContentRequests(); n != 0 {
		t.Errorf("after a listing: %d content requests", n)
	}
	id := values(body)[0]["id"].(string)
	for _, u := range []string{"/v1.0/me/messages/" + id + "/$value", "/v1.0/me/messages/" + id, "/v1.0/me/messages/AAMkAGnotthere/$value"} {
		req, _ := http.NewRequest("GET", f.GraphURL()+u, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := f.GraphHTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if n := f.GraphContentRequests(); n != 3 {
		t.Errorf("GraphContentRequests = %d, want 3 (two GETs of the message, one 404)", n)
	}
}
