package sidecar

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/credbroker/credbroker/internal/keyfile"
)

// TokenBytes is the number of random bytes in a generated token; the token
// is their unpadded base64url encoding.
const TokenBytes = 32

// maxTokenFile bounds what LoadOrCreateToken reads.
const maxTokenFile = 4 << 10

// LoadOrCreateToken returns the authorization token kept in path. When path
// does not exist it makes a token from TokenBytes of random and creates the
// file with mode perm (0600 normally; 0640 when a controller container in
// the same pod reads it through a shared fsGroup), never replacing a file
// another process created first. An existing file must be a regular file
// not readable by others, and hold exactly the token: the AWS SDKs send the
// file's contents verbatim, so surrounding whitespace such as a trailing
// newline is refused rather than trimmed. created tells which happened.
func LoadOrCreateToken(path string, perm fs.FileMode, random io.Reader) (token string, created bool, err error) {
	if perm&0o007 != 0 || perm&0o600 != 0o600 {
		return "", false, fmt.Errorf("sidecar: token file mode %#o: it must be owner read-write and grant nothing to others", perm)
	}
	token, err = readToken(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return token, false, err
	}
	b := make([]byte, TokenBytes)
	if _, err := io.ReadFull(random, b); err != nil {
		return "", false, fmt.Errorf("sidecar: generating token: %w", err)
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	if err := keyfile.Create(path, []byte(token)); err != nil {
		if errors.Is(err, fs.ErrExist) { // lost a race: use theirs
			token, err = readToken(path)
			return token, false, err
		}
		return "", false, fmt.Errorf("sidecar: token file: %w", err)
	}
	if perm != 0o600 {
		if err := os.Chmod(path, perm); err != nil {
			return "", false, fmt.Errorf("sidecar: token file: %w", err)
		}
	}
	return token, true, nil
}

func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("sidecar: token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("sidecar: token file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("sidecar: token file %s is not a regular file", path)
	}
	if p := fi.Mode().Perm(); p&0o007 != 0 {
		return "", fmt.Errorf("sidecar: token file %s has mode %#o: others must have no access (chmod o-rwx %s)", path, p, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFile+1))
	if err != nil {
		return "", fmt.Errorf("sidecar: token file: %w", err)
	}
	switch tok := string(b); {
	case len(b) > maxTokenFile:
		return "", fmt.Errorf("sidecar: token file %s is larger than %d bytes", path, maxTokenFile)
	case strings.TrimSpace(tok) == "":
		return "", fmt.Errorf("sidecar: token file %s is empty", path)
	case strings.TrimSpace(tok) != tok:
		return "", fmt.Errorf("sidecar: token file %s has leading or trailing whitespace (a trailing newline?); the AWS SDKs send it verbatim, so write it without (printf %%s)", path)
	case strings.ContainsFunc(tok, func(r rune) bool { return r < 0x21 || r > 0x7e }):
		return "", fmt.Errorf("sidecar: token file %s holds characters that cannot go in an HTTP header (use printable ASCII)", path)
	default:
		return tok, nil
	}
}
