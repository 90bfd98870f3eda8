#!/usr/bin/env bash
# update-wireguard.sh: rebuild third_party/wireguard, our copy of the
# golang.zx2c4.com/wireguard module (wireguard-go), from a named upstream
# version. See README.md in this directory.
#
#   third_party/update-wireguard.sh VERSION   rebuild the copy from upstream VERSION (a
#                                             pseudo-version or "latest"), point go.mod
#                                             at it, go mod tidy
#   third_party/update-wireguard.sh --check   rebuild at go.mod's version in a scratch
#                                             directory; fail if the copy differs from it
#   third_party/update-wireguard.sh --diff    print the copy's edits that no patch
#                                             records yet, as a patch (-p1)
#
# The copy is: upstream's library packages (every package directory but the
# command at the root, tests/ and tun/netstack/examples), without _test.go
# files, with upstream's LICENSE and go.mod; then our patches
# (wireguard-changes/*.patch, in name order; each must apply exactly or the
# script stops). Upstream comes through the Go module proxy (go mod download).
# A VERSION rebuild first checks the copy as --check does, so an edit that no
# patch records is never lost.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
copy=$here/wireguard
changes=$here/wireguard-changes
module=golang.zx2c4.com/wireguard

export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

die() { echo "update-wireguard: $*" >&2; exit 1; }
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

for tool in go patch diff gofmt; do
  command -v "$tool" >/dev/null || die "needs $tool"
done

cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

current_version() { go list -m -f '{{.Version}}' "$module"; }

# assemble VERSION OUT: build the copy of upstream VERSION in OUT; prints
# the resolved version.
assemble() {
  local want=$1 out=$2 json dir version d f p
  json=$(go mod download -json "$module@$want" 2>&1) || die "go mod download $module@$want failed:
$json"
  dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  version=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Version": "\(.*\)",\{0,1\}$/\1/p')
  [ -n "$dir" ] && [ -d "$dir" ] && [ -n "$version" ] || die "go mod download gave no module directory:
$json"
  rm -rf "$out" && mkdir -p "$out"
  while read -r d; do
    d=${d#./}
    case "$d" in
      . | tests | tests/* | tun/netstack/examples | tun/netstack/examples/*) continue ;;
    esac
    for f in "$dir/$d"/*.go; do
      [ -f "$f" ] || continue
      case "$f" in *_test.go) continue ;; esac
      mkdir -p "$out/$d"
      cp "$f" "$out/$d/"
    done
  done < <(cd "$dir" && find . -type d | sort)
  cp "$dir/LICENSE" "$dir/go.mod" "$out/"
  chmod -R u+w "$out" # the module cache is read-only
  for p in "$changes"/*.patch; do
    [ -e "$p" ] || continue
    patch -d "$out" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch --dry-run \
      < "$p" > "$tmp/patch.log" 2>&1 ||
      die "$(basename "$p") no longer applies to $module $version; refresh it:
$(cat "$tmp/patch.log")"
    patch -d "$out" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch --quiet < "$p" ||
      die "applying $(basename "$p") failed"
  done
  local unformatted
  unformatted=$(gofmt -l "$out")
  [ -z "$unformatted" ] || die "not gofmt-clean after the rebuild: ${unformatted//$out\//}"
  echo "$version"
}

# unrecorded VERSION: diff (-p1) from the rebuilt copy of VERSION to the
# committed copy; empty when every change is recorded.
unrecorded() {
  [ -d "$copy" ] || die "there is no third_party/wireguard yet; run with a VERSION"
  assemble "$1" "$tmp/a" > /dev/null
  rm -f "$tmp/b" && ln -s "$copy" "$tmp/b"
  local rc=0
  (cd "$tmp" && diff -ruN a b > "$tmp/diff") || rc=$?
  [ "$rc" -le 1 ] || die "diff failed"
  sed -e 's/^\(--- [^\t]*\|+++ [^\t]*\)\t.*$/\1/' "$tmp/diff"
}

mode=${1:-}
case "$mode" in
  "" | -h | --help) usage ;;
  --check)
    [ $# -eq 1 ] || usage
    d=$(unrecorded "$(current_version)")
    if [ -n "$d" ]; then
      printf '%s\n' "$d" | head -200
      die "third_party/wireguard differs from upstream $(current_version) plus wireguard-changes (diff above)"
    fi
    for f in $(cd "$changes" && ls -- *.patch 2>/dev/null); do
      grep -qF "$f" "$here/README.md" || echo "update-wireguard: warning: $f is not described in third_party/README.md" >&2
    done
    echo "third_party/wireguard is upstream $(current_version) plus wireguard-changes"
    ;;
  --diff)
    [ $# -eq 1 ] || usage
    unrecorded "$(current_version)"
    ;;
  -*) usage ;;
  *)
    [ $# -eq 1 ] || usage
    if [ -d "$copy" ] && [ -n "$(go list -m -f '{{with .Replace}}{{.Path}}{{end}}' "$module")" ]; then
      d=$(unrecorded "$(current_version)")
      [ -z "$d" ] || die "third_party/wireguard has edits that no patch records, which a rebuild would lose:
$(printf '%s\n' "$d" | head -100)
Save them first: third_party/update-wireguard.sh --diff > third_party/wireguard-changes/NNN-name.patch"
    fi
    version=$(assemble "$mode" "$tmp/new")
    rm -rf "$copy"
    cp -R "$tmp/new" "$copy"
    go mod edit -require="$module@$version" -replace="$module=./third_party/wireguard"
    go mod tidy
    for plat in linux/amd64 linux/arm64 linux/arm linux/386; do
      GOOS=${plat%/*} GOARCH=${plat#*/} go build -o /dev/null ./... || die "go build ./... fails for $plat"
    done
    for plat in darwin/arm64 windows/amd64; do
      GOOS=${plat%/*} GOARCH=${plat#*/} go build -o /dev/null ./cmd/... || die "go build ./cmd/... fails for $plat"
    done
    sed -i "s|^- Upstream (wireguard): .*|- Upstream (wireguard): \`$module $version\` (through the Go module proxy)|" "$here/README.md"
    echo "third_party/wireguard: $module $version, $(find "$copy" -type f | wc -l) files, $(du -sk --apparent-size "$copy" | cut -f1) KiB"
    ;;
esac
