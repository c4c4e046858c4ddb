#!/usr/bin/env bash
# Build Hedgerow's test Kubernetes API server from Debian sid's Go source
# packages, offline and without installing anything from sid into the system.
#
#   tests/apiserver/build.sh [--refresh]
#
# stdout: exactly two lines, APISERVER=<abs path> and ETCD=<abs path>.
# stderr: progress (a cold build takes minutes).
#
# Without --refresh a cached build of the current wrapper sources is used as
# is, with no network access: a warm run takes well under a second. With
# --refresh (or HEDGEROW_APISERVER_REFRESH=1) the package versions are
# re-resolved against sid and the server rebuilt if they moved. If sid cannot
# be reached, the last good build is used.
#
# Cache: ${HEDGEROW_CACHE:-$HOME/.cache/hedgerow}/apiserver/
#   <key>/bin/{hedgerow-test-apiserver,etcd}  finished builds; key = hash of
#                                             the sources and package versions
#   by-source/<source hash>                   key of the last good build
#   _apt/ _debs/ _pkgs/ _gocache/             apt state, .debs, unpacked
#                                             packages, Go build cache
set -euo pipefail

# The whole script is one brace group, so bash parses it before running any of
# it: editing or checking out this file during a (minutes-long) build cannot
# make the running copy execute a mix of old and new lines.
{
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${HEDGEROW_CACHE:-$HOME/.cache/hedgerow}/apiserver
mirror=${HEDGEROW_SID_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
lists_ttl=$((6 * 3600)) # reuse sid's package lists this long when rebuilding
refresh=${HEDGEROW_APISERVER_REFRESH:-0}

for arg in "$@"; do
	case $arg in
	--refresh) refresh=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2
		exit 0
		;;
	*)
		echo "build.sh: unknown argument: $arg" >&2
		exit 2
		;;
	esac
done

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

emit() { # emit <build dir>
	printf 'APISERVER=%s\nETCD=%s\n' "$1/bin/hedgerow-test-apiserver" "$1/bin/etcd"
}

usable() { # usable <build dir>
	[[ -x $1/bin/hedgerow-test-apiserver && -x $1/bin/etcd && -f $1/.complete ]]
}

mkdir -p "$cache/by-source"
src_hash=$(cd "$here" && cat build.sh ./*.go | sha256sum | cut -c1-16)

# Warm path: no lock, no network.
if [[ $refresh != 1 && -f $cache/by-source/$src_hash ]]; then
	key=$(<"$cache/by-source/$src_hash")
	if usable "$cache/$key"; then
		emit "$cache/$key"
		exit 0
	fi
fi

# One builder at a time (parallel test workers may all call this); whoever
# waited finds the finished build on the warm path above, so re-check.
exec 9>"$cache/.lock"
if ! flock -n 9; then
	log "waiting for another build.sh to finish"
	flock 9
fi
if [[ $refresh != 1 && -f $cache/by-source/$src_hash ]]; then
	key=$(<"$cache/by-source/$src_hash")
	if usable "$cache/$key"; then
		emit "$cache/$key"
		exit 0
	fi
fi
# Holding the lock, any work dir left is from a build that was killed.
rm -rf "$cache"/.work.*

builds_newest_first() {
	find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name '_*' ! -name '.*' ! -name by-source \
		-printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-
}

# fallback <reason>: use the newest good build (any sources) if sid failed us.
fallback() {
	local best="" d
	if [[ -f $cache/by-source/$src_hash ]] && usable "$cache/$(<"$cache/by-source/$src_hash")"; then
		best=$cache/$(<"$cache/by-source/$src_hash")
	else
		for d in $(builds_newest_first); do
			if usable "$d"; then
				best=$d
				log "warning: using a build of OTHER wrapper sources ($(<"$d/srchash"))"
				break
			fi
		done
	fi
	[[ -n $best ]] || die "$1, and no cached build to fall back on"
	log "$1; using the last good build $best"
	emit "$best"
	exit 0
}

# --- host tools (bookworm only; sid never enters the system's apt sources) ---
need_pkgs=()
for pair in apt-get:apt dpkg-deb:dpkg flock:util-linux sha256sum:coreutils gpgv:gpgv; do
	command -v "${pair%%:*}" >/dev/null || need_pkgs+=("${pair#*:}")
done
[[ -f $keyring ]] || need_pkgs+=(debian-archive-keyring)
if [[ $mirror == https://* && ! -f /etc/ssl/certs/ca-certificates.crt ]]; then
	need_pkgs+=(ca-certificates)
fi
if ((${#need_pkgs[@]})); then
	log "installing host packages: ${need_pkgs[*]}"
	[[ $(id -u) == 0 ]] || die "need root to apt-get install ${need_pkgs[*]}"
	{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_pkgs[@]}"; } >&2
fi

# --- private apt configuration for sid ---
apt_dir=$cache/_apt
mkdir -p "$apt_dir"/{etc/apt.conf.d,etc/preferences.d,lists/partial,archives/partial,state}
: >"$apt_dir/state/status" # nothing "installed": closures are computed in full
echo "deb [signed-by=$keyring] $mirror sid main" >"$apt_dir/etc/sources.list"
cat >"$apt_dir/apt.conf" <<EOF
// Own directories for everything, and the system's apt.conf.d not read, so
// nothing here leaks into (or out of) the system's apt.
Dir::Etc "$apt_dir/etc/";
Dir::Etc::main "/dev/null";
Dir::Etc::parts "apt.conf.d";
Dir::Etc::sourcelist "sources.list";
Dir::Etc::sourceparts "/dev/null";
Dir::Etc::preferencesparts "preferences.d";
Dir::State "$apt_dir/state/";
Dir::State::lists "$apt_dir/lists/";
Dir::State::status "$apt_dir/state/status";
Dir::Cache "$apt_dir/";
Dir::Cache::archives "$apt_dir/archives/";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Architecture "$(dpkg --print-architecture)";
APT::Architectures { "$(dpkg --print-architecture)"; };
APT::Sandbox::User "$(id -un)";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
// Mirrors here may serve a snapshot whose Release file has expired.
Acquire::Check-Valid-Until "false";
Acquire::Check-Date "false";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
EOF
export APT_CONFIG=$apt_dir/apt.conf
# Only our private apt below: unset what could redirect it.
unset APT_LISTCHANGES_FRONTEND

lists_age() {
	local f
	f=$(find "$apt_dir/lists" -maxdepth 1 -name '*_InRelease' -printf '%T@\n' 2>/dev/null | head -1)
	[[ -n $f ]] || {
		echo 999999999
		return
	}
	echo $(($(date +%s) - ${f%.*}))
}

if [[ $refresh == 1 || $(lists_age) -gt $lists_ttl ]]; then
	log "updating sid package lists from $mirror"
	# apt-get update exits 0 when a fetch fails (it keeps the old lists and
	# warns), so look at what it said too.
	update_rc=0
	update_out=$(apt-get update -q 2>&1) || update_rc=$?
	printf '%s\n' "$update_out" >&2
	if ((update_rc != 0)) || grep -q '^[WE]: Failed to fetch' <<<"$update_out"; then
		log "warning: apt-get update for sid failed; trying the previous lists"
	fi
else
	log "reusing sid package lists ($(($(lists_age) / 60)) min old)"
fi

# --- resolve: apiextensions closure + the toolchain golang-go uses + etcd ---
log "resolving the dependency closure"
toolchain=$(apt-cache depends golang-go 2>/dev/null |
	sed -n 's/^ *Depends: \(golang-1\.[0-9]*-go\)$/\1/p' | head -1) || true
[[ -n $toolchain ]] || fallback "cannot find the Go toolchain that sid's golang-go depends on"
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
	--no-breaks --no-replaces --no-enhances golang-k8s-apiextensions-apiserver-dev 2>/dev/null |
	grep -E '^golang-.*-dev$' | sort -u) || true
[[ -n $closure ]] || fallback "cannot resolve golang-k8s-apiextensions-apiserver-dev in sid"
mapfile -t wanted < <(printf '%s\n' "$closure" "$toolchain" "${toolchain%-go}-src" etcd-server)
manifest=$(apt-cache show --no-all-versions "${wanted[@]}" 2>/dev/null |
	awk '/^Package: /{p=$2} /^Version: /{print p "=" $2}' | sort -u) || true
(($(wc -l <<<"$manifest") == ${#wanted[@]})) || fallback "some sid packages have no candidate version"
k8s_version=$(sed -n 's/^golang-k8s-apiextensions-apiserver-dev=\(.*\)$/\1/p' <<<"$manifest")
k8s_version=${k8s_version#*:}
k8s_version=${k8s_version%%-*}
k8s_version=${k8s_version%%[+~]*} # e.g. 0.36.4
IFS=. read -r _ k8s_minor k8s_patch <<<"$k8s_version"
git_version=v1.$k8s_minor.$k8s_patch
pkgs_hash=$(sha256sum <<<"$manifest" | cut -c1-16)
key=$(printf '%s %s\n' "$src_hash" "$pkgs_hash" | sha256sum | cut -c1-16)
log "toolchain $toolchain, apiextensions $k8s_version, etcd $(sed -n 's/^etcd-server=//p' <<<"$manifest"), ${#wanted[@]} packages -> key $key"

if usable "$cache/$key"; then
	echo "$key" >"$cache/by-source/$src_hash"
	log "already built"
	emit "$cache/$key"
	exit 0
fi

# --- fetch and unpack (once per package set) ---
tree=$cache/_pkgs/$pkgs_hash
if [[ ! -f $tree/.complete ]]; then
	debs=$cache/_debs
	mkdir -p "$debs"
	log "downloading ${#wanted[@]} packages (~300 MB on a cold cache)"
	mapfile -t pinned <<<"$manifest"
	if ! (cd "$debs" && apt-get download -q "${pinned[@]}" >&2); then
		fallback "downloading sid packages failed"
	fi
	log "unpacking"
	rm -rf "$tree.tmp"
	mkdir -p "$tree.tmp"
	# apt-get download names files <name>_<version, ':' as %3a>_<arch>.deb
	prefixes=$(printf '%s\n' "${pinned[@]}" | sed 's/:/%3a/; s/=/_/; s/$/_/')
	for pre in $prefixes; do
		ls "$debs/$pre"*.deb
	done | xargs -r -P "$(nproc)" -I{} dpkg-deb -x {} "$tree.tmp"
	echo "$manifest" >"$tree.tmp/manifest.txt"
	touch "$tree.tmp/.complete"
	rm -rf "$tree"
	mv "$tree.tmp" "$tree"
	# The pool only needs the current set; older trees are superseded.
	for f in "$debs"/*.deb; do
		grep -qxF "$(basename "$f" | sed 's/_[^_]*$/_/')" <<<"$prefixes" || rm -f "$f"
	done
	for d in "$cache"/_pkgs/*/; do
		[[ ${d%/} == "$tree" ]] || rm -rf "${d%/}"
	done
fi

# --- build, GOPATH mode, fully offline ---
go_version=${toolchain#golang-}
goroot=$tree/usr/lib/go-${go_version%-go}
[[ -x $goroot/bin/go ]] || die "no go binary in $goroot"
etcd_bin=$tree/usr/bin/etcd
[[ -x $etcd_bin ]] || die "etcd-server did not provide usr/bin/etcd"

work=$(mktemp -d "$cache/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/gopath/src/hedgerow-test-apiserver" "$work/out/bin"
cp "$here"/*.go "$work/gopath/src/hedgerow-test-apiserver/"

log "compiling with $("$goroot/bin/go" version 2>/dev/null | cut -d' ' -f3) as $git_version (cold: ~4 min, ~1.4 GB build cache)"
start=$(date +%s)
(
	cd "$work/gopath/src/hedgerow-test-apiserver"
	env -u GOFLAGS -u GOENV GOENV=off \
		GOROOT="$goroot" GOPATH="$work/gopath:$tree/usr/share/gocode" \
		GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 GOTELEMETRY=off \
		GOCACHE="$cache/_gocache" GOTMPDIR="$work" \
		"$goroot/bin/go" build -trimpath -o "$work/out/bin/hedgerow-test-apiserver" \
		-ldflags "-s -w \
			-X k8s.io/component-base/version.gitVersion=$git_version \
			-X k8s.io/component-base/version.gitMajor=1 \
			-X k8s.io/component-base/version.gitMinor=$k8s_minor \
			-X k8s.io/component-base/version.gitTreeState=clean" \
		. >&2
) || die "go build failed (sources: $here)"
log "compiled in $(($(date +%s) - start)) s"

cp "$etcd_bin" "$work/out/bin/etcd"
"$work/out/bin/hedgerow-test-apiserver" --version >&2 || die "built server does not run"
echo "$manifest" >"$work/out/manifest.txt"
echo "$src_hash" >"$work/out/srchash"
touch "$work/out/.complete"
rm -rf "$cache/${key:?}"
mv "$work/out" "$cache/$key"
echo "$key" >"$cache/by-source/$src_hash"

# Keep the three newest builds.
builds_newest_first | while read -r d; do
	if [[ -f $d/.complete ]]; then echo "$d"; fi
done | tail -n +4 | xargs -r rm -rf
find "$cache/by-source" -type f | while read -r f; do
	[[ -d $cache/$(<"$f") ]] || rm -f "$f"
done

log "done: $cache/$key"
emit "$cache/$key"
exit
}
