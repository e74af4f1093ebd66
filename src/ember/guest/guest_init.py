"""PID 1 of a template guest: ``/sbin/ember-init``, a POSIX sh script, and the ``ip=`` it reads.

No systemd: under TCG every process started before the agent costs boot time, so the
script does only what the agent needs, in this order::

    mount proc, sysfs, devtmpfs, devpts, /dev/shm, /run, /tmp   (each only if not mounted yet:
                                                                 the initramfs moved /dev here)
    remount / read-write
    hostname                  /etc/hostname, else the hostname field of ip=
    lo up; eth0 from ip=      address/prefix, link up, default route via the gateway
    envd --port 49983         in the background, output to the console, restarted if it exits;
                              environment from /etc/ember/env when present
    print EMBER-GUEST-READY
    reap children forever     PID 1 must never exit (the kernel panics)

Kernel command line parameter (the original's format, facts file 5.3; fields past the
seventh, such as the original's trailing tap name, are ignored)::

    ip=<guest ip>::<gateway ip>:<netmask>:<hostname>:<iface>:off
    ip=169.254.0.21::169.254.0.22:255.255.255.252:instance:eth0:off:tap0

The kernel's own ``ip=`` handling cannot do this: Debian kernels build virtio_net as a
module, which is loaded by the initramfs after the kernel's autoconfiguration has run.
"""

from __future__ import annotations

GUEST_INIT_PATH = "/sbin/ember-init"
ENVD_PATH = "/usr/bin/envd"
ENVD_PORT = 49983
ENVD_ENV_PATH = "/etc/ember/env"
READY_MARKER = "EMBER-GUEST-READY"

GUEST_INIT_SCRIPT = f"""#!/bin/sh
# ember-init: PID 1 of an ember guest (written by ember.guest.guest_init).
set -f
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/root
LANG=C.UTF-8
export PATH HOME LANG

say() {{ echo "ember-init: $*"; }}

is_mounted() {{ grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null; }}

mount_once() {{
    [ -d "$2" ] || mkdir -p "$2"
    is_mounted "$2" || mount -t "$1" -o "$3" "$1" "$2" || say "cannot mount $1 on $2"
}}

mask_prefix() {{
    bits=0
    old_ifs=$IFS; IFS=.; set -- $1; IFS=$old_ifs
    [ $# -eq 4 ] || return 1
    for octet in "$@"; do
        case $octet in
            255) bits=$((bits + 8)) ;; 254) bits=$((bits + 7)) ;; 252) bits=$((bits + 6)) ;;
            248) bits=$((bits + 5)) ;; 240) bits=$((bits + 4)) ;; 224) bits=$((bits + 3)) ;;
            192) bits=$((bits + 2)) ;; 128) bits=$((bits + 1)) ;; 0) ;;
            *) return 1 ;;
        esac
    done
    echo "$bits"
}}

configure_network() {{
    old_ifs=$IFS; IFS=:; set -- $1; IFS=$old_ifs
    address=$1; gateway=$3; netmask=$4; ip_hostname=$5; iface=${{6:-eth0}}; autoconf=${{7:-off}}
    case $autoconf in
        off|none|static) ;;
        *) say "ip= autoconf $autoconf is not supported, using the static fields" ;;
    esac
    [ -n "$hostname" ] || hostname=$ip_hostname
    [ -n "$address" ] || {{ say "ip= has no guest address; network not configured"; return 1; }}
    prefix=32
    [ -z "$netmask" ] || prefix=$(mask_prefix "$netmask") || {{ say "bad netmask $netmask"; return 1; }}
    tries=0
    while [ ! -e "/sys/class/net/$iface" ]; do
        tries=$((tries + 1))
        [ "$tries" -gt 100 ] && {{ say "no network interface $iface"; return 1; }}
        sleep 0.05
    done
    ip addr add "$address/$prefix" dev "$iface" && ip link set "$iface" up || return 1
    [ -z "$gateway" ] || ip route add default via "$gateway" dev "$iface" onlink
}}

run_envd() {{
    [ -r {ENVD_ENV_PATH} ] && . {ENVD_ENV_PATH}
    cd /
    while :; do
        {ENVD_PATH} --port {ENVD_PORT}
        say "envd exited with status $?; restarting in 1 s"
        sleep 1
    done
}}

# Boot sequence (everything above only defines functions).
mount_once proc /proc nosuid,nodev,noexec
mount_once sysfs /sys nosuid,nodev,noexec
mount_once devtmpfs /dev mode=0755,nosuid
mount_once devpts /dev/pts gid=5,mode=620,ptmxmode=666,nosuid,noexec
mount_once tmpfs /dev/shm mode=1777,nosuid,nodev
mount_once tmpfs /run mode=0755,nosuid,nodev
mount_once tmpfs /tmp mode=1777,nosuid,nodev
mount -o remount,rw / || say "cannot remount / read-write"
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr

hostname=
[ -r /etc/hostname ] && read -r hostname < /etc/hostname
ip_arg=
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case $arg in ip=*) ip_arg=${{arg#ip=}} ;; esac
done
if command -v ip >/dev/null; then
    ip link set lo up
    if [ -n "$ip_arg" ]; then configure_network "$ip_arg" || say "network setup from ip=$ip_arg failed"; fi
else
    say "no ip command in this root filesystem; network not configured"
fi
[ -z "$hostname" ] || echo "$hostname" > /proc/sys/kernel/hostname

run_envd < /dev/null > /dev/console 2>&1 &
echo "{READY_MARKER}"
while :; do wait; sleep 1; done
"""
