package sidecar

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
)

func logTo(b *bytes.Buffer) *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }
func fmtV(v any) string                  { return fmt.Sprintf("%v %+v %s", v, v, v) }
func fmtSharpV(v any) string             { return fmt.Sprintf("%#v", v) }

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
