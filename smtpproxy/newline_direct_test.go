package smtpproxy

import (
	"bytes"
	"io"
	"math/rand"
	"testing"
)

// bareNewlines counts the bare CRs and LFs in in (crlfReader.fixed).
func bareNewlines(in []byte) (n int64) {
	for i := 0; i < len(in); i++ {
		if in[i] == '\r' && i+1 < len(in) && in[i+1] == '\n' {
			i++
		} else if in[i] == '\r' || in[i] == '\n' {
			n++
		}
	}
	return n
}

// chunked returns src in reads of the given sizes (cycled), as a network
// connection would.
type chunked struct {
	src   []byte
	sizes []int
	i     int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.src) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), len(c.src), c.sizes[c.i%len(c.sizes)])
	c.i++
	copy(p, c.src[:n])
	c.src = c.src[n:]
	return n, nil
}

// TestCRLFReaderDirectMatchesReference drives both of crlfReader's paths
// (reads of at least crlfDirectMin bytes go straight into the caller's
// buffer when the input is well formed) with random bodies, network
// chunkings and read sizes, against normalise and bareNewlines.
func TestCRLFReaderDirectMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	alphabet := []byte("\r\n.ab")
	for iter := range 3000 {
		var in []byte
		switch iter % 3 {
		case 0: // mostly well formed, a stray CR or LF now and then
			for range rng.Intn(4000) {
				switch r := rng.Intn(200); {
				case r == 0:
					in = append(in, '\r')
				case r == 1:
					in = append(in, '\n')
				case r < 30:
					in = append(in, '\r', '\n')
				default:
					in = append(in, 'x')
				}
			}
		case 1: // random bytes from a small alphabet
			for range rng.Intn(3000) {
				in = append(in, alphabet[rng.Intn(len(alphabet))])
			}
		case 2: // well formed, ending in CR or CRLF across chunk edges
			for range rng.Intn(200) {
				in = append(in, bytes.Repeat([]byte("y"), rng.Intn(90))...)
				in = append(in, '\r', '\n')
			}
			if rng.Intn(2) == 0 {
				in = append(in, '\r')
			}
		}
		netSizes := []int{1 + rng.Intn(2000), 1 + rng.Intn(5), 1 + rng.Intn(700)}
		readSizes := []int{crlfDirectMin + rng.Intn(3000), 1 + rng.Intn(600), crlfReadSize + 100}
		cr := newCRLFReader(&chunked{src: in, sizes: netSizes})
		var got []byte
		for k := 0; ; k++ {
			buf := make([]byte, readSizes[k%len(readSizes)])
			n, err := cr.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		cr.release()
		want, fixed := normalise(in), bareNewlines(in)
		if !bytes.Equal(got, want) || cr.fixed != fixed {
			t.Fatalf("input %q (net %v, reads %v):\ngot  %q fixed %d\nwant %q fixed %d", in, netSizes, readSizes, got, cr.fixed, want, fixed)
		}
	}
}

func TestWellFormed(t *testing.T) {
	for in, want := range map[string]bool{
		"": true, "abc": true, "a\r\nb\r\n": true, "a\r\nb\r": true, "\r": true,
		"\n": false, "a\nb": false, "a\rb": false, "\r\r\n": false, "\r\n\n": false,
		"\n\r": false, "a\r\n\r": true, "\r\r": false,
	} {
		if got := wellFormed([]byte(in)); got != want {
			t.Errorf("wellFormed(%q) = %v, want %v", in, got, want)
		}
	}
}
