#!/bin/sh
# Finds or provides a Python >= 3.10 on the machine and prints it, before Ansible runs any
# module there. It runs through ansible.builtin.script, which needs no Python on the
# machine: ansible-core 2.20 and later refuse Ubuntu 20.04's python3 (3.8) at the first
# module, fact gathering included.
#
#   bootstrap-python.sh MODE VERSION DIR [MIRROR]
#     MODE     auto (a system python3 >= 3.10, from apt when apt has one, else uv),
#              system (only that) or uv (always a uv-managed CPython)
#     VERSION  the CPython uv installs, e.g. 3.12
#     DIR      where uv and its interpreters live
#     MIRROR   uv's CPython download mirror (UV_PYTHON_INSTALL_MIRROR); empty: uv's default
#
# Prints python=PATH, version=X.Y.Z and changed=0|1; on failure says why on stderr.
set -eu
mode=$1 version=$2 dir=$3 mirror=${4:-}
changed=0

fail() {
    printf 'colab-gateway: %s\n' "$*" >&2
    exit 1
}

new_enough() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null
}

system_python() {
    for name in python3 python3.14 python3.13 python3.12 python3.11 python3.10; do
        path=$(command -v "$name" 2>/dev/null) || continue
        if new_enough "$path"; then
            echo "$path"
            return 0
        fi
    done
    return 1
}

# A freshly booted Debian or Ubuntu runs apt-daily / unattended-upgrades at once and holds
# apt's locks for minutes: apt-get waits for dpkg's lock (DPkg::Lock::Timeout, apt >=
# 1.9.11), and `apt-get update`, which does not wait for the lists' lock, is tried again.
# COLAB_GATEWAY_APT_RETRY_DELAY: seconds between tries (the tests make it 0).
apt_lock="-o DPkg::Lock::Timeout=600"
apt_updated=no
apt_update() {
    [ "$apt_updated" = no ] || return 0
    export DEBIAN_FRONTEND=noninteractive
    tries=20
    # shellcheck disable=SC2086
    until apt-get $apt_lock update -q >/dev/null; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || fail "apt-get update failed 20 times (is apt's lock held? see above)"
        sleep "${COLAB_GATEWAY_APT_RETRY_DELAY:-30}"
    done
    apt_updated=yes
}

apt_install() {
    apt_update
    # shellcheck disable=SC2086
    apt-get $apt_lock install -y -q "$@" >/dev/null || fail "apt-get install $* failed"
    changed=1
}

# "3.11" from apt's candidate for python3 (e.g. 3.11.2-1+b1), empty when apt has none.
apt_python_version() {
    apt-cache policy python3 2>/dev/null |
        sed -n 's/^ *Candidate: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p'
}

apt_python_new_enough() {
    v=$(apt_python_version)
    [ -n "$v" ] && [ "${v%%.*}" -ge 3 ] && [ "${v#*.}" -ge 10 ]
}

uv="$dir/uv/bin/uv"
UV_PYTHON_INSTALL_DIR="$dir/pythons"
UV_PYTHON_PREFERENCE=only-managed
UV_NO_CONFIG=1
export UV_PYTHON_INSTALL_DIR UV_PYTHON_PREFERENCE UV_NO_CONFIG

# The CPython an earlier run had uv install, if it is still there.
uv_python() {
    [ -x "$uv" ] && "$uv" python find --no-project "$version" 2>/dev/null
}

python=""
if [ "$mode" != uv ] && ! python=$(system_python); then
    python=""
    # auto on a machine an earlier run gave uv's CPython (Ubuntu 20.04): apt had no newer
    # python3 then (a release upgrade brings one as python3 itself, found above), and
    # asking apt again would update its lists on every play.
    if [ "$mode" = auto ] && python=$(uv_python); then
        :
    else
        python=""
        command -v apt-get >/dev/null || fail "no Python >= 3.10 here and no apt-get to install one"
        apt_update
        if apt_python_new_enough; then
            apt_install python3 python3-venv
            python=$(system_python) || fail "apt installed python3 but it is older than 3.10"
        elif [ "$mode" = system ]; then
            fail "colab_gateway_python is 'system' but this machine's python3 is" \
                "$(apt_python_version || true) (3.10 or newer needed, e.g. Debian 12, Ubuntu 22.04);" \
                "set colab_gateway_python to auto or uv"
        fi
    fi
fi

if [ -z "$python" ]; then
    # A uv-managed CPython (python-build-standalone): Ubuntu 20.04 has no Python >= 3.10 in
    # apt. uv comes from the package index into a small virtualenv of the system python3.
    if [ ! -x "$uv" ]; then
        if ! python3 -c 'import ensurepip' 2>/dev/null; then
            apt_install python3 python3-venv
        fi
        mkdir -p "$dir"
        python3 -m venv "$dir/uv" || fail "python3 -m venv $dir/uv failed"
        "$dir/uv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
        # A wheel only: uv is Rust, a source build needs cargo and an hour on a Pi.
        "$dir/uv/bin/pip" install -q --only-binary :all: uv ||
            fail "pip could not install a uv wheel from the package index (see above)"
        changed=1
    fi
    if [ -n "$mirror" ]; then
        UV_PYTHON_INSTALL_MIRROR=$mirror
        export UV_PYTHON_INSTALL_MIRROR
    fi
    if ! python=$("$uv" python find --no-project "$version" 2>/dev/null); then
        "$uv" python install "$version" >&2 ||
            fail "uv could not install CPython $version from ${mirror:-its default hosts (Astral's release host, then GitHub)};" \
                "set colab_gateway_python_mirror to a mirror this machine reaches"
        changed=1
        python=$("$uv" python find --no-project "$version") || fail "uv installed CPython $version but cannot find it"
    fi
    new_enough "$python" || fail "colab_gateway_python_version $version is older than 3.10"
fi

# colab-gateway's virtualenv is made with this Python (tasks/install.yml). Debian and
# Ubuntu ship venv/ensurepip apart (python3.X-venv), and a deadsnakes python3.10 may come
# without python3.10-venv: `python -m venv` would fail later and less clearly.
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    minor=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$python" = "$(command -v python3)" ] && command -v apt-get >/dev/null; then
        apt_install python3-venv  # the distribution's python3: its own package
    fi
    "$python" -c 'import venv, ensurepip' 2>/dev/null ||
        fail "$python (Python $minor) has no venv/ensurepip module, which colab-gateway's" \
            "virtualenv is made with: install python$minor-venv (apt-get install" \
            "python$minor-venv), or set colab_gateway_python to uv"
fi

echo "python=$python"
echo "version=$("$python" -c 'import platform; print(platform.python_version())')"
echo "changed=$changed"
