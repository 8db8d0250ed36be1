package smtp

// oauthbridge patch tests: the patched dataReader and lineLimitReader must
// give exactly what v0.25.1's byte-at-a-time versions (kept below as the
// reference) give, for any input and any read sizes.

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand"
	"testing"
)

// refDataReader is v0.25.1's dataReader.Read, unchanged.
type refDataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64
}

func (r *refDataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}
	const (
		stateBeginLine = iota
		stateDot
		stateDotCR
		stateCR
		stateData
		stateEOF
	)
	for n < len(b) && r.state != stateEOF {
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			r.state = stateData
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			r.state = stateData
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		b[n] = c
		n++
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}
	if r.limited {
		r.n -= int64(n)
	}
	return
}

// refLineLimitReader is v0.25.1's lineLimitReader.Read, unchanged.
type refLineLimitReader struct {
	R             io.Reader
	LineLimit     int
	curLineLength int
}

func (r *refLineLimitReader) Read(b []byte) (int, error) {
	if r.curLineLength > r.LineLimit && r.LineLimit > 0 {
		return 0, ErrTooLongLine
	}
	n, err := r.R.Read(b)
	if err != nil {
		return n, err
	}
	if r.LineLimit == 0 {
		return n, nil
	}
	for _, chr := range b[:n] {
		if chr == '\n' {
			r.curLineLength = 0
		}
		r.curLineLength++
		if r.curLineLength > r.LineLimit {
			return 0, ErrTooLongLine
		}
	}
	return n, nil
}

// pieces returns src in reads of the given sizes (cycled), as a network
// connection would.
type pieces struct {
	src   []byte
	sizes []int
	i     int
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.src) == 0 {
		return 0, io.EOF
	}
	n := p.sizes[p.i%len(p.sizes)]
	p.i++
	if n > len(b) {
		n = len(b)
	}
	if n > len(p.src) {
		n = len(p.src)
	}
	copy(b, p.src[:n])
	p.src = p.src[n:]
	return n, nil
}

// drain reads r with reads of the given sizes (cycled) until an error and
// returns all bytes and the first error; after io.EOF it reads the rest of
// the underlying stream from rest, as go-smtp's next command would.
func drain(r io.Reader, sizes []int) ([]byte, error) {
	var out []byte
	size := 0
	for _, s := range sizes {
		if s > size {
			size = s
		}
	}
	buf := make([]byte, size)
	for i := 0; ; i++ {
		n, err := r.Read(buf[:sizes[i%len(sizes)]])
		out = append(out, buf[:n]...)
		if err != nil {
			return out, err
		}
		if i > 1<<20 {
			return out, errors.New("no progress")
		}
	}
}

// compareData runs the patched and the reference reader over input and
// requires the same bytes, the same error and the same bytes left behind.
func compareData(t *testing.T, input []byte, netSizes, readSizes []int, limit int64, bufSize int) {
	t.Helper()
	run := func(patched bool) ([]byte, error, []byte) {
		br := bufio.NewReaderSize(&pieces{src: input, sizes: netSizes}, bufSize)
		var r io.Reader
		if patched {
			r = &dataReader{r: br, limited: limit > 0, n: limit}
		} else {
			r = &refDataReader{r: br, limited: limit > 0, n: limit}
		}
		out, err := drain(r, readSizes)
		rest, _ := io.ReadAll(br)
		return out, err, rest
	}
	gotOut, gotErr, gotRest := run(true)
	wantOut, wantErr, wantRest := run(false)
	if !bytes.Equal(gotOut, wantOut) || gotErr != wantErr || !bytes.Equal(gotRest, wantRest) {
		t.Fatalf("input %q (net %v, reads %v, limit %d):\npatched   %q, %v, rest %q\nreference %q, %v, rest %q",
			input, netSizes, readSizes, limit, gotOut, gotErr, gotRest, wantOut, wantErr, wantRest)
	}
}

func compareLineLimit(t *testing.T, input []byte, netSizes, readSizes []int, limit int) {
	t.Helper()
	run := func(patched bool) ([]byte, error) {
		src := &pieces{src: input, sizes: netSizes}
		var r io.Reader
		if patched {
			r = &lineLimitReader{R: src, LineLimit: limit}
		} else {
			r = &refLineLimitReader{R: src, LineLimit: limit}
		}
		out, err := drain(r, readSizes)
		// A reader that failed must keep failing.
		if err == ErrTooLongLine {
			if _, err2 := r.Read(make([]byte, 16)); err2 != ErrTooLongLine {
				return out, errors.New("ErrTooLongLine not sticky")
			}
		}
		return out, err
	}
	gotOut, gotErr := run(true)
	wantOut, wantErr := run(false)
	if !bytes.Equal(gotOut, wantOut) || gotErr != wantErr {
		t.Fatalf("input %q (net %v, reads %v, limit %d):\npatched   %q, %v\nreference %q, %v",
			input, netSizes, readSizes, limit, gotOut, gotErr, wantOut, wantErr)
	}
}

var transcripts = []string{
	"",
	".\r\n",
	"..\r\n.\r\n",
	".x\r\n.\r\n",
	"a\r\n.\r\nMAIL FROM:<x>\r\n",
	"a\r\r\n.\r\nrest",
	"a\n.\nb\r\n.\r\n",
	"\r.\r\n.\r\n",
	"a\r\n.\rx\r\n.\r\n",
	"a\r\n..\r\n...\r\n.x.\r\n\r\n\r\n.\r\nQUIT\r\n",
	"no end",
	"no end\r\n.",
	"no end\r\n.\r",
	"\x00\xff\x80binary\r\n\x1b.\r\n.\r\n",
	"line\rCR only\rline\nLF only\n.\r\n",
	"a\r\n\r\n.x\r\n.\r\n",
	"a\r\n\r\n.\r\nrest",
	"a\r\n\r\r\n.\r\n",
	"a\r\nb\r\nc\r\n..d\r\ne\r\n.\r\n",
}

func TestPatchedDataReaderTranscripts(t *testing.T) {
	long := bytes.Repeat([]byte("x"), 100000)
	inputs := append([]string{}, transcripts...)
	inputs = append(inputs, string(long)+"\r\n.\r\n", "."+string(long)+"\r\n.\r\n")
	for _, in := range inputs {
		nets := [][]int{{1}, {2, 3}, {7}, {4096}, {1 << 16}}
		if len(in) > 1000 {
			nets = nets[3:]
		}
		for _, net := range nets {
			for _, reads := range [][]int{{1}, {3, 1}, {32 << 10}} {
				for _, limit := range []int64{0, 1, 5, 1000} {
					compareData(t, []byte(in), net, reads, limit, 16)
					compareData(t, []byte(in), net, reads, limit, 4096)
				}
			}
		}
	}
}

func TestPatchedLineLimitTranscripts(t *testing.T) {
	for _, in := range transcripts {
		for _, limit := range []int{0, 1, 2, 3, 5, 10, 1000} {
			for _, net := range [][]int{{1}, {3}, {4096}} {
				compareLineLimit(t, []byte(in), net, []int{4096}, limit)
				compareLineLimit(t, []byte(in), net, []int{2, 5}, limit)
			}
		}
	}
}

// randomBody is mostly the bytes that matter to the state machines.
func randomBody(rng *rand.Rand) []byte {
	alphabet := []byte{'.', '.', '\r', '\r', '\n', '\n', 'a', 'b', 0, 0xff}
	b := make([]byte, rng.Intn(300))
	for i := range b {
		if rng.Intn(2) == 0 {
			b[i] = alphabet[rng.Intn(len(alphabet))]
		} else {
			b[i] = 'a' + byte(rng.Intn(3))
		}
	}
	return b
}

func randomSizes(rng *rand.Rand) []int {
	s := make([]int, 1+rng.Intn(4))
	for i := range s {
		s[i] = 1 + rng.Intn(40)
	}
	return s
}

func TestPatchedReadersRandom(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 20000; i++ {
		in := randomBody(rng)
		compareData(t, in, randomSizes(rng), randomSizes(rng), int64(rng.Intn(3)*rng.Intn(200)), 16+rng.Intn(64))
		compareLineLimit(t, in, randomSizes(rng), randomSizes(rng), rng.Intn(3)*rng.Intn(40))
	}
}

func FuzzPatchedDataReader(f *testing.F) {
	for _, tr := range transcripts {
		f.Add([]byte(tr), uint8(3), uint8(5), uint16(0))
	}
	f.Fuzz(func(t *testing.T, in []byte, netSize, readSize uint8, limit uint16) {
		net := []int{int(netSize)%64 + 1, 1}
		reads := []int{int(readSize)%64 + 1, 2}
		compareData(t, in, net, reads, int64(limit), 16)
		compareLineLimit(t, in, net, reads, int(limit)%128)
	})
}
