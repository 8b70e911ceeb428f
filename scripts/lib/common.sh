# shellcheck shell=bash
# Shared helpers for scripts/setup and scripts/vm-run. Source it; do not run it.

# Repository root (this file lives in scripts/lib/).
# shellcheck disable=SC2034 # used by the scripts that source this file
MESOBLK_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# Cache root shared by setup and vm-run (kernel, venv, initramfs).
mesoblk_cache_dir() {
    printf '%s\n' "${MESOBLK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mesoblk}"
}

# Messages go to stderr, prefixed by the script's name.
MESOBLK_PROG=${MESOBLK_PROG:-$(basename "$0")}
msg() { printf '%s: %s\n' "$MESOBLK_PROG" "$*" >&2; }
die() { msg "error: $*"; exit 1; }

# Quote a string so that a POSIX shell reads it back as one word.
shquote() {
    local s=$1 q="'\\''"
    printf "'%s'" "${s//\'/$q}"
}
