# Shared helpers for the ci/ scripts. Source it; it defines functions only.

# Runs apt-get install for the packages that are missing, with one apt-get update first if
# the install needs it. CI machines start fresh: every script installs what it uses.
ensure_packages() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "ci: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  }
}

# Prints the newest installed Debian linux-headers-6.12.*-common tree, installing the newest
# available one first if none is installed. This is the header tree the fallback bindings are
# generated from.
newest_header_tree() {
  local tree
  tree=$(ls -d /usr/src/linux-headers-6.12.*-common 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$tree" ]; then
    local pkg
    pkg=$(apt-cache search --names-only '^linux-headers-6\.12\..*-common$' 2>/dev/null | awk '{print $1}' | sort -V | tail -n 1)
    if [ -z "$pkg" ]; then
      apt-get update >/dev/null
      pkg=$(apt-cache search --names-only '^linux-headers-6\.12\..*-common$' | awk '{print $1}' | sort -V | tail -n 1)
    fi
    [ -n "$pkg" ] || { echo "ci: no linux-headers-6.12.*-common package found" >&2; return 1; }
    ensure_packages "$pkg"
    tree=$(ls -d /usr/src/linux-headers-6.12.*-common | sort -V | tail -n 1)
  fi
  echo "$tree"
}

# Builds the kernel's own userfaultfd stress test, tools/testing/selftests/mm/uffd-stress.c
# (with uffd-common.c and vm_util.c), from Debian's linux-source-6.12, fetched with apt-get
# download into target/uffd-stress-c (never installed; only the selftests are unpacked), against
# the 6.12 uapi headers of newest_header_tree (the system's /usr/include is 6.1's, which lacks
# what uffd-common.c uses). Usage: build_kernel_uffd_stress OUT [extra gcc flags, e.g. -static]
build_kernel_uffd_stress() {
  local out=$1
  shift
  local work=$PWD/target/uffd-stress-c
  local tools=$work/linux-source-6.12/tools
  ensure_packages gcc xz-utils
  if [ ! -f "$tools/testing/selftests/mm/uffd-stress.c" ]; then
    mkdir -p "$work"
    rm -f "$work"/linux-source-6.12_*.deb
    (cd "$work" && { apt-get download -q linux-source-6.12 >/dev/null 2>&1 ||
      { apt-get update >/dev/null && apt-get download -q linux-source-6.12 >/dev/null; }; })
    dpkg-deb --fsys-tarfile "$work"/linux-source-6.12_*.deb |
      tar -xO ./usr/src/linux-source-6.12.tar.xz |
      tar -xJ -C "$work" --wildcards 'linux-source-6.12/tools/testing/selftests/mm/*' \
        'linux-source-6.12/tools/testing/selftests/kselftest*' 'linux-source-6.12/tools/include/*'
    rm -f "$work"/linux-source-6.12_*.deb
  fi
  local tree
  tree=$(newest_header_tree)
  mkdir -p "$work/include/linux"
  cp "$tree/include/uapi/linux/userfaultfd.h" "$tree/include/uapi/linux/fs.h" "$work/include/linux/"
  # The uapi headers of a source tree still say __packed (headers_install would rewrite it).
  gcc -Wall -O2 -U_FORTIFY_SOURCE '-D__packed=__attribute__((packed))' -isystem "$work/include" \
    -I "$tools/testing/selftests" -I "$tools/include" "$@" \
    "$tools/testing/selftests/mm/uffd-stress.c" "$tools/testing/selftests/mm/uffd-common.c" \
    "$tools/testing/selftests/mm/vm_util.c" -o "$out" -lrt -lpthread -lm
}
