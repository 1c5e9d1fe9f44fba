# Shared by scripts/test, scripts/demo and scripts/bench: package installation and build.
# Sourced, not run.

WEFT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Installs the Debian packages of scripts/packages.txt that dpkg does not report installed.
ensure_packages() {
    local missing=()
    local pkg
    while read -r pkg; do
        pkg="${pkg%%#*}"; pkg="${pkg//[[:space:]]/}"
        [ -n "$pkg" ] || continue
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done < "$WEFT_ROOT/scripts/packages.txt"
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Python libraries Debian does not package, pure Python, into .build/pylib (the tests
# put it on their path): opentelemetry-proto for the OTLP receiver the tracing tests
# run. 1.27.0 is the last release whose generated code takes Debian 12's protobuf 3.21.
ensure_python_libs() {
    local dir="$WEFT_ROOT/.build/pylib"
    [ -d "$dir/opentelemetry/proto/collector/trace" ] && return 0
    local pip
    for pip in pip3 pip "python3 -m pip"; do
        if $pip --version >/dev/null 2>&1; then
            $pip install -q --disable-pip-version-check --no-deps --target "$dir" opentelemetry-proto==1.27.0 && return 0
        fi
    done
    echo "no pip could install opentelemetry-proto into $dir (the tracing tests need it)" >&2
    return 1
}

# weft needs root (BPF, cgroups, namespaces) and a swift toolchain.
require_root_and_swift() {
    if [ "$(id -u)" != 0 ]; then echo "$0: run as root (weft loads BPF programs and creates namespaces)" >&2; exit 1; fi
    if ! command -v swift >/dev/null; then
        [ -x /opt/swift/usr/bin/swift ] && export PATH="/opt/swift/usr/bin:$PATH"
    fi
    command -v swift >/dev/null || { echo "$0: no Swift toolchain (swift) on PATH" >&2; exit 1; }
}

mount_bpffs() {
    mountpoint -q /sys/fs/bpf 2>/dev/null || { mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf; }
}

cgroup2_mount() { awk '$3=="cgroup2"{print $2; exit}' /proc/mounts; }

# A python3 that has pytest: the PATH one if it does, else Debian's.
pytest_python() {
    if python3 -c 'import pytest' 2>/dev/null; then echo python3; else echo /usr/bin/python3; fi
}
