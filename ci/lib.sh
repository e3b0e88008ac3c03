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
