# colab-gateway bootstrap, the shell part: runs on the Colab VM (as root), or anywhere for
# tests. Every input is an environment variable; render_bootstrap_script() in
# gateway/tunnel/bootstrap.py puts the gateway's values in front as defaults and documents
# them. Idempotent: running it again updates the files, reuses its own sshd and leaves
# exactly one tunnel loop.
set -euo pipefail
umask 077

say() { printf 'colab-gateway: %s\n' "$*"; }
die() { printf 'colab-gateway: ERROR: %s\n' "$*" >&2; exit 1; }

: "${GW_DIR:=${HOME:-/root}/.colab-gateway}"
: "${GW_KEY_FILE:=$GW_DIR/tunnel_key}"
: "${GW_SSH:=ssh}"
: "${GW_SSHD:=/usr/sbin/sshd}"
: "${GW_SSHD_PORT:=22}"
: "${GW_SSHD_CONFIG:=$GW_DIR/sshd_config}"
: "${GW_SSHD_HOSTKEY:=/etc/ssh/ssh_host_ed25519_key}"
: "${GW_SSHD_EXTRA:=}"
: "${GW_AUTHORIZED_KEYS:=${HOME:-/root}/.ssh/authorized_keys}"
: "${GW_INSTALL:=1}"
: "${GW_RSYNC:=rsync}"
: "${GW_APT_TIMEOUT:=180}"
: "${GW_WAIT:=15}"
: "${GW_SERVER_ALIVE:=15}"
: "${GW_BACKOFF_MAX:=60}"
: "${GW_SESSION:=}"
: "${GW_BIN:=/usr/local/bin}"
: "${GW_OUTBOX:=$GW_DIR/outbox}"
: "${GW_SECRET:=}"
if [ -z "${GW_KEY_SOURCE:-}" ]; then
    if [ -n "$GW_SECRET" ]; then
        GW_KEY_SOURCE="the Colab secret '$GW_SECRET'"
    else
        GW_KEY_SOURCE="the tunnel key in $GW_KEY_FILE"
    fi
fi

for var in GW_ENDPOINT_HOST GW_ENDPOINT_PORT GW_USER GW_ENDPOINT_HOSTKEY GW_FORWARDS; do
    [ -n "${!var:-}" ] || die "$var is not set (render this script with colab-gateway)"
done
# A symlink or a file at GW_DIR's name is replaced: everything below is written in there.
if [ -L "$GW_DIR" ] || { [ -e "$GW_DIR" ] && [ ! -d "$GW_DIR" ]; }; then rm -f "$GW_DIR"; fi
mkdir -p "$GW_DIR"
chmod 700 "$GW_DIR"
# One run at a time (Run all twice in a row); fd 8 is closed for everything long-lived.
exec 8>"$GW_DIR/bootstrap.lock"
flock -w 120 8 || die "another run of this cell has held $GW_DIR/bootstrap.lock for 2 minutes"

# -- 1. who holds a TCP port: /proc only (no ss/lsof on a minimal VM) --------------------------
# The listening sockets that keep sshd from binding 127.0.0.1:PORT: on 127.0.0.1, 0.0.0.0,
# :: or ::ffff:127.0.0.1.
listen_inodes() {
    local hex files=() f
    hex=$(printf '%04X' "$1")
    for f in /proc/net/tcp /proc/net/tcp6; do [ ! -r "$f" ] || files+=("$f"); done
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v port="$hex" 'FNR > 1 && $4 == "0A" {
            split($2, a, ":")
            if (a[2] == port && (a[1] == "0100007F" || a[1] ~ /^0+$/ ||
                                 a[1] == "0000000000000000FFFF00000100007F")) print $10
        }' "${files[@]}"
}
# A pid holding the socket INODE, or nothing when this user cannot see it.
socket_pid() {
    local link
    link=$(find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\[$1\]" -print -quit 2>/dev/null || true)
    link=${link#/proc/}
    printf '%s' "${link%%/*}"
}
# What listens on PORT: a pid, "?" when its owner is not visible, nothing when it is free.
port_holder() {
    local inode pid
    for inode in $(listen_inodes "$1"); do
        pid=$(socket_pid "$inode")
        printf '%s\n' "${pid:-?}"
        return 0
    done
}
cmdline_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | sed 's/ $//' || true; }
comm_of() { cat "/proc/$1/comm" 2>/dev/null || true; }
describe_pid() {
    if [ "$1" = "?" ]; then
        printf 'a process this cell cannot see'
        return
    fi
    local cmd
    cmd=$(cmdline_of "$1")
    [ ${#cmd} -le 100 ] || cmd="${cmd:0:100}…"
    printf '%s (pid %s: %s)' "$(comm_of "$1")" "$1" "$cmd"
}
# The cell's own sshd: started with -f GW_SSHD_CONFIG (its listener's title keeps that).
is_our_sshd() {
    [ -n "$1" ] && [ "$1" != "?" ] || return 1
    case " $(cmdline_of "$1") " in *" -f $GW_SSHD_CONFIG "*) return 0 ;; esac
    return 1
}
wait_port_free() {
    local _
    for _ in $(seq 40); do
        [ -n "$(port_holder "$1")" ] || return 0
        sleep 0.25
    done
    return 1
}

# -- 2. the tunnel loops of this GW_DIR ------------------------------------------------------
# Each runs as `bash -c LOOP colab-gateway-tunnel-loop GW_DIR LOOP_ID`, leader of its own
# process group: found by those arguments even when tunnel.pid is gone. Prints "PID ID".
LOOP_MARK=colab-gateway-tunnel-loop
loop_list() {
    local f pid args my_mnt
    # Another machine sharing this pid space (a container beside this one, another
    # simulated VM) may run a loop with the same GW_DIR path: one in another mount
    # namespace has another GW_DIR and is never this cell's to stop.
    my_mnt=$(readlink /proc/self/ns/mnt 2>/dev/null || true)
    for f in $(grep -lzsxF -- "$LOOP_MARK" /proc/[0-9]*/cmdline 2>/dev/null || true); do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null || true)" = "$my_mnt" ] || continue
        # Subshells of a loop share its command line; only the group leader is the loop.
        [ "$(cut -d' ' -f5 "/proc/$pid/stat" 2>/dev/null || true)" = "$pid" ] || continue
        mapfile -t args < <(tr '\0' '\n' <"$f" 2>/dev/null | tail -n 3)
        [ "${args[0]:-}" = "$LOOP_MARK" ] && [ "${args[1]:-}" = "$GW_DIR" ] || continue
        printf '%s %s\n' "$pid" "${args[2]:-}"
    done
}
# Running: neither gone nor a zombie (an orphaned loop is reaped whenever its new parent,
# often a container's pid 1, gets to it; kill -0 still succeeds until then).
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}
stop_loop() {
    local _
    kill -CONT -- "-$1" 2>/dev/null || true
    kill -TERM -- "-$1" 2>/dev/null || true
    for _ in $(seq 100); do
        running "$1" || return 0
        sleep 0.05
    done
    kill -KILL -- "-$1" 2>/dev/null || true
}
# A tunnel into a port this run could not give an sshd would be a dead loop: stop it.
stop_all_loops() {
    local pid _id stopped=""
    while read -r pid _id; do
        stop_loop "$pid"
        stopped="$stopped $pid"
    done < <(loop_list)
    [ -z "$stopped" ] || printf ' (stopped the tunnel loop of an earlier run, pid%s)' "$stopped"
}

# -- 3. packages: apt only for what is missing; only a missing sshd is fatal -------------------
# A broken third-party apt source makes `apt-get update` fail (googlecolab/colabtools#2779)
# while the package still installs from the lists there are; a hung mirror or a held dpkg
# lock is cut off after GW_APT_TIMEOUT seconds.
apt_run() {  # NAME ARGS…: sets apt_rc and apt_why (apt's last error line), logs to apt.log
    local out="$GW_DIR/apt-$1.out"
    shift
    apt_rc=0
    # 8>&-: a daemon the package's postinst starts must not hold this run's lock.
    timeout -k 10 "$GW_APT_TIMEOUT" apt-get "$@" >"$out" 2>&1 </dev/null 8>&- || apt_rc=$?
    cat "$out" >>"$GW_DIR/apt.log"
    apt_why=$(grep -E '^(E:|Err:)' "$out" | tail -n 1 || true)
    [ -n "$apt_why" ] || apt_why="exit $apt_rc"
    case $apt_rc in 124 | 137) apt_why="stopped after ${GW_APT_TIMEOUT}s" ;; esac
    rm -f "$out"
}
missing_packages() {
    missing=()
    [ -x "$GW_SSHD" ] || missing+=(openssh-server)
    command -v "$GW_RSYNC" >/dev/null 2>&1 || missing+=(rsync)
}
apt_ran=0
port_before_apt=""
missing_packages
if [ ${#missing[@]} = 0 ]; then
    say "apt: skipped, openssh-server and rsync are installed"
elif [ "$GW_INSTALL" != 1 ]; then
    [ -x "$GW_SSHD" ] || die "$GW_SSHD is missing and GW_INSTALL is not 1"
    say "apt: skipped (GW_INSTALL=$GW_INSTALL); missing: ${missing[*]}"
elif ! command -v apt-get >/dev/null; then
    [ -x "$GW_SSHD" ] || die "$GW_SSHD is missing and there is no apt-get to install openssh-server"
    say "apt: not found; missing: ${missing[*]}"
else
    apt_ran=1
    port_before_apt=$(port_holder "$GW_SSHD_PORT")
    export DEBIAN_FRONTEND=noninteractive
    : >"$GW_DIR/apt.log"
    apt_started=$SECONDS
    apt_run update update -qq
    update_note=""
    [ "$apt_rc" = 0 ] || update_note="apt-get update failed ($apt_why) and was ignored"
    wanted=("${missing[@]}")
    install=(install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=60
        -o Dpkg::Options::=--force-confold)
    apt_run install "${install[@]}" "${wanted[@]}"
    if [ "$apt_rc" != 0 ] && [ ! -x "$GW_SSHD" ] && [ ${#wanted[@]} -gt 1 ]; then
        # One package apt cannot find fails them all: sshd alone is what the tunnel needs.
        first_why=$apt_why
        apt_run install "${install[@]}" openssh-server
        [ "$apt_rc" != 0 ] || apt_why=$first_why
    fi
    missing_packages
    took=$((SECONDS - apt_started))
    if [ ${#missing[@]} = 0 ]; then
        say "apt: installed ${wanted[*]} in ${took}s${update_note:+; $update_note}"
    elif [ -x "$GW_SSHD" ]; then
        say "apt: could not install ${missing[*]} ($apt_why)${update_note:+; $update_note}; the tunnel does not need it, going on (log: $GW_DIR/apt.log)"
    else
        die "apt-get install openssh-server failed ($apt_why)${update_note:+; before it, $update_note}; sshd is missing, see $GW_DIR/apt.log"
    fi
fi

# -- 4. the tunnel key (after apt: ssh-keygen is in openssh-client, a dependency) ------------
# The secret's value is the one line `colab-gateway keys --private` prints ("openssh-base64:"
# and the key file in base64), or the key file's text. Colab's Secrets panel can turn a
# pasted key's line breaks into spaces or drop them (googlecolab/colabtools#5586): the
# -----BEGIN/END----- lines and the base64 between them are enough to rebuild the file.
SECRET_PREFIX="openssh-base64:"
FIX_KEY="on the gateway run \`colab-gateway keys --private ${GW_SESSION:-SESSION}\` and paste the one line it prints as its new value, then run this cell again"
bad_key() { die "$GW_KEY_SOURCE is not a usable SSH private key ($1); $FIX_KEY"; }

read_tunnel_key() {
    local text body decoded label width form repaired err pub
    [ -s "$GW_KEY_FILE" ] || bad_key "it is empty"
    text=$(tr -d '\r' <"$GW_KEY_FILE")
    text=${text//\\n/$'\n'}  # a JSON-escaped paste: literal \n (base64 has no backslash)
    text=${text#"${text%%[![:space:]]*}"}
    text=${text%"${text##*[![:space:]]}"}
    form="multi-line form"
    if [[ $text == "$SECRET_PREFIX"* ]]; then
        body=${text#"$SECRET_PREFIX"}
        body=${body//[[:space:]]/}
        decoded=$(printf '%s' "$body" | base64 -d 2>/dev/null | tr -d '\000') ||
            bad_key "the text after $SECRET_PREFIX is not base64"
        text=$decoded
        form="one-line form"
    elif [[ $text != -----BEGIN* ]]; then
        # The one-line form without its prefix still decodes to a key file.
        body=${text//[[:space:]]/}
        if [[ $body =~ ^[A-Za-z0-9+/]+=*$ ]] &&
            decoded=$(printf '%s' "$body" | base64 -d 2>/dev/null | tr -d '\000') &&
            [[ $decoded == -----BEGIN* ]]; then
            text=$decoded
            form="one-line form"
        fi
    fi
    local re='^-----BEGIN ([A-Z0-9 ]+)-----(.*)-----END ([A-Z0-9 ]+)-----[[:space:]]*$'
    [[ $text =~ $re ]] ||
        bad_key "it is neither the one line \`colab-gateway keys --private\` prints nor a -----BEGIN … PRIVATE KEY----- block"
    label=${BASH_REMATCH[1]}
    body=${BASH_REMATCH[2]//[[:space:]]/}
    [[ $label == *"PRIVATE KEY" ]] || bad_key "it holds a $label, not a private key"
    [ "$label" = "${BASH_REMATCH[3]}" ] || bad_key "its BEGIN and END lines do not match"
    [[ $body =~ ^[A-Za-z0-9+/]+=*$ ]] ||
        bad_key "the text between its BEGIN and END lines is not base64"
    width=64  # PEM's line length; OpenSSH writes 70
    [ "$label" != "OPENSSH PRIVATE KEY" ] || width=70
    # A fresh file (mktemp: O_EXCL, 0600) beside the key, renamed over it: a file or a
    # symlink left at the key's name keeps neither its mode nor its target.
    repaired=$(mktemp "$GW_KEY_FILE.XXXXXX") || die "cannot write beside $GW_KEY_FILE"
    {
        printf -- '-----BEGIN %s-----\n' "$label"
        printf '%s' "$body" | fold -w "$width"
        printf -- '\n-----END %s-----\n' "$label"
    } >"$repaired"
    # ssh-keygen loads it as ssh does: what it refuses, ssh refuses too.
    if ! err=$(ssh-keygen -y -P '' -f "$repaired" 2>&1 </dev/null); then
        rm -f "$repaired"
        err=${err//$'\r'/}  # OpenSSH ends its messages with \r\n
        err=${err##*\": }
        bad_key "ssh-keygen: ${err//$'\n'/ }"
    fi
    pub=$err
    if [ "$form" = "multi-line form" ] && [ "$(cat "$repaired")" != "$text" ]; then
        form="multi-line form, line breaks restored"
    fi
    mv -fT "$repaired" "$GW_KEY_FILE"
    say "tunnel key $(printf '%s\n' "$pub" | ssh-keygen -lf - | cut -d' ' -f2) from $GW_KEY_SOURCE ($form)"
}
read_tunnel_key

# -- 5. sshd: key-only, root by key only, on loopback ------------------------------------------
if [ -L "$GW_SSHD_HOSTKEY" ] || [ ! -s "$GW_SSHD_HOSTKEY" ]; then
    # ssh-keygen writes through a symlink and keeps an existing file's mode: none is left.
    rm -f "$GW_SSHD_HOSTKEY" "$GW_SSHD_HOSTKEY.pub"
    mkdir -p "$(dirname "$GW_SSHD_HOSTKEY")"
    ssh-keygen -q -t ed25519 -N '' -C "colab-vm" -f "$GW_SSHD_HOSTKEY"
fi
chmod 600 "$GW_SSHD_HOSTKEY"
[ -s "$GW_SSHD_HOSTKEY.pub" ] || ssh-keygen -y -f "$GW_SSHD_HOSTKEY" >"$GW_SSHD_HOSTKEY.pub"

if [ -n "${GW_PI_PUBKEY:-}" ]; then
    mkdir -p "$(dirname "$GW_AUTHORIZED_KEYS")"
    chmod 700 "$(dirname "$GW_AUTHORIZED_KEYS")"
    touch "$GW_AUTHORIZED_KEYS"
    chmod 600 "$GW_AUTHORIZED_KEYS"
    # One key per line: the Pi's, then ssh.authorized_keys (a laptop's, for ssh-config).
    printf '%s\n' "$GW_PI_PUBKEY" | while IFS= read -r key; do
        [ -n "$key" ] || continue
        grep -qxF "$key" "$GW_AUTHORIZED_KEYS" || printf '%s\n' "$key" >>"$GW_AUTHORIZED_KEYS"
    done
fi

sshd_config_new="$GW_SSHD_CONFIG.new"
{
    printf '%s\n' \
        "# written by the colab-gateway bootstrap cell" \
        "Port $GW_SSHD_PORT" \
        "ListenAddress 127.0.0.1" \
        "HostKey $GW_SSHD_HOSTKEY" \
        "PidFile $GW_DIR/sshd.pid" \
        "AuthorizedKeysFile $GW_AUTHORIZED_KEYS" \
        "PubkeyAuthentication yes" \
        "PasswordAuthentication no" \
        "KbdInteractiveAuthentication no" \
        "PermitRootLogin prohibit-password" \
        "UsePAM no" \
        "X11Forwarding no" \
        "PrintMotd no" \
        "ClientAliveInterval 30" \
        "AcceptEnv LANG LC_* COLORTERM" \
        "Subsystem sftp internal-sftp"
    [ -z "$GW_SSHD_EXTRA" ] || printf '%s\n' "$GW_SSHD_EXTRA"
} >"$sshd_config_new"
[ "$(id -u)" != 0 ] || mkdir -p /run/sshd  # sshd's privilege-separation directory
"$GW_SSHD" -t -f "$sshd_config_new" || die "sshd rejected the generated config $sshd_config_new"
mv -f "$sshd_config_new" "$GW_SSHD_CONFIG"

# The port: the cell's own sshd (pid file, or the listener started with our config) is
# reused; an sshd that installing openssh-server just started is stopped; anything else
# is named, with the setting that moves our sshd elsewhere.
ours=""
pid_file_pid=$(cat "$GW_DIR/sshd.pid" 2>/dev/null || true)
! is_our_sshd "$pid_file_pid" || ours=$pid_file_pid
holder=$(port_holder "$GW_SSHD_PORT")
if [ -n "$holder" ] && [ "$holder" != "$ours" ]; then
    if is_our_sshd "$holder"; then
        ours=$holder
    elif [ "$apt_ran" = 1 ] && [ -z "$port_before_apt" ] && [ "$holder" != "?" ] &&
        [ "$(comm_of "$holder")" = sshd ]; then
        kill "$holder" 2>/dev/null || true
        wait_port_free "$GW_SSHD_PORT" ||
            die "the sshd that installing openssh-server started (pid $holder) still holds port $GW_SSHD_PORT"
        say "stopped the sshd that installing openssh-server started (pid $holder) on port $GW_SSHD_PORT"
    else
        what=$(describe_pid "$holder")
        stopped=$(stop_all_loops)
        die "port $GW_SSHD_PORT on this VM is taken by $what; stop it, or give the VM's sshd another port: forwards.ssh.colab of session '${GW_SESSION:-SESSION}' in the gateway's config, then run the cell \`colab-gateway snippet ${GW_SESSION:-SESSION}\` prints$stopped"
    fi
fi
if [ -n "$ours" ]; then
    echo "$ours" >"$GW_DIR/sshd.pid"
    kill -HUP "$ours"  # re-reads the config (a new port too)
    sshd_state="reloaded (pid $ours, started by an earlier run of this cell)"
else
    if ! sshd_err=$("$GW_SSHD" -f "$GW_SSHD_CONFIG" 2>&1 8>&-); then
        stopped=$(stop_all_loops)
        sshd_err=${sshd_err//$'\r'/}
        die "sshd did not start (${sshd_err//$'\n'/ }); try: $GW_SSHD -d -f $GW_SSHD_CONFIG$stopped"
    fi
    sshd_state="started"
fi
vm_hostkey=$(cut -d' ' -f1,2 "$GW_SSHD_HOSTKEY.pub")
say "sshd $sshd_state on 127.0.0.1:$GW_SSHD_PORT (keys only; host key $(ssh-keygen -lf "$GW_SSHD_HOSTKEY.pub" | cut -d' ' -f2))"

# -- 5b. gw-notify and gw-run: messages from your jobs to your phone -----------------------
# gw-notify writes one JSON file into GW_OUTBOX (a temporary name, then a rename: the
# gateway never reads half a message); the gateway collects the directory over its ssh,
# sends each message through its notify URLs, and only then removes the file. Python,
# which every Colab VM has: JSON and a running output tail are a few lines in it.
install_tool() {  # NAME, the script on stdin
    local new="$GW_BIN/.$1.new.$$"
    { printf '#!/usr/bin/env python3\nOUTBOX = %s\n' "$outbox_literal"; cat; } >"$new"
    chmod 755 "$new"
    mv -f "$new" "$GW_BIN/$1"
}
if command -v python3 >/dev/null 2>&1 && mkdir -p "$GW_BIN" "$GW_OUTBOX" 2>/dev/null; then
    chmod 700 "$GW_OUTBOX"
    outbox_literal=$(python3 -c 'import sys; print(repr(sys.argv[1]))' "$GW_OUTBOX")
    install_tool gw-notify <<'GW_NOTIFY'
# gw-notify [--title TITLE] MESSAGE...: send MESSAGE to your phone through colab-gateway
# (installed by its bootstrap cell). "-" or no MESSAGE reads it from stdin.
import json, os, secrets, sys, time

TITLE_MAX, MESSAGE_MAX, OUTBOX_MAX = 200, 4000, 1000
USAGE = "usage: gw-notify [--title TITLE] MESSAGE...   (or: ... | gw-notify [--title TITLE] -)"


def main(args):
    title = ""
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    if args[:1] == ["--title"] and len(args) > 1:
        title, args = args[1], args[2:]
    elif args[:1] and args[0].startswith("--title="):
        title, args = args[0].split("=", 1)[1], args[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    message = " ".join(args)
    if message in ("", "-"):
        message = sys.stdin.read(MESSAGE_MAX * 4)
    message = message.strip()
    if not message and not title:
        print(USAGE, file=sys.stderr)
        return 2
    os.makedirs(OUTBOX, mode=0o700, exist_ok=True)
    if len(os.listdir(OUTBOX)) >= OUTBOX_MAX:
        print(f"gw-notify: {OUTBOX} holds {OUTBOX_MAX} messages the gateway has not "
              "collected yet (is the tunnel up?); this one is dropped", file=sys.stderr)
        return 1
    name = f"{time.time_ns()}-{secrets.token_hex(4)}"
    record = {"id": name, "at": time.time(), "host": os.uname().nodename,
              "title": title[:TITLE_MAX], "message": message[:MESSAGE_MAX]}
    temp = os.path.join(OUTBOX, f".{name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(temp, os.path.join(OUTBOX, name + ".json"))
    return 0


sys.exit(main(sys.argv[1:]))
GW_NOTIFY
    install_tool gw-run <<'GW_RUN'
# gw-run [--title TITLE] -- CMD ARGS...: run CMD, show its output as usual, and when it
# ends send its exit status, duration and last lines of output through gw-notify.
# Exits with CMD's status (128+N when a signal N ended it).
import collections, os, shlex, signal, socket, subprocess, sys, time

TAIL_LINES, LINE_MAX = 20, 200
USAGE = "usage: gw-run [--title TITLE] -- CMD ARGS..."


def took(seconds):
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def run(args, tail):
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    partial = b""
    while True:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()[-LINE_MAX * 4:]  # a progress bar's \r updates, bounded
        for line in lines:
            tail.append(line)
    if partial:
        tail.append(partial)
    status = proc.wait()
    return 128 - status if status < 0 else status


def main(args):
    title = ""
    if args[:1] == ["--title"] and len(args) > 1:
        title, args = args[1], args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    # Ctrl-C reaches the command (same process group); gw-run stays to report its end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    command = shlex.join(args)
    started = time.monotonic()
    tail = collections.deque(maxlen=TAIL_LINES)
    try:
        status = run(args, tail)
    except OSError as exc:
        status = 127
        tail.append(f"gw-run: cannot run {args[0]}: {exc.strerror}".encode())
    duration = took(time.monotonic() - started)
    shown = [line.decode(errors="replace").rsplit("\r", 1)[-1][:LINE_MAX] for line in tail]
    outcome = "finished" if status == 0 else "failed"
    title = title or f"{command[:80]}: {outcome}"
    message = "\n".join(
        [f"{command[:300]} {outcome} with exit {status} after {duration} on "
         f"{socket.gethostname()}."] + (["Last lines of output:"] + shown if shown else [])
    )
    notify = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gw-notify")
    subprocess.run([sys.executable, notify, "--title", title, "--", message], check=False)
    return status


sys.exit(main(sys.argv[1:]))
GW_RUN
    say "gw-notify and gw-run installed in $GW_BIN (messages wait in $GW_OUTBOX for the gateway)"
else
    say "gw-notify and gw-run not installed (no python3, or $GW_BIN is not writable)"
fi

# -- 6. the endpoint's host key, pinned --------------------------------------------------
printf 'colab-gateway-endpoint %s\n' "$GW_ENDPOINT_HOSTKEY" >"$GW_DIR/known_hosts"

# -- 7. the loop's settings, re-read on every reconnect ------------------------------------
remotes=""
for pair in $GW_FORWARDS; do
    local_port=${pair%%:*}
    colab_port=${pair##*:}
    [ "$colab_port" != sshd ] || colab_port=$GW_SSHD_PORT
    remotes="$remotes -R 127.0.0.1:$local_port:localhost:$colab_port"
done
{
    printf 'GW_SSH=%q\n' "$GW_SSH"
    printf 'GW_ENDPOINT=%q\n' "$GW_USER@$GW_ENDPOINT_HOST"
    printf 'GW_ENDPOINT_PORT=%q\n' "$GW_ENDPOINT_PORT"
    printf 'GW_KEY_FILE=%q\n' "$GW_KEY_FILE"
    printf 'GW_REMOTES=%q\n' "$remotes"
    printf 'GW_VM_HOSTKEY=%q\n' "$vm_hostkey"
    printf 'GW_SERVER_ALIVE=%q\n' "$GW_SERVER_ALIVE"
    printf 'GW_BACKOFF_MAX=%q\n' "$GW_BACKOFF_MAX"
} >"$GW_DIR/tunnel.conf.new"
conf_same=0
! cmp -s "$GW_DIR/tunnel.conf.new" "$GW_DIR/tunnel.conf" || conf_same=1
mv -f "$GW_DIR/tunnel.conf.new" "$GW_DIR/tunnel.conf"

# -- 8. the tunnel loop: exactly one per VM, however often this runs ---------------------------
# shellcheck disable=SC2016  # expanded by the loop, not here
loop='
exec 9>"$GW_DIR/tunnel.lock"
flock -w 5 9 || exit 0
echo $$ >"$GW_DIR/tunnel.pid"
child=""
trap '\''[ -z "$child" ] || kill "$child" 2>/dev/null; exit 0'\'' TERM INT HUP
delay=1
while :; do
    . "$GW_DIR/tunnel.conf"
    opts=(-F /dev/null -i "$GW_KEY_FILE" -p "$GW_ENDPOINT_PORT" -o IdentitiesOnly=yes
          -o BatchMode=yes -o HostKeyAlias=colab-gateway-endpoint
          -o UserKnownHostsFile="$GW_DIR/known_hosts" -o GlobalKnownHostsFile=/dev/null
          -o StrictHostKeyChecking=yes -o UpdateHostKeys=no -o ConnectTimeout=20
          -o ServerAliveInterval="$GW_SERVER_ALIVE" -o ServerAliveCountMax=3
          -o ExitOnForwardFailure=yes -o LogLevel=ERROR)
    held=no
    echo "$(date -u +%FT%TZ) connecting" >"$GW_DIR/tunnel.status"
    if "$GW_SSH" "${opts[@]}" "$GW_ENDPOINT" register-hostkey "$GW_VM_HOSTKEY" \
            >"$GW_DIR/register.out" 2>&1 9>&-; then
        echo "$(date -u +%FT%TZ) up: $(cat "$GW_DIR/register.out")" >"$GW_DIR/tunnel.status"
        # shellcheck disable=SC2086  # GW_REMOTES is a list of -R options
        "$GW_SSH" "${opts[@]}" -N $GW_REMOTES "$GW_ENDPOINT" 2>"$GW_DIR/tunnel.err" 9>&- &
        child=$!
        wait "$child" || true
        child=""
        grep -q "forwarding failed" "$GW_DIR/tunnel.err" || held=yes
        echo "$(date -u +%FT%TZ) tunnel closed; reconnecting" >"$GW_DIR/tunnel.status"
    else
        echo "$(date -u +%FT%TZ) failed: $(tr "\n" " " <"$GW_DIR/register.out")" >"$GW_DIR/tunnel.status"
    fi
    # A tunnel the endpoint accepted, with its forwards bound, was fine until the link
    # dropped or the client was killed: come back after 1 s. Failures (login refused, a
    # forward that could not bind) keep doubling the wait: a broken setup never hammers.
    [ "$held" = no ] || delay=1
    sleep "$delay" 9>&- & child=$!
    wait "$child" || true
    child=""
    delay=$(( delay * 2 > GW_BACKOFF_MAX ? GW_BACKOFF_MAX : delay * 2 ))
done
'
loop_id=$(printf '%s' "$loop" | cksum | cut -d' ' -f1)
# An earlier loop that is up, with this code and these settings, is kept (re-running the
# cell does not cut the sessions going through the tunnel). Any other is replaced: one
# waiting out its back-off redials at once, one with old settings picks up the new.
status=$(cat "$GW_DIR/tunnel.status" 2>/dev/null || true)
kept=""
replaced=""
while read -r pid id; do
    if [ -z "$kept" ] && [ "$id" = "$loop_id" ] && [ "$conf_same" = 1 ] &&
        [[ $status == *" up: "* ]]; then
        kept=$pid
    else
        stop_loop "$pid"
        replaced="$replaced $pid"
    fi
done < <(loop_list)
if [ -n "$kept" ]; then
    say "tunnel loop already running (pid $kept) and up with these settings: kept"
else
    rm -f "$GW_DIR/tunnel.status"
    GW_DIR="$GW_DIR" setsid bash -c "$loop" "$LOOP_MARK" "$GW_DIR" "$loop_id" \
        </dev/null >>"$GW_DIR/tunnel.log" 2>&1 8>&- &
    say "tunnel loop started to $GW_USER@$GW_ENDPOINT_HOST:$GW_ENDPOINT_PORT, forwarding:$remotes${replaced:+ (replaced the loop of an earlier run, pid$replaced)}"
fi

# -- 9. say how it went ----------------------------------------------------------------------
for _ in $(seq $((GW_WAIT * 4))); do
    status=$(cat "$GW_DIR/tunnel.status" 2>/dev/null || true)
    case "$status" in *" up: "* | *" failed: "*) break ;; esac
    sleep 0.25
done
case "${status:-}" in
    *" up: "*) say "connected to the gateway, which ${status#* up: colab-gateway: }" ;;
    *" failed: "*"Permission denied"*)
        say "the gateway refused the tunnel key from $GW_KEY_SOURCE: it is not the session's current key (rotated?); $FIX_KEY" ;;
    *" failed: "*) say "tunnel not up yet: ${status#* failed: } (the loop keeps trying; log: $GW_DIR/tunnel.log)" ;;
    *) say "tunnel still connecting after ${GW_WAIT}s (the loop keeps trying; status: $GW_DIR/tunnel.status)" ;;
esac
