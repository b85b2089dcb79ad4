#!/usr/bin/env bash
# build-kube-apiserver.sh VERSION OUT — build the Kubernetes API server VERSION
# (e.g. v1.37.2) from the k8s.io/kubernetes Go module and write the binary to
# OUT (atomically: OUT is either the old file or the complete new binary).
#
# The deploy tests (test/deploy) apply the rendered manifests to it with
# server-side dry run and mint service account tokens from it, so the real API
# server's validation decides whether the manifests are accepted.
#
# `go install k8s.io/kubernetes/cmd/kube-apiserver@VERSION` refuses because the
# module's go.mod replaces every k8s.io/* staging module with a folder
# (./staging/src/k8s.io/...) that is not in the module zip, and requires them at
# v0.0.0. So, as scripts/build-vault.sh does for Vault: download the module,
# copy it somewhere writable, drop the replaces and require each staging module
# at its published version (v0.MINOR.PATCH for kubernetes v1.MINOR.PATCH). Real
# pseudo-versions (k8s.io/utils, ...) are left as they are. Every step checks
# what it expects, so a VERSION that needs different treatment fails here.
#
# Needs only the Go toolchain (GOTOOLCHAIN=local) and the Go module proxy.
# Cold build: about 9 minutes on 2 idle cores.
set -euo pipefail

if [ $# -ne 2 ]; then
	echo "usage: $0 VERSION OUT   (e.g. $0 v1.37.2 ~/.cache/credbroker/kube-apiserver-v1.37.2/kube-apiserver)" >&2
	exit 2
fi
version=$1
out=$2
go=${GO:-go}

export GOTOOLCHAIN=local GOWORK=off GOFLAGS="-mod=mod -buildvcs=false"

say() { echo "build-kube-apiserver: $*"; }
die() { echo "build-kube-apiserver: $*" >&2; exit 1; }

case "$version" in
v1.*.*) staging_version="v0.${version#v1.}" ;;
*) die "VERSION must look like v1.MINOR.PATCH, got '$version'" ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/credbroker-kube-apiserver-build.XXXXXX")
tmp=
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work" ${tmp:+"$tmp"}; }
trap cleanup EXIT

cd "$work"
say "downloading k8s.io/kubernetes@$version source"
dir=$("$go" mod download -json "k8s.io/kubernetes@$version" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
[ -n "$dir" ] && [ -f "$dir/go.mod" ] || die "go mod download k8s.io/kubernetes@$version gave no source directory"
cp -R "$dir" src
chmod -R u+w src

# Every replace must point into ./staging (which the module zip lacks); a
# replace of another kind means this VERSION needs a different recipe.
mods=$(cd src && "$go" mod edit -json |
	tr -d '\n\t ' | grep -o '"Replace":\[.*\]' |
	grep -o '{"Old":{"Path":"[^"]*"},"New":{"Path":"[^"]*"}}' |
	sed 's/{"Old":{"Path":"\([^"]*\)"},"New":{"Path":"\([^"]*\)"}}/\1 \2/')
[ -n "$mods" ] || die "src/go.mod has no replace block (does this VERSION need a different recipe?)"
n=0
while read -r mod path; do
	[ "$path" = "./staging/src/$mod" ] || die "unexpected replace $mod => $path"
	[ ! -e "src/staging/src/$mod/go.mod" ] || die "src/staging/src/$mod is in the module zip; dropping its replace is not what this VERSION needs"
	(cd src && "$go" mod edit -dropreplace="$mod")
	if grep -qE "^[[:space:]]+$mod v0\.0\.0( |$)" src/go.mod; then
		(cd src && "$go" mod edit -require="$mod@$staging_version")
	fi
	n=$((n + 1))
done <<<"$mods"
! grep -qE '^[[:space:]]+k8s\.io/[^ ]+ v0\.0\.0( |$)' src/go.mod ||
	die "src/go.mod still requires a k8s.io module at v0.0.0: $(grep -E '^[[:space:]]+k8s\.io/[^ ]+ v0\.0\.0( |$)' src/go.mod)"
say "dropped $n staging replaces; staging modules required at $staging_version"

say "compiling ./cmd/kube-apiserver (about 9 minutes cold on 2 idle cores; progress every 250 packages)"
start=$(date +%s)
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitTreeState=clean"
set +e
(cd src && "$go" build -v -trimpath -ldflags "$ldflags" -o "$work/kube-apiserver" ./cmd/kube-apiserver 2>&1) |
	tee "$work/build.log" |
	awk '{ if (++n % 250 == 0) { printf "build-kube-apiserver:   %d packages\n", n; fflush() } }'
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -ne 0 ]; then
	echo "build-kube-apiserver: go build failed; last lines of its output:" >&2
	grep -v '^[a-zA-Z0-9._~/-]*$' "$work/build.log" | tail -n 60 >&2
	exit 1
fi

got=$("$work/kube-apiserver" --version) || die "the built binary does not run: $work/kube-apiserver --version"
[ "$got" = "Kubernetes $version" ] || die "the built binary reports '$got', want 'Kubernetes $version'"
say "built $got in $(($(date +%s) - start))s, $(du -h "$work/kube-apiserver" | cut -f1)"

mkdir -p "$(dirname "$out")"
tmp=$(mktemp "$out.tmp.XXXXXX")
cp "$work/kube-apiserver" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
say "installed $out"
