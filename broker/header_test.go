package broker_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/credbroker/credbroker/broker"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// rawH2 is an HTTP/2 client that sends whatever headers it is told to,
// ignoring the server's advertised limits, as an attacker's would.
type rawH2 struct {
	t  *testing.T
	fr *http2.Framer
	// maxHeaderList is the server's SETTINGS_MAX_HEADER_LIST_SIZE.
	maxHeaderList uint32
}

func dialRawH2(t *testing.T, h *harness) *rawH2 {
	t.Helper()
	conf := tlsconfig.TLSClientConfig(x509bundle.NewSet(h.ca.X509Bundle()), tlsconfig.AuthorizeID(serverID))
	conf.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", h.addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	// A bound on a broken server, not a wait for state: every read below
	// expects an answer the server sends at once.
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	c := &rawH2{t: t, fr: http2.NewFramer(conn, conn)}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c
}

// request sends a unary IssueCredential request's headers with extra
// headers of the given sizes.
func (c *rawH2) request(streamID uint32, extra ...int) {
	c.t.Helper()
	if err := c.send(streamID, extra...); err != nil {
		c.t.Fatal(err)
	}
}

// send is request returning the error of a write, split over CONTINUATION
// frames as needed: a server may close the connection before a flood of
// them is all written.
func (c *rawH2) send(streamID uint32, extra ...int) error {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	fields := [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "broker"},
		{":path", credbrokerv1.BrokerService_IssueCredential_FullMethodName},
		{"content-type", "application/grpc"}, {"te", "trailers"},
	}
	for i, n := range extra {
		fields = append(fields, [2]string{fmt.Sprintf("x-padding-%d", i), strings.Repeat("a", n)})
	}
	for _, f := range fields {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			return err
		}
	}
	b := block.Bytes()
	const chunk = 16 << 10 // the default SETTINGS_MAX_FRAME_SIZE
	first := b[:min(chunk, len(b))]
	b = b[len(first):]
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: streamID, BlockFragment: first, EndStream: true, EndHeaders: len(b) == 0}); err != nil {
		return err
	}
	for len(b) > 0 {
		next := b[:min(chunk, len(b))]
		b = b[len(next):]
		if err := c.fr.WriteContinuation(streamID, len(b) == 0, next); err != nil {
			return err
		}
	}
	return nil
}

// closedByPeer reports whether err means the server closed the connection.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// answer reads frames until the server answers streamID with headers
// (served), RST_STREAM (stream refused) or GOAWAY or EOF (connection
// closed), and reports which.
func (c *rawH2) answer(streamID uint32) (served bool, rst http2.ErrCode, closed bool) {
	c.t.Helper()
	for {
		f, err := c.fr.ReadFrame()
		if closedByPeer(err) {
			return false, 0, true
		}
		if err != nil {
			c.t.Fatalf("reading the answer to stream %d: %v", streamID, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			if v, ok := f.Value(http2.SettingMaxHeaderListSize); ok {
				c.maxHeaderList = v
			}
			if err := c.fr.WriteSettingsAck(); closedByPeer(err) {
				return false, 0, true
			} else if err != nil {
				c.t.Fatal(err)
			}
		case *http2.GoAwayFrame:
			return false, 0, true
		case *http2.HeadersFrame:
			if f.StreamID == streamID {
				return true, 0, false
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == streamID {
				return false, f.ErrCode, false
			}
		}
	}
}

// TestOversizedHeadersAreRefused: a request whose header list exceeds
// broker.MaxHeaderBytes is refused before the broker reads it, even from a
// client that ignores the advertised limit. A modest excess resets the
// stream and the connection goes on (a request with a JWT-SVID-sized header
// is served on it); a flood (a single header longer than the whole limit, or
// more CONTINUATION frames past it) closes the connection, as x/net/http2
// does to avoid decoding what it will discard. Either way a new connection
// is served.
func TestOversizedHeadersAreRefused(t *testing.T) {
	h := newHarness(t)
	c := dialRawH2(t, h)
	// Three 6 KiB headers: each fine, together over the limit; Huffman-coded
	// they fit one frame.
	c.request(1, 6<<10, 6<<10, 6<<10)
	if served, code, closed := c.answer(1); served || closed {
		t.Fatalf("header list of 18 KiB: served %v, connection closed %v; want the stream reset", served, closed)
	} else if code == http2.ErrCodeNo {
		t.Fatalf("stream reset with %v", code)
	}
	if c.maxHeaderList != broker.MaxHeaderBytes {
		t.Errorf("server advertises SETTINGS_MAX_HEADER_LIST_SIZE %d, want %d", c.maxHeaderList, broker.MaxHeaderBytes)
	}
	c.request(3, 8<<10) // as large as a JWT-SVID may be
	if served, code, closed := c.answer(3); !served {
		t.Fatalf("8 KiB header refused (RST_STREAM %v, closed %v)", code, closed)
	}

	for name, sizes := range map[string][]int{
		"one 20 KiB header": {20 << 10},
		"64 KiB of headers": {8 << 10, 8 << 10, 8 << 10, 8 << 10, 8 << 10, 8 << 10, 8 << 10, 8 << 10},
	} {
		c := dialRawH2(t, h)
		if err := c.send(1, sizes...); err != nil && !closedByPeer(err) {
			t.Fatal(err)
		} else if err == nil {
			if served, code, closed := c.answer(1); served || (!closed && code == http2.ErrCodeNo) {
				t.Fatalf("%s: served %v, RST_STREAM %v, closed %v; want it refused", name, served, code, closed)
			}
		}
		fresh := dialRawH2(t, h)
		fresh.request(1)
		if served, code, closed := fresh.answer(1); !served {
			t.Fatalf("after %s, a new connection is refused (RST_STREAM %v, closed %v)", name, code, closed)
		}
	}
}
