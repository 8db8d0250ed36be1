package smtpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/mail"
	"strings"
)

// maxHeaderBytes bounds the header block the Graph path parses and
// rewrites (the body is never held in memory).
const maxHeaderBytes = 1 << 20

var (
	errHeaderTooLarge = errors.New("the message header is larger than 1 MiB")
	errBadRecipients  = errors.New("a To, Cc or Bcc header cannot be parsed")
)

// recipientHeader is the result of fitting a message's recipient headers
// to its SMTP envelope for Microsoft Graph, which delivers to the header
// recipients and has no envelope.
type recipientHeader struct {
	header   []byte   // the rewritten header block, ending with the blank line
	bodyOff  int64    // where the body starts in the original message
	stripped []string // header recipients not in the envelope: removed
	added    []string // envelope recipients not in To/Cc/Bcc: added as Bcc
}

// fitRecipients reads the header block of a message and rewrites it for
// Graph:
//   - To and Cc keep only addresses that are envelope recipients (a header
//     recipient the client did not RCPT must not receive the message:
//     relays split one message into several transactions, and each
//     transaction would otherwise reach every header recipient);
//   - every original Bcc field is dropped and one Bcc field lists the
//     envelope recipients that are not in To/Cc after that;
//   - every other field is kept byte for byte, in order. A To or Cc field
//     that loses nothing is kept byte for byte too.
func fitRecipients(r io.Reader, envelope []string) (*recipientHeader, error) {
	env := map[string]bool{}
	for _, a := range envelope {
		env[strings.ToLower(a)] = true
	}
	br := bufio.NewReaderSize(r, 4096)
	var fields [][]byte
	var n int64
	ended := false
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A very long header line: gather it.
			buf := append([]byte(nil), line...)
			for err == bufio.ErrBufferFull {
				if int64(len(buf))+n > maxHeaderBytes {
					return nil, errHeaderTooLarge
				}
				line, err = br.ReadSlice('\n')
				buf = append(buf, line...)
			}
			line = buf
		}
		n += int64(len(line))
		if n > maxHeaderBytes {
			return nil, errHeaderTooLarge
		}
		if len(line) == 0 && err != nil {
			break // EOF: a message with no body
		}
		if string(line) == "\r\n" || string(line) == "\n" {
			ended = true
			break
		}
		if (line[0] == ' ' || line[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1] = append(fields[len(fields)-1], line...)
		} else {
			fields = append(fields, append([]byte(nil), line...))
		}
		if err != nil {
			break
		}
	}
	rh := &recipientHeader{bodyOff: n}
	inHeaders := map[string]bool{}
	var out bytes.Buffer
	for _, f := range fields {
		name, value, ok := bytes.Cut(f, []byte(":"))
		lname := strings.ToLower(strings.TrimSpace(string(name)))
		if !ok || (lname != "to" && lname != "cc" && lname != "bcc") {
			out.Write(f)
			if !bytes.HasSuffix(f, []byte("\n")) {
				out.WriteString("\r\n")
			}
			continue
		}
		list, err := parseAddressList(string(value))
		if err != nil {
			return nil, errBadRecipients
		}
		var kept []*mail.Address
		for _, a := range list {
			if env[strings.ToLower(a.Address)] {
				kept = append(kept, a)
			} else {
				rh.stripped = append(rh.stripped, a.Address)
			}
		}
		if lname == "bcc" {
			continue // rebuilt below from the envelope
		}
		for _, a := range kept {
			inHeaders[strings.ToLower(a.Address)] = true
		}
		switch {
		case len(kept) == len(list):
			out.Write(f)
			if !bytes.HasSuffix(f, []byte("\n")) {
				out.WriteString("\r\n")
			}
		case len(kept) > 0:
			writeAddressField(&out, strings.TrimSpace(string(name)), kept)
		}
	}
	var bcc []*mail.Address
	seen := map[string]bool{}
	for _, a := range envelope {
		la := strings.ToLower(a)
		if inHeaders[la] || seen[la] {
			continue
		}
		seen[la] = true
		bcc = append(bcc, &mail.Address{Address: a})
		rh.added = append(rh.added, a)
	}
	if len(bcc) > 0 {
		writeAddressField(&out, "Bcc", bcc)
	}
	out.WriteString("\r\n")
	if !ended {
		rh.bodyOff = n
	}
	rh.header = out.Bytes()
	return rh, nil
}

func parseAddressList(v string) ([]*mail.Address, error) {
	v = strings.NewReplacer("\r\n", "", "\n", "").Replace(v)
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	return mail.ParseAddressList(v)
}

// writeAddressField writes "Name: a, b" folded after each address.
func writeAddressField(w *bytes.Buffer, name string, list []*mail.Address) {
	w.WriteString(name)
	w.WriteString(": ")
	for i, a := range list {
		if i > 0 {
			w.WriteString(",\r\n ")
		}
		if a.Name == "" {
			w.WriteString("<" + a.Address + ">")
		} else {
			w.WriteString(a.String())
		}
	}
	w.WriteString("\r\n")
}
