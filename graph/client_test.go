package graph

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestBase64Reader(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 3071, 3072, 3073, 100_000} {
		src := make([]byte, n)
		rand.Read(src)
		got, err := io.ReadAll(NewBase64Reader(bytes.NewReader(src)))
		if err != nil {
			t.Fatal(err)
		}
		if want := base64.StdEncoding.EncodeToString(src); string(got) != want {
			t.Fatalf("n=%d: base64 differs", n)
		}
		if len(got) != base64.StdEncoding.EncodedLen(n) {
			t.Fatalf("n=%d: len %d", n, len(got))
		}
	}
}

// recorder is a tiny Graph stand-in.
type recorder struct {
	mu       sync.Mutex
	requests []*recorded
	handle   func(w http.ResponseWriter, r *recorded)
}

type recorded struct {
	Method, Path, Auth, ContentType, ContentRange string
	Body                                          []byte
}

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := &recorded{Method: r.Method, Path: r.URL.EscapedPath(), Auth: r.Header.Get("Authorization"),
		ContentType: r.Header.Get("Content-Type"), ContentRange: r.Header.Get("Content-Range"), Body: body}
	rc.mu.Lock()
	rc.requests = append(rc.requests, rec)
	rc.mu.Unlock()
	rc.handle(w, rec)
}

func (rc *recorder) all() []*recorded {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]*recorded(nil), rc.requests...)
}

func newClient(t *testing.T, h func(w http.ResponseWriter, r *recorded)) (*Client, *recorder, *[]time.Duration) {
	rc := &recorder{handle: h}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	var slept []time.Duration
	n := 0
	c := &Client{
		BaseURL: srv.URL,
		HTTP:    srv.Client(),
		Token: func(context.Context) (string, error) {
			n++
			return fmt.Sprintf("tok%d", n), nil
		},
		Sleep: func(_ context.Context, d time.Duration) error { slept = append(slept, d); return nil },
	}
	return c, rc, &slept
}

func graphError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func opener(b []byte) func() (io.Reader, error) {
	return func() (io.Reader, error) { return bytes.NewReader(b), nil }
}

func TestSendMIME(t *testing.T) {
	c, rc, _ := newClient(t, func(w http.ResponseWriter, r *recorded) { w.WriteHeader(http.StatusAccepted) })
	msg := []byte("From: a@contoso.com\r\nTo: b@contoso.com\r\nSubject: hi\r\n\r\nbody\r\n")
	if err := c.SendMIME(context.Background(), "shared box@contoso.com", opener(msg), int64(len(msg))); err != nil {
		t.Fatalf("SendMIME() = %v", err)
	}
	r := rc.all()[0]
	if r.Method != "POST" || r.Path != "/v1.0/users/shared%20box@contoso.com/sendMail" || r.ContentType != "text/plain" || r.Auth != "Bearer tok1" {
		t.Errorf("request = %s %s %q %q", r.Method, r.Path, r.ContentType, r.Auth)
	}
	if dec, err := base64.StdEncoding.DecodeString(string(r.Body)); err != nil || !bytes.Equal(dec, msg) {
		t.Errorf("body is not the base64 message: %q (%v)", r.Body, err)
	}
}

func TestSendMIMEOnly202IsSuccess(t *testing.T) {
	for _, status := range []int{200, 201, 204} {
		c, _, _ := newClient(t, func(w http.ResponseWriter, r *recorded) { w.WriteHeader(status) })
		err := c.SendMIME(context.Background(), "a@contoso.com", opener([]byte("x")), 1)
		if ge, ok := AsError(err); !ok || ge.Status != status {
			t.Errorf("status %d: err = %v, want a Graph error", status, err)
		}
	}
}

func TestErrorsParsed(t *testing.T) {
	c, _, _ := newClient(t, func(w http.ResponseWriter, r *recorded) {
		w.Header().Set("request-id", "rid-1")
		graphError(w, 403, CodeSendAsDenied, "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.")
	})
	err := c.SendMIME(context.Background(), "a@contoso.com", opener([]byte("x")), 1)
	ge, ok := AsError(err)
	if !ok || ge.Status != 403 || ge.Code != CodeSendAsDenied || !strings.Contains(ge.Message, "send mail on behalf") || ge.RequestID != "rid-1" || ge.Op != "sendMail" {
		t.Fatalf("err = %#v", err)
	}
	if ge.Temporary() {
		t.Error("403 is Temporary")
	}
	od := &Error{Status: 403, Code: CodeAccessDenied, Message: "Access to OData is disabled."}
	if !od.IsODataDisabled() {
		t.Error("IsODataDisabled false")
	}
}

func TestThrottlingRetriedWithinBudget(t *testing.T) {
	calls := 0
	c, rc, slept := newClient(t, func(w http.ResponseWriter, r *recorded) {
		calls++
		if calls <= 2 {
			w.Header().Set("Retry-After", "3")
			graphError(w, 429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
			return
		}
		w.WriteHeader(202)
	})
	msg := []byte("Subject: x\r\n\r\ny\r\n")
	if err := c.SendMIME(context.Background(), "a@contoso.com", opener(msg), int64(len(msg))); err != nil {
		t.Fatalf("SendMIME() = %v", err)
	}
	if len(*slept) != 2 || (*slept)[0] != 3*time.Second {
		t.Errorf("slept %v, want 2 x 3s", *slept)
	}
	reqs := rc.all()
	if len(reqs) != 3 || !bytes.Equal(reqs[2].Body, reqs[0].Body) {
		t.Errorf("%d requests; retried body equal: %v", len(reqs), len(reqs) == 3 && bytes.Equal(reqs[2].Body, reqs[0].Body))
	}
}

func TestThrottlingBeyondBudgetReturnsRetryAfter(t *testing.T) {
	c, rc, slept := newClient(t, func(w http.ResponseWriter, r *recorded) {
		w.Header().Set("Retry-After", "120")
		graphError(w, 429, "ApplicationThrottled", "throttled")
	})
	err := c.SendMIME(context.Background(), "a@contoso.com", opener([]byte("x")), 1)
	ge, ok := AsError(err)
	if !ok || ge.Status != 429 || ge.RetryAfter != 120*time.Second || !ge.Temporary() {
		t.Fatalf("err = %v", err)
	}
	if len(*slept) != 0 || len(rc.all()) != 1 {
		t.Errorf("slept %v, %d requests; a 120 s wait is beyond the budget", *slept, len(rc.all()))
	}
}

func TestUnauthorizedRetriesWithFreshToken(t *testing.T) {
	var rejected []string
	c, rc, _ := newClient(t, func(w http.ResponseWriter, r *recorded) {
		if r.Auth == "Bearer tok1" {
			graphError(w, 401, CodeInvalidToken, "Access token validation failure. Invalid audience.")
			return
		}
		w.WriteHeader(202)
	})
	c.Rejected = func(tok string) { rejected = append(rejected, tok) }
	if err := c.SendMIME(context.Background(), "a@contoso.com", opener([]byte("x")), 1); err != nil {
		t.Fatalf("SendMIME() = %v", err)
	}
	if len(rejected) != 1 || rejected[0] != "tok1" || len(rc.all()) != 2 {
		t.Errorf("rejected %v, %d requests", rejected, len(rc.all()))
	}
	// A second 401 is returned.
	c2, _, _ := newClient(t, func(w http.ResponseWriter, r *recorded) {
		graphError(w, 401, CodeInvalidToken, "Access token validation failure. Invalid audience.")
	})
	err := c2.SendMIME(context.Background(), "a@contoso.com", opener([]byte("x")), 1)
	if ge, ok := AsError(err); !ok || ge.Status != 401 || !strings.Contains(ge.Message, "Invalid audience") {
		t.Fatalf("err = %v", err)
	}
}

func TestTokenErrorPassesThrough(t *testing.T) {
	want := errors.New("needs login")
	c := &Client{BaseURL: "http://127.0.0.1:1", Token: func(context.Context) (string, error) { return "", want }}
	if err := c.SendMIME(context.Background(), "a@x", opener([]byte("x")), 1); !errors.Is(err, want) {
		t.Fatalf("err = %v", err)
	}
}

func TestTransportError(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		hj, _ := w.(http.Hijacker)
		conn, _, _ := hj.Hijack()
		conn.Close()
	}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL, Token: func(context.Context) (string, error) { return "t", nil }}
	err := c.SendMIME(context.Background(), "a@x", opener([]byte("hello")), 5)
	var te *TransportError
	if !errors.As(err, &te) || !te.Sent {
		t.Fatalf("err = %#v, want a TransportError with Sent", err)
	}
}

func TestLargeMessageCalls(t *testing.T) {
	var uploadURL string
	var mu sync.Mutex
	var uploaded bytes.Buffer
	c, rc, _ := newClient(t, func(w http.ResponseWriter, r *recorded) {
		switch {
		case r.Method == "POST" && r.Path == "/v1.0/users/a@contoso.com/messages":
			w.WriteHeader(201)
			io.WriteString(w, `{"id":"AAMk=="}`)
		case r.Method == "POST" && strings.HasSuffix(r.Path, "/attachments/createUploadSession"):
			var req struct {
				AttachmentItem map[string]any
			}
			if json.Unmarshal(r.Body, &req) != nil || req.AttachmentItem["attachmentType"] != "file" || req.AttachmentItem["name"] != "big.bin" {
				graphError(w, 400, "ErrorInvalidRequest", "bad item")
				return
			}
			w.WriteHeader(201)
			fmt.Fprintf(w, `{"uploadUrl":%q,"nextExpectedRanges":["0-"]}`, uploadURL)
		case r.Method == "PUT" && r.Path == "/upload/sess1":
			mu.Lock()
			uploaded.Write(r.Body)
			n := uploaded.Len()
			mu.Unlock()
			if r.Auth != "" {
				graphError(w, 400, "AuthorizationNotAllowed", "no bearer on upload URLs")
				return
			}
			if n == 7_000_000 {
				w.WriteHeader(201)
				return
			}
			w.WriteHeader(200)
			fmt.Fprintf(w, `{"nextExpectedRanges":["%d-"]}`, n)
		case r.Method == "POST" && strings.HasSuffix(r.Path, "/attachments"):
			w.WriteHeader(201)
		case r.Method == "POST" && strings.HasSuffix(r.Path, "/send"):
			w.WriteHeader(202)
		default:
			graphError(w, 404, "ResourceNotFound", r.Method+" "+r.Path)
		}
	})
	uploadURL = c.BaseURL + "/upload/sess1"
	ctx := context.Background()
	draft := []byte("Subject: big\r\n\r\nsee attachment\r\n")
	id, err := c.CreateDraftMIME(ctx, "a@contoso.com", opener(draft), int64(len(draft)))
	if err != nil || id != "AAMk==" {
		t.Fatalf("CreateDraftMIME() = %q, %v", id, err)
	}
	small := []byte("small attachment")
	if err := c.AddFileAttachment(ctx, "a@contoso.com", id, Attachment{Name: "s.txt", ContentType: "text/plain", Size: int64(len(small))}, opener(small)); err != nil {
		t.Fatalf("AddFileAttachment() = %v", err)
	}
	us, err := c.CreateUploadSession(ctx, "a@contoso.com", id, Attachment{Name: "big.bin", ContentType: "application/octet-stream", Size: 7_000_000})
	if err != nil {
		t.Fatalf("CreateUploadSession() = %v", err)
	}
	content := make([]byte, 7_000_000)
	rand.Read(content)
	if err := c.Upload(ctx, us, bytes.NewReader(content), int64(len(content)), 0); err != nil {
		t.Fatalf("Upload() = %v", err)
	}
	if !bytes.Equal(uploaded.Bytes(), content) {
		t.Error("uploaded bytes differ")
	}
	if err := c.SendDraft(ctx, "a@contoso.com", id); err != nil {
		t.Fatalf("SendDraft() = %v", err)
	}
	var ranges []string
	for _, r := range rc.all() {
		if r.Method == "PUT" {
			ranges = append(ranges, r.ContentRange)
			if len(r.Body) >= MaxRequestBytes {
				t.Errorf("PUT of %d bytes, want < 4 MB", len(r.Body))
			}
		}
		if strings.HasSuffix(r.Path, "/attachments") {
			var a map[string]any
			if err := json.Unmarshal(r.Body, &a); err != nil || a["contentBytes"] != base64.StdEncoding.EncodeToString(small) || a["@odata.type"] != "#microsoft.graph.fileAttachment" {
				t.Errorf("attachment JSON = %s (%v)", r.Body, err)
			}
		}
	}
	want := []string{"bytes 0-3276799/7000000", "bytes 3276800-6553599/7000000", "bytes 6553600-6999999/7000000"}
	if strings.Join(ranges, ",") != strings.Join(want, ",") {
		t.Errorf("ranges = %v, want %v", ranges, want)
	}
}

func TestUploadURLMustBeHTTPS(t *testing.T) {
	c, _, _ := newClient(t, func(w http.ResponseWriter, r *recorded) {
		w.WriteHeader(201)
		io.WriteString(w, `{"uploadUrl":"http://evil.example.com/up"}`)
	})
	if _, err := c.CreateUploadSession(context.Background(), "a@x", "id", Attachment{Name: "n", Size: 1}); err == nil {
		t.Fatal("a plain-http upload URL off loopback was accepted")
	}
}

func TestUploadErrorHidesAuthtoken(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hj, _ := w.(http.Hijacker)
		conn, _, _ := hj.Hijack()
		conn.Close()
	}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL, Token: func(context.Context) (string, error) { return "t", nil }}
	us := &UploadSession{UploadURL: srv.URL + "/AttachmentSessions('x')?authtoken=SECRET-TOKEN"}
	err := c.Upload(context.Background(), us, bytes.NewReader([]byte("abc")), 3, 0)
	if err == nil || strings.Contains(err.Error(), "SECRET-TOKEN") {
		t.Fatalf("Upload() = %v: the upload URL's token must not appear", err)
	}
}

func TestRetryAfterDate(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	if d := retryAfter(now.Add(90*time.Second).Format(http.TimeFormat), now); d != 90*time.Second {
		t.Errorf("retryAfter(date) = %v", d)
	}
	if d := retryAfter("garbage", now); d != 0 {
		t.Errorf("retryAfter(garbage) = %v", d)
	}
}
