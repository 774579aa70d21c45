# colab-gateway bootstrap, the shell part: runs on the Colab VM (as root), or anywhere for
# tests. Every input is an environment variable; render_bootstrap_script() in
# gateway/tunnel/bootstrap.py puts the gateway's values in front as defaults and documents
# them. Idempotent: running it again updates the files and keeps the one tunnel loop.
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
: "${GW_WAIT:=15}"
: "${GW_SERVER_ALIVE:=15}"
: "${GW_BACKOFF_MAX:=60}"

for var in GW_ENDPOINT_HOST GW_ENDPOINT_PORT GW_USER GW_ENDPOINT_HOSTKEY GW_FORWARDS; do
    [ -n "${!var:-}" ] || die "$var is not set (render this script with colab-gateway)"
done
[ -s "$GW_KEY_FILE" ] || die "no tunnel key in $GW_KEY_FILE"
mkdir -p "$GW_DIR"
chmod 700 "$GW_DIR"
chmod 600 "$GW_KEY_FILE"

# -- 1. sshd: installed, key-only, root by key only, on loopback ---------------------------
if [ ! -x "$GW_SSHD" ]; then
    [ "$GW_INSTALL" = 1 ] || die "$GW_SSHD is missing and GW_INSTALL is not 1"
    say "installing openssh-server…"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends openssh-server; } \
        >"$GW_DIR/apt.log" 2>&1 || die "apt-get install openssh-server failed; see $GW_DIR/apt.log"
fi
# rsync: the gateway's sync (sessions[].sync) pulls the session's files from the VM with it.
if ! command -v rsync >/dev/null 2>&1 && [ "$GW_INSTALL" = 1 ]; then
    say "installing rsync…"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends rsync; } \
        >>"$GW_DIR/apt.log" 2>&1 || say "apt-get install rsync failed (sync will report it); see $GW_DIR/apt.log"
fi
if [ ! -s "$GW_SSHD_HOSTKEY" ]; then
    mkdir -p "$(dirname "$GW_SSHD_HOSTKEY")"
    ssh-keygen -q -t ed25519 -N '' -C "colab-vm" -f "$GW_SSHD_HOSTKEY"
fi
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

sshd_pid=$(cat "$GW_DIR/sshd.pid" 2>/dev/null || true)
if [ -n "$sshd_pid" ] && kill -0 "$sshd_pid" 2>/dev/null; then
    kill -HUP "$sshd_pid"  # re-reads the config
    sshd_state="reloaded"
else
    "$GW_SSHD" -f "$GW_SSHD_CONFIG" || die "sshd did not start; try: $GW_SSHD -d -f $GW_SSHD_CONFIG"
    sshd_state="started"
fi
vm_hostkey=$(cut -d' ' -f1,2 "$GW_SSHD_HOSTKEY.pub")
say "sshd $sshd_state on 127.0.0.1:$GW_SSHD_PORT (keys only; host key $(ssh-keygen -lf "$GW_SSHD_HOSTKEY.pub" | cut -d' ' -f2))"

# -- 2. the endpoint's host key, pinned --------------------------------------------------
printf 'colab-gateway-endpoint %s\n' "$GW_ENDPOINT_HOSTKEY" >"$GW_DIR/known_hosts"

# -- 3. the loop's settings, re-read on every reconnect ------------------------------------
remotes=""
for pair in $GW_FORWARDS; do
    local_port=${pair%%:*}
    colab_port=${pair##*:}
    [ "$colab_port" != 22 ] || colab_port=$GW_SSHD_PORT
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
mv -f "$GW_DIR/tunnel.conf.new" "$GW_DIR/tunnel.conf"

# -- 4. the tunnel loop: one per VM, however often this runs -------------------------------
# shellcheck disable=SC2016  # expanded by the loop, not here
loop='
exec 9>"$GW_DIR/tunnel.lock"
flock -n 9 || exit 0
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
loop_pid=$(cat "$GW_DIR/tunnel.pid" 2>/dev/null || true)
if [ -n "$loop_pid" ] && kill -0 "$loop_pid" 2>/dev/null; then
    say "tunnel loop already running (pid $loop_pid); it uses the new settings on its next reconnect"
else
    rm -f "$GW_DIR/tunnel.status"
    GW_DIR="$GW_DIR" setsid bash -c "$loop" </dev/null >>"$GW_DIR/tunnel.log" 2>&1 &
    say "tunnel loop started to $GW_USER@$GW_ENDPOINT_HOST:$GW_ENDPOINT_PORT, forwarding:$remotes"
fi

# -- 5. say how it went ----------------------------------------------------------------------
for _ in $(seq $(( GW_WAIT * 4 ))); do
    status=$(cat "$GW_DIR/tunnel.status" 2>/dev/null || true)
    case "$status" in *" up: "* | *" failed: "*) break ;; esac
    sleep 0.25
done
case "${status:-}" in
    *" up: "*) say "connected to the gateway, which ${status#* up: colab-gateway: }" ;;
    *" failed: "*) say "tunnel not up yet: ${status#* failed: } (the loop keeps trying; log: $GW_DIR/tunnel.log)" ;;
    *) say "tunnel still connecting after ${GW_WAIT}s (the loop keeps trying; status: $GW_DIR/tunnel.status)" ;;
esac
