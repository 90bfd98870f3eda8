#!/usr/bin/env bash
# update-gvisor.sh: rebuild third_party/gvisor, our trimmed copy of the
# gvisor.dev/gvisor module, from a named upstream version. See README.md in
# this directory.
#
#   third_party/update-gvisor.sh VERSION   rebuild the copy from upstream VERSION (a
#                                          pseudo-version, or a query such as "go" or
#                                          "latest"), point go.mod at it, go mod tidy
#   third_party/update-gvisor.sh --force VERSION
#                                          the same, dropping edits no patch records
#   third_party/update-gvisor.sh --check   rebuild at go.mod's version in a scratch
#                                          directory; fail if the copy differs from it
#   third_party/update-gvisor.sh --diff [NAME.patch]
#                                          print the copy's edits that no patch
#                                          records yet, as a patch (-p1); with NAME,
#                                          relative to the patches before NAME only
#                                          (NAME's new content, if it is the last)
#
# The copy is: upstream's packages that our build imports (their import closure
# over all platforms, as `go mod tidy` takes it; gvisor-deps.go), whole package
# directories without _test.go files, upstream's LICENSE and AUTHORS, and a
# go.mod trimmed to the requirements of those packages; then our own files
# (gvisor-changes/files.txt, kept from the current copy) and our patches
# (gvisor-changes/*.patch, in name order; each must apply exactly or the
# script stops). Upstream comes through the Go module proxy (go mod download).
#
# Before a VERSION rebuild replaces the copy, the copy is checked as --check
# does, so an edit not yet recorded in a patch is never lost (--force skips it).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
copy=$here/gvisor
changes=$here/gvisor-changes
module=gvisor.dev/gvisor
# Platforms whose imports seed the package set; and platform:packages that
# must build afterwards (bench is Linux-only; the binary builds everywhere).
seed_platforms="linux/amd64 linux/arm64 darwin/arm64 windows/amd64"
build_checks="linux/amd64:./... linux/arm64:./... linux/arm:./... linux/386:./... darwin/arm64:./cmd/... windows/amd64:./cmd/..."

export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

die() { echo "update-gvisor: $*" >&2; exit 1; }
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

for tool in go patch diff gofmt; do
  command -v "$tool" >/dev/null || die "needs $tool"
done

cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# our_files prints the paths (relative to the copy) listed in files.txt.
our_files() {
  [ -f "$changes/files.txt" ] || return 0
  sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$changes/files.txt"
}

# current_version prints the upstream version go.mod requires.
current_version() {
  go list -m -f '{{.Version}}' "$module"
}

# assemble VERSION OUT: build the copy of upstream VERSION in directory OUT,
# taking our own files from the current copy. Prints the resolved version.
assemble() {
  local want=$1 out=$2 json dir version f p
  json=$(go mod download -json "$module@$want" 2>&1) || die "go mod download $module@$want failed:
$json"
  dir=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  version=$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Version": "\(.*\)",\{0,1\}$/\1/p')
  [ -n "$dir" ] && [ -d "$dir" ] && [ -n "$version" ] || die "go mod download gave no module directory:
$json"

  # Our own files, staged aside: they come from the current copy.
  rm -rf "$tmp/ours" && mkdir -p "$tmp/ours"
  while read -r f; do
    case "$f" in
      /* | *..* ) die "gvisor-changes/files.txt: $f must be a relative path inside the copy" ;;
    esac
    [ -f "$copy/$f" ] || die "gvisor-changes/files.txt lists $f, which is not in third_party/gvisor"
    [ ! -e "$dir/$f" ] || die "$f (one of our files) also exists upstream in $version: rename ours, or turn it into a patch"
    mkdir -p "$tmp/ours/$(dirname "$f")"
    cp "$copy/$f" "$tmp/ours/$f"
  done < <(our_files)

  # Seeds: the gvisor packages imported from outside gvisor (our module, its
  # tests, and other dependencies such as wireguard-go's tun/netstack).
  local plat
  for plat in $seed_platforms; do
    GOOS=${plat%/*} GOARCH=${plat#*/} go list -e -deps -test \
      -f '{{.ImportPath}}{{range .Imports}} {{.}}{{end}}' ./... |
      awk -v m="$module" '
        index($1, m) != 1 { for (i = 2; i <= NF; i++) if (index($i, m "/") == 1) print $i }'
  done | sort -u > "$tmp/seeds"
  [ -s "$tmp/seeds" ] || die "no package of ours imports $module"

  rm -rf "$out" && mkdir -p "$out"
  go run "$here/gvisor-deps.go" -upstream "$dir" -ours "$tmp/ours" -gomod "$out/go.mod" \
    < "$tmp/seeds" > "$tmp/pkgs" || die "computing the package set failed"

  # Whole package directories, all platforms' files and assembly, no tests,
  # no subdirectories (those are other packages).
  while read -r p; do
    mkdir -p "$out/$p"
    [ -d "$dir/$p" ] || continue # a package of ours only
    for f in "$dir/$p"/*; do
      [ -f "$f" ] || continue
      case "$f" in *_test.go) continue ;; esac
      cp "$f" "$out/$p/"
    done
  done < "$tmp/pkgs"
  cp "$dir/LICENSE" "$dir/AUTHORS" "$out/"
  chmod -R u+w "$out" # the module cache is read-only
  cp -R "$tmp/ours/." "$out/"

  for p in "$changes"/*.patch; do
    [ -e "$p" ] || continue
    # --diff NAME: the baseline stops before patch NAME.
    if [ -n "${stop_at:-}" ] && [[ ! "$(basename "$p")" < "$stop_at" ]]; then
      break
    fi
    patch -d "$out" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch --dry-run \
      < "$p" > "$tmp/patch.log" 2>&1 ||
      die "$(basename "$p") no longer applies to $module $version; refresh it (see third_party/README.md):
$(cat "$tmp/patch.log")"
    patch -d "$out" -p1 --forward --batch --fuzz=0 --no-backup-if-mismatch --quiet < "$p" ||
      die "applying $(basename "$p") failed"
  done
  find "$out" -name '*.orig' -delete

  local unformatted
  unformatted=$(gofmt -l "$out")
  [ -z "$unformatted" ] || die "not gofmt-clean after the rebuild (upstream or a patch): ${unformatted//$out\//}"
  echo "$version"
}

# unrecorded VERSION: diff (-p1, as a patch) from the rebuilt copy of VERSION
# to the committed copy; empty when every change is recorded.
unrecorded() {
  local version=$1
  [ -d "$copy" ] || die "there is no third_party/gvisor yet; run with a VERSION"
  assemble "$version" "$tmp/a" > /dev/null
  rm -f "$tmp/b" && ln -s "$copy" "$tmp/b"
  local rc=0
  (cd "$tmp" && diff -ruN a b > "$tmp/diff") || rc=$?
  [ "$rc" -le 1 ] || die "diff failed"
  # Drop the timestamps, so a saved patch does not change when nothing did.
  sed -e 's/^\(--- [^\t]*\|+++ [^\t]*\)\t.*$/\1/' "$tmp/diff"
}

summarise() {
  local files size
  files=$(find "$copy" -type f | wc -l)
  size=$(du -sk --apparent-size "$copy" | cut -f1)
  echo "third_party/gvisor: $module $1, $(wc -l < "$tmp/pkgs") packages, $files files, ${size} KiB"
}

mode=${1:-}
case "$mode" in
  "" | -h | --help) usage ;;
  --check)
    [ $# -eq 1 ] || usage
    d=$(unrecorded "$(current_version)")
    if [ -n "$d" ]; then
      printf '%s\n' "$d" | head -200
      die "third_party/gvisor differs from upstream $(current_version) plus gvisor-changes (diff above); record edits with --diff into a patch, list new files in gvisor-changes/files.txt"
    fi
    for f in $(our_files) $(cd "$changes" && ls -- *.patch 2>/dev/null); do
      grep -qF "$(basename "$f")" "$here/README.md" ||
        echo "update-gvisor: warning: $f is not described in third_party/README.md" >&2
    done
    echo "third_party/gvisor is upstream $(current_version) plus gvisor-changes"
    ;;
  --diff)
    [ $# -le 2 ] || usage
    if [ $# -eq 2 ]; then
      stop_at=$(basename "$2")
      [ -f "$changes/$stop_at" ] || die "no patch gvisor-changes/$stop_at"
    fi
    unrecorded "$(current_version)"
    ;;
  -*)
    [ "$mode" = --force ] && [ $# -eq 2 ] || usage
    force=1
    want=$2
    ;;&
  *)
    want=${want:-$mode}
    if [ -z "${force:-}" ] && [ -d "$copy" ] && [ -n "$(go list -m -f '{{with .Replace}}{{.Path}}{{end}}' "$module")" ]; then
      d=$(unrecorded "$(current_version)")
      [ -z "$d" ] || die "third_party/gvisor has edits that no patch records, which a rebuild would lose:
$(printf '%s\n' "$d" | head -100)
Save them first: third_party/update-gvisor.sh --diff > third_party/gvisor-changes/NNN-name.patch (or --force to drop them)"
    fi
    sums_before=$(wc -l < go.sum)
    version=$(assemble "$want" "$tmp/new")
    rm -rf "$copy"
    cp -R "$tmp/new" "$copy"
    go mod edit -require="$module@$version" -replace="$module=./third_party/gvisor"
    go mod tidy
    for check in $build_checks; do
      plat=${check%%:*} pkgs=${check#*:}
      GOOS=${plat%/*} GOARCH=${plat#*/} go build -o /dev/null "$pkgs" || die "go build $pkgs fails for $plat"
    done
    # Record the version in README.md (the line that starts with "- Upstream:").
    commit=${version##*-}
    sed -i "s|^- Upstream: .*|- Upstream: \`$module $version\` (commit $commit of gVisor's \`go\` branch, through the Go module proxy)|" "$here/README.md"
    summarise "$version"
    echo "go.sum: $(wc -l < go.sum) lines (was $sums_before)"
    ;;
esac
