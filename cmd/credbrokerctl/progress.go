package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"
)

// progressBar draws the progress of a long operation (audit verify, audit
// export) on one line of a terminal, redrawn in place:
//
//	verify [===============>              ] 1048576/2100000 records  49%
//
// It goes to stderr, and only when stderr is a terminal and the output is
// for people (-o table): in a pipe, a log or with -o json nothing is drawn.
// A nil *progressBar draws nothing.
type progressBar struct {
	w     io.Writer
	label string
	drawn int // per-mille last drawn; -1 before the first draw
}

// progressBar returns a bar labelled label, or nil when none is to be drawn.
func (a *app) progressBar(label string) *progressBar {
	if a.jsonOutput() || a.isTerminal == nil || !a.isTerminal(a.stderr) {
		return nil
	}
	return &progressBar{w: a.stderr, label: label, drawn: -1}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// barWidth is the number of cells between the brackets.
const barWidth = 30

// update draws done of total, redrawing only when the shown per mille
// changes, so that millions of updates cost millions of comparisons, not
// writes.
func (p *progressBar) update(done, total uint64) {
	if p == nil || total == 0 {
		return
	}
	pm := int(min(done, total) * 1000 / total)
	if pm == p.drawn {
		return
	}
	p.drawn = pm
	fill := pm * barWidth / 1000
	bar := strings.Repeat("=", fill)
	if fill < barWidth {
		bar += ">" + strings.Repeat(" ", barWidth-fill-1)
	}
	fmt.Fprintf(p.w, "\r%s [%s] %d/%d records %3d%%", p.label, bar, done, total, pm/10)
}

// clear erases the bar, so that what follows starts on a clean line.
func (p *progressBar) clear() {
	if p == nil || p.drawn < 0 {
		return
	}
	fmt.Fprint(p.w, "\r\x1b[K")
	p.drawn = -1
}
