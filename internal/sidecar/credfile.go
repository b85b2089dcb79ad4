package sidecar

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/credbroker/credbroker/internal/keyfile"
)

// CredentialsFile is an AWS shared-credentials file with one [NAME] section
// per credential, for tools that read ~/.aws/credentials rather than the
// container endpoint. Every Update rewrites the whole file atomically
// (temporary file in the same directory, fsync, rename) with mode 0600.
// The file holds secrets: prefer the endpoint, which needs no file.
type CredentialsFile struct {
	path  string
	mu    sync.Mutex
	creds map[string]Credential
}

// NewCredentialsFile returns a writer for path; nothing is written before
// the first Update.
func NewCredentialsFile(path string) *CredentialsFile {
	return &CredentialsFile{path: path, creds: map[string]Credential{}}
}

// Update records c as the credential named name and rewrites the file.
func (f *CredentialsFile) Update(name string, c Credential) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creds[name] = c
	if err := keyfile.Write(f.path, f.render(), 0o600); err != nil {
		return fmt.Errorf("sidecar: credentials file: %w", err)
	}
	return nil
}

// Remove takes the credential named name out of the file (a revoked one)
// and rewrites it; a name not in the file changes nothing.
func (f *CredentialsFile) Remove(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.creds[name]; !ok {
		return nil
	}
	delete(f.creds, name)
	if err := keyfile.Write(f.path, f.render(), 0o600); err != nil {
		return fmt.Errorf("sidecar: credentials file: %w", err)
	}
	return nil
}

// Observer returns an Observer that writes each new credential (failed
// attempts change nothing) and hands a failed write's error to onErr.
func (f *CredentialsFile) Observer(onErr func(error)) Observer {
	return func(spec Spec, c Credential, err error) {
		if err != nil {
			return
		}
		if err := f.Update(spec.Name, c); err != nil && onErr != nil {
			onErr(err)
		}
	}
}

func (f *CredentialsFile) render() []byte {
	var b bytes.Buffer
	b.WriteString("# Written by credbroker-sidecar and replaced on every refresh; do not edit.\n")
	names := make([]string, 0, len(f.creds))
	for n := range f.creds {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		c := f.creds[n]
		fmt.Fprintf(&b, "\n[%s]\n# expires %s\naws_access_key_id = %s\naws_secret_access_key = %s\naws_session_token = %s\n",
			n, c.Expiration.UTC().Format(time.RFC3339), oneLine(c.AccessKeyID), oneLine(c.SecretAccessKey), oneLine(c.SessionToken))
	}
	return b.Bytes()
}

// oneLine keeps a value from breaking out of its INI line.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return -1
		}
		return r
	}, s)
}
