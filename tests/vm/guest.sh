#!/bin/sh
# The command of every `make vmtest` guest (tests/vm/run.py boots the kernel and starts this from the
# read-only ext4 image it built). Makes the guest look like the CI host where the suite relies on it,
# runs `lanner probe -o json`, then the BPF-marked tests. Exits with pytest's status (2 more if the
# probe command itself failed); the caller prints the VMTEST_RC marker the harness parses.
#
# usage: guest.sh NAME OUTDIR [PYTEST ARGS...]
#   NAME    the kernel's name in tests/vm/kernels.txt, exported as LANNER_TEST_KERNEL
#   OUTDIR  a host directory shared read-write (virtme-ng --rwdir): probe.json, junit.xml
set -u
name=$1 out=$2
shift 2
img=$(cd "$(dirname "$0")/../../.." && pwd)  # the image root: proj/ tv/ py3/
py=$(cat "$img/py3/.stdlib")                 # the Debian interpreter's stdlib path, e.g. /usr/lib/python3.11

# Python's stdlib from the image: over 9p every import costs milliseconds per lookup.
mount --bind "$img/py3/stdlib" "$py" || exit 90
# securityfs (for /sys/kernel/security/lsm). tracefs, debugfs and bpffs are left as virtme-ng
# leaves them: the agent mounts what it needs (lanner/bpf/fs.py), as on a fresh host.
mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security
# cgroups as on the CI host: a tmpfs at /sys/fs/cgroup with the v2 hierarchy at ./unified (virtme-ng
# mounts cgroup2 straight at /sys/fs/cgroup; the suite checks scratch cgroups under ./unified).
if ! mountpoint -q /sys/fs/cgroup/unified; then
    mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup && mkdir -p /sys/fs/cgroup/unified &&
        mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || exit 91
fi

echo "=== vmtest guest $name: kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print $2/1024 " MiB"}' /proc/meminfo)," \
     "lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)"

export PATH="$img/tv/bin:$PATH" LANNER_TEST_KERNEL="$name" PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
cd "$img/proj" || exit 92

t0=$(date +%s)
probe_rc=0
lanner probe -o json >"$out/probe.json" 2>"$out/probe.stderr" || probe_rc=$?
echo "=== lanner probe -o json: exit $probe_rc in $(($(date +%s) - t0)) s"
python3 - "$out/probe.json" <<'EOF' || probe_rc=2
import json, sys
doc = json.load(open(sys.argv[1]))
yes = [n for n, f in doc["features"].items() if f["supported"]]
no = [n for n, f in doc["features"].items() if not f["supported"]]
print("=== probe yes:", " ".join(yes))
print("=== probe no: ", " ".join(no))
print("=== best:     ", " ".join(f"{k}={v}" for k, v in doc["best_mechanism"].items()))
EOF
[ "$probe_rc" -eq 0 ] || tail -20 "$out/probe.stderr"

echo "=== pytest -m bpf"
python3 -m pytest -m bpf -p no:cacheprovider -ra --junitxml="$out/junit.xml" -o junit_suite_name="vmtest-$name" "$@"
rc=$?
[ "$probe_rc" -eq 0 ] || [ "$rc" -ne 0 ] || rc=2
exit "$rc"
