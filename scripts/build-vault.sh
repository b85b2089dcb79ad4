#!/usr/bin/env bash
# build-vault.sh VERSION OUT — build HashiCorp Vault VERSION from its Go module
# source and write the binary to OUT (atomically: OUT is either the old file or
# the complete new binary, never a partial one).
#
# `go install github.com/hashicorp/vault@VERSION` refuses because the module's
# go.mod has replace directives pointing at folders (api/, sdk/, api/auth/*)
# that are not in the module zip. So: download the module, copy it somewhere
# writable, drop those replaces (the released api and sdk versions its go.mod
# requires are then used), and adapt the few call sites whose signatures
# differ in the released sdk. Every patch must match exactly once, or the
# script stops: a new VERSION that needs different patches fails loudly here
# instead of building something subtly different.
#
# Needs only the Go toolchain (kept local: GOTOOLCHAIN=local) and the Go
# module proxy. Cold build: about 15 minutes on 2 cores, ~6 GB of memory.
set -euo pipefail

if [ $# -ne 2 ]; then
	echo "usage: $0 VERSION OUT   (e.g. $0 v1.21.4 ~/.cache/credbroker/vault-v1.21.4/vault)" >&2
	exit 2
fi
version=$1
out=$2
go=${GO:-go}

# The pinned build must not depend on the caller's Go settings.
export GOTOOLCHAIN=local GOWORK=off GOFLAGS="-mod=mod -buildvcs=false"

say() { echo "build-vault: $*"; }
die() { echo "build-vault: $*" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/credbroker-vault-build.XXXXXX")
tmp=
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work" ${tmp:+"$tmp"}; }
trap cleanup EXIT

# patch FILE OLD NEW replaces the one occurrence of the literal text OLD in
# FILE with NEW, and fails unless OLD occurs exactly once.
patch() {
	perl -e '
		my ($f, $old, $new) = @ARGV;
		open(my $in, "<", $f) or die "build-vault: patch: $f: $!\n";
		my $s = do { local $/; <$in> };
		close($in);
		my $n = () = $s =~ /\Q$old\E/g;
		$n == 1 or die "build-vault: patch: $f: expected exactly one occurrence of\n    $old\nfound $n (does this VERSION need different patches?)\n";
		$s =~ s/\Q$old\E/$new/;
		open(my $o, ">", $f) or die "build-vault: patch: $f: $!\n";
		print $o $s or die "build-vault: patch: $f: $!\n";
		close($o) or die "build-vault: patch: $f: $!\n";
	' "src/$1" "$2" "$3" || exit 1
	say "patched $1"
}

cd "$work"
say "downloading github.com/hashicorp/vault@$version source"
dir=$("$go" mod download -json "github.com/hashicorp/vault@$version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -n "$dir" ] && [ -f "$dir/go.mod" ] || die "go mod download github.com/hashicorp/vault@$version gave no source directory"
cp -R "$dir" src
chmod -R u+w src

# The replaced folders are not in the module zip; use the released versions
# that go.mod requires instead.
for m in api api/auth/approle api/auth/kubernetes api/auth/userpass sdk; do
	grep -qxF "replace github.com/hashicorp/vault/$m => ./$m" src/go.mod ||
		die "src/go.mod has no 'replace github.com/hashicorp/vault/$m => ./$m' (does this VERSION need different patches?)"
	[ ! -e "src/$m/go.mod" ] || die "src/$m is in the module zip; dropping its replace is not what this VERSION needs"
	(cd src && "$go" mod edit -dropreplace="github.com/hashicorp/vault/$m")
done
say "dropped the replaces of vault/api, vault/api/auth/{approle,kubernetes,userpass}, vault/sdk: using $(
	cd src && "$go" list -m -f '{{.Path}}@{{.Version}}' github.com/hashicorp/vault/api github.com/hashicorp/vault/sdk | tr '\n' ' ')"

# The released sdk's framework.Backend.ActivationFunc takes an extra string.
patch vault/identity_store_util.go \
	'func (i *IdentityStore) activateDeduplication(ctx context.Context, req *logical.Request) error {' \
	'func (i *IdentityStore) activateDeduplication(ctx context.Context, req *logical.Request, _ string) error {'
patch vault/logical_system_activation_flags.go \
	'b.idStoreBackend.ActivationFunc(ctx, nil)' \
	'b.idStoreBackend.ActivationFunc(ctx, nil, "")'
# The released sdk's keysutil.LockManager.RestorePolicy returns only an error;
# the key keeps the name it is restored under.
patch builtin/logical/transit/path_restore.go \
	'restoredKeyName, err := b.lm.RestorePolicy(ctx, req.Storage, keyName, backupB64, force)' \
	'restoredKeyName, err := keyName, b.lm.RestorePolicy(ctx, req.Storage, keyName, backupB64, force)'

# go build -v names each package as it is built; print a count now and then
# instead of thousands of lines, and the log's end if the build fails.
say "compiling (about 15 minutes cold on 2 cores; progress every 250 packages)"
start=$(date +%s)
set +e
(cd src && "$go" build -v -trimpath -ldflags "-s -w" -o "$work/vault" . 2>&1) |
	tee "$work/build.log" |
	awk '{ if (++n % 250 == 0) { printf "build-vault:   %d packages\n", n; fflush() } }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
	echo "build-vault: go build failed; last lines of its output:" >&2
	grep -v '^[a-zA-Z0-9._~/-]*$' "$work/build.log" | tail -n 60 >&2
	exit 1
fi

got=$("$work/vault" version) || die "the built binary does not run: $work/vault version"
case "$got" in
"Vault $version" | "Vault $version "* | "Vault $version,"*) ;; # "Vault v1.21.4, built 2025-...Z (cgo)"
*) die "the built binary reports '$got', want 'Vault $version'" ;;
esac
say "built $got in $(($(date +%s) - start))s, $(du -h "$work/vault" | cut -f1)"

mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.tmp.XXXXXX")
cp "$work/vault" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
say "installed $out"
