package splice

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"runtime"
	"slices"
	"testing"
	"time"
)

// pair returns two connected TCP conns on loopback.
func pair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return a, <-ch
}

func TestRunForwardsBufferedBytesBothWays(t *testing.T) {
	client, clientSide := pair(t) // client <-> bridge's client conn
	upSide, server := pair(t)     // bridge's upstream conn <-> server

	// Bytes the bridge's readers already read ahead before the splice.
	client.Write([]byte("a2 SELECT INBOX\r\n"))
	server.Write([]byte("* 3 EXISTS\r\n"))
	cr := bufio.NewReader(clientSide)
	ur := bufio.NewReader(upSide)
	cr.Peek(1)
	ur.Peek(1)

	done := make(chan Stats, 1)
	go func() { done <- Run(context.Background(), clientSide, cr, upSide, ur, 0) }()

	buf := make([]byte, len("a2 SELECT INBOX\r\n"))
	if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "a2 SELECT INBOX\r\n" {
		t.Fatalf("server got %q, %v", buf, err)
	}
	buf = make([]byte, len("* 3 EXISTS\r\n"))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "* 3 EXISTS\r\n" {
		t.Fatalf("client got %q, %v", buf, err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	go server.Write(big)
	got := make([]byte, len(big))
	if _, err := io.ReadFull(client, got); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("1 MiB download corrupted: %v", err)
	}
	server.Close() // upstream goes away: the client side must close too
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Error("client conn still open after upstream closed")
	}
	st := <-done
	if st.Up != int64(len("a2 SELECT INBOX\r\n")) || st.Down != int64(len("* 3 EXISTS\r\n")+len(big)) {
		t.Errorf("stats = %+v", st)
	}
	client.Close()
}

func TestRunIdleAndCancel(t *testing.T) {
	client, cs := pair(t)
	us, server := pair(t)
	defer client.Close()
	defer server.Close()
	start := time.Now()
	Run(context.Background(), cs, nil, us, nil, 100*time.Millisecond)
	if d := time.Since(start); d < 90*time.Millisecond || d > 5*time.Second {
		t.Errorf("idle close after %v", d)
	}

	client2, cs2 := pair(t)
	us2, server2 := pair(t)
	defer client2.Close()
	defer server2.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, cs2, nil, us2, nil, 0); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after ctx cancel")
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	for i := 0; i < 20; i++ {
		client, cs := pair(t)
		us, server := pair(t)
		done := make(chan struct{})
		go func() { Run(context.Background(), cs, nil, us, nil, time.Minute); close(done) }()
		client.Close()
		<-done
		server.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("goroutines: %d before, %d after", before, n)
	}
}

// BenchmarkSplice measures the copy path for 1 MiB server->client chunks.
func BenchmarkSplice(b *testing.B) {
	client, cs := pair(b)
	us, server := pair(b)
	go Run(context.Background(), cs, bufio.NewReader(cs), us, bufio.NewReader(us), 0)
	chunk := bytes.Repeat([]byte{'x'}, 1<<20)
	buf := make([]byte, len(chunk))
	b.SetBytes(int64(len(chunk)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		go server.Write(chunk)
		if _, err := io.ReadFull(client, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	client.Close()
	server.Close()
}

// chunkReader returns the given chunk sizes in turn and records the buffer
// size of every Read.
type chunkReader struct {
	chunks []int
	sizes  []int
	next   byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.sizes = append(r.sizes, len(p))
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := min(r.chunks[0], len(p))
	r.chunks = r.chunks[1:]
	for i := range n {
		p[i] = r.next
		r.next++
	}
	return n, nil
}

// TestCopyBufferSizes: a direction reads with the small buffer until one
// read fills it, uses the large buffer while data flows, and goes back to
// the small one (releasing the large) after a short read, which is what an
// idle session blocks in.
func TestCopyBufferSizes(t *testing.T) {
	r := &chunkReader{chunks: []int{10, SmallBuffer, LargeBuffer, 5000, 7, 3}}
	var out bytes.Buffer
	n := copyConn(&out, r, nil, nil)
	want := []int{SmallBuffer, SmallBuffer, LargeBuffer, LargeBuffer, LargeBuffer, SmallBuffer, SmallBuffer}
	if !slices.Equal(r.sizes, want) {
		t.Errorf("read sizes %v, want %v", r.sizes, want)
	}
	total := 10 + SmallBuffer + LargeBuffer + 5000 + 7 + 3
	if n != int64(total) || out.Len() != total {
		t.Fatalf("copied %d (%d in buffer), want %d", n, out.Len(), total)
	}
	for i, b := range out.Bytes() {
		if b != byte(i) {
			t.Fatalf("byte %d = %d, want %d", i, b, byte(i))
		}
	}
}

// TestRunDropsReaders: once a running splice has forwarded what the
// pre-splice readers held, nothing keeps them (or their buffers) alive, so
// an idle session holds only the small copy buffers.
func TestRunDropsReaders(t *testing.T) {
	client, clientSide := pair(t)
	upSide, server := pair(t)
	defer client.Close()
	defer server.Close()
	client.Write([]byte("a2 IDLE\r\n"))
	server.Write([]byte("* OK still here\r\n"))
	freed := make(chan string, 2)
	cr := bufio.NewReaderSize(clientSide, 64<<10)
	ur := bufio.NewReaderSize(upSide, 64<<10)
	cr.Peek(1)
	ur.Peek(1)
	runtime.SetFinalizer(cr, func(*bufio.Reader) { freed <- "client" })
	runtime.SetFinalizer(ur, func(*bufio.Reader) { freed <- "upstream" })

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func(cr, ur *bufio.Reader) { Run(ctx, clientSide, cr, upSide, ur, 0); close(done) }(cr, ur)
	cr, ur = nil, nil
	// The buffered bytes arrive: both readers have been drained.
	if _, err := io.ReadFull(server, make([]byte, len("a2 IDLE\r\n"))); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(client, make([]byte, len("* OK still here\r\n"))); err != nil {
		t.Fatal(err)
	}
	// The splice is still running (both directions blocked in Read).
	got := map[string]bool{}
	for i := 0; i < 20 && len(got) < 2; i++ {
		runtime.GC()
		for drained := false; !drained; {
			select {
			case who := <-freed:
				got[who] = true
			default:
				drained = true
			}
		}
		runtime.Gosched()
	}
	select {
	case <-done:
		t.Fatal("splice ended early")
	default:
	}
	cancel()
	<-done
	if !got["client"] || !got["upstream"] {
		t.Errorf("readers still referenced during the splice: freed %v", got)
	}
}
