#!/bin/sh
# The command of every `make vmtest` guest (tests/vm/run.py boots the kernel and starts this from the
# read-only ext4 image it built). Makes the guest look like the CI host where the suite relies on it,
# runs `lanner probe -o json`, then the BPF-marked tests. Exits with pytest's status (2 more if the
# probe command itself failed); the caller prints the VMTEST_RC marker the harness parses.
#
# usage: guest.sh NAME OUTDIR [PYTEST ARGS...]
#        guest.sh NAME OUTDIR --sh COMMAND       (run.py --sh: the same guest, COMMAND instead of the suite)
#   NAME    the kernel's name in tests/vm/kernels.txt, exported as LANNER_TEST_KERNEL
#   OUTDIR  a host directory shared read-write (virtme-ng --rwdir): probe.json, junit.xml
set -u
name=$1 out=$2
shift 2
img=$(cd "$(dirname "$0")/../../.." && pwd)  # the image root: proj/ tv/ py3/
py=$(cat "$img/py3/.stdlib")                 # the Debian interpreter's stdlib path, e.g. /usr/lib/python3.11

# Python's stdlib from the image: over 9p every import costs milliseconds per lookup.
mount --bind "$img/py3/stdlib" "$py" || exit 90
# The host's /usr again, over a second 9p share with the page cache on (virtme-ng's root share has
# none: every exec re-read the binary and its libraries through 9p, 0.2 s for /bin/true).
if mkdir -p /run/vmtest-usr && mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=512000 \
        vmtest.usr /run/vmtest-usr; then
    for d in bin sbin lib/x86_64-linux-gnu lib/llvm-19 libexec; do
        [ -d "/usr/$d" ] && mount --bind "/run/vmtest-usr/$d" "/usr/$d"
    done
else
    echo "vmtest: the cached /usr share is missing; continuing over the uncached root (slow)"
fi
# securityfs (for /sys/kernel/security/lsm). tracefs, debugfs and bpffs are left as virtme-ng
# leaves them: the agent mounts what it needs (lanner/bpf/fs.py), as on a fresh host.
mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security
# cgroups as on the CI host: a tmpfs at /sys/fs/cgroup with the v2 hierarchy at ./unified (virtme-ng
# mounts cgroup2 straight at /sys/fs/cgroup; the suite checks scratch cgroups under ./unified).
if ! mountpoint -q /sys/fs/cgroup/unified; then
    mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup && mkdir -p /sys/fs/cgroup/unified &&
        mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || exit 91
fi

# A fresh tmpfs for /tmp: virtme-ng's /tmp is an overlay on the host's /tmp over uncached 9p, which
# makes every file the tests create a slow lookup and shows the guest the host's pytest-of-root.
# Not when the checkout (the image mount, the output dir) lives under /tmp itself: the tmpfs would hide it.
case "$img:$out" in
/tmp/*|*:/tmp/*)
    # Keep virtme-ng's /tmp, but give the tests' own files (TMPDIR: pytest's tmp_path) a plain tmpfs: on
    # the overlay, paths built in BPF from a dentry name the overlay's upper dir, and overlayfs runs some
    # LSM hooks twice (once per layer), which is not what the tests measure.
    echo "vmtest: the checkout is under /tmp; keeping virtme-ng's /tmp, test files on a tmpfs (TMPDIR)"
    mkdir -p /run/vmtest-tmp && mount -t tmpfs -o mode=1777 vmtest-tmp /run/vmtest-tmp || exit 93
    export TMPDIR=/run/vmtest-tmp ;;
*) mount -t tmpfs -o mode=1777 vmtest-tmp /tmp || exit 93 ;;
esac

echo "=== vmtest guest $name (${VMTEST_SHARD:-0/1}): kernel $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print $2/1024 " MiB"}' /proc/meminfo)," \
     "lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)"

export PATH="$img/tv/bin:$PATH" LANNER_TEST_KERNEL="$name" PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
cd "$img/proj" || exit 92

if [ "${1:-}" = "--sh" ]; then  # tests/vm/run.py --sh CMD: a command instead of the suite
    sh -c "$2"
    exit $?
fi

probe_rc=0
case "${VMTEST_SHARD:-0/1}" in
0/*)  # the first guest of each kernel: lanner probe -o json, for the harness's summary
t0=$(date +%s)
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
# the verifier budget of every program on this kernel (docs/kernels.md, tests/test_verifier_budget.py)
lanner probe --programs >"$out/budget.txt" 2>&1 || echo "=== lanner probe --programs: exit $?"
cat "$out/budget.txt"
;;
esac

echo "=== pytest -m bpf"
python3 -m pytest -m bpf -p no:cacheprovider -p tests.vm.guest_plugin -ra --durations=15 --junitxml="$out/junit.xml" -o junit_suite_name="vmtest-$name" "$@"
rc=$?
[ "$probe_rc" -eq 0 ] || [ "$rc" -ne 0 ] || rc=2
exit "$rc"
