"""The running agent reports every exec and exit exactly, in Tetragon's JSON."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import execs, exits, wait_exec, wait_exit

pytestmark = pytest.mark.bpf

RFC3339_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


def run(args, capture_output: bool = False, text: bool = False, check: bool = False, **kw) -> subprocess.Popen:
    """subprocess.run that keeps the pid: the events are matched on it."""
    if capture_output:
        kw.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p = subprocess.Popen(args, text=text, **kw)
    p.stdout_text, _ = p.communicate(timeout=60)
    if check and p.returncode:
        raise subprocess.CalledProcessError(p.returncode, args)
    return p


def _one(items: list, what: str) -> dict:
    assert len(items) == 1, f"expected exactly one {what}, got {len(items)}: {items}"
    return items[0]


def test_exec_and_exit_exact(agent, tmp_path):
    work = tmp_path / "cwd here"
    work.mkdir()
    p = run(["/bin/sh", "-c", "/bin/echo hello-exact 'two words' >/dev/null; exit 7"], cwd=work)
    assert p.returncode == 7
    evs = agent.wait_for(lambda e: exits(e, binary="/bin/sh", pid=p.pid) and execs(e, arguments="hello-exact \"two words\""),
                         what="sh exit and echo exec")
    sh_exec = _one(execs(evs, binary="/bin/sh", pid=p.pid), "sh exec")["process"]
    echo = _one(execs(evs, arguments='hello-exact "two words"'), "echo exec")
    proc = echo["process"]
    assert proc["binary"] == "/bin/echo"
    assert proc["cwd"] == str(work)
    assert proc["uid"] == os.getuid() == 0
    assert proc["auid"] == 4294967295 or isinstance(proc["auid"], int)
    assert proc["parent_exec_id"] == sh_exec["exec_id"]
    assert echo["parent"]["exec_id"] == sh_exec["exec_id"]
    assert "execve" in proc["flags"].split()
    node, ktime, pid = base64.b64decode(proc["exec_id"]).decode().split(":")
    assert node == agent.node and int(pid) == proc["pid"] and int(ktime) > 0
    assert RFC3339_NS.match(proc["start_time"])
    # sh's exit: status 7, same process object as its exec
    sh_exit = _one(exits(evs, pid=p.pid, binary="/bin/sh"), "sh exit")
    assert sh_exit["status"] == 7 and "signal" not in sh_exit
    assert sh_exit["process"]["exec_id"] == sh_exec["exec_id"]
    assert RFC3339_NS.match(sh_exit["time"])
    # the sh itself was started by this test process, which the agent found in /proc
    assert sh_exec["parent_exec_id"]
    line = next(e for e in evs if "process_exec" in e and e["process_exec"]["process"]["pid"] == p.pid)
    assert line["node_name"] == agent.node and RFC3339_NS.match(line["time"])


def test_exit_by_signal(agent):
    p = subprocess.Popen(["/bin/sleep", "30"])
    agent.wait_for(lambda e: execs(e, pid=p.pid), what="sleep exec")
    p.send_signal(signal.SIGKILL)
    p.wait()
    ex = wait_exit(agent, pid=p.pid)
    assert ex["signal"] == "SIGKILL" and "status" not in ex
    assert ex["process"]["binary"] == "/bin/sleep" and ex["process"]["arguments"] == "30"


@pytest.mark.parametrize("argv,expected", [
    (["with space", "", "tab\there"], '"with space"  tab\there'),
    (["üñíçødé", "--flag=a=b", "'quoted'"], "üñíçødé --flag=a=b 'quoted'"),
])
def test_awkward_argv(agent, argv, expected):
    p = run(["/bin/true", *argv])
    assert p.returncode == 0
    ev = wait_exec(agent, pid=p.pid)
    assert ev["process"]["arguments"] == expected
    assert "truncArgs" not in ev["process"]["flags"]


def test_invalid_utf8_argument_is_escaped_not_lost(agent):
    p = run([b"/bin/true", b"bad\xffbyte"])
    ev = wait_exec(agent, pid=p.pid)
    assert ev["process"]["arguments"] == "bad\\xffbyte"


def test_long_argv_is_truncated_and_flagged(agent):
    args = [f"arg{i:05d}" for i in range(2000)]  # ~18 KB of argv
    p = run(["/bin/true", *args])
    ev = wait_exec(agent, pid=p.pid)["process"]
    assert "truncArgs" in ev["flags"].split()
    got = ev["arguments"].split(" ")
    # argv[0] + separators fit in 8192 bytes: the leading arguments are exact, the last may be cut
    assert got[:800] == args[:800]
    assert len(" ".join(got)) < 8192


def test_script_reports_script_path_and_interpreter(agent, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    p = run([str(script), "one", "two"])
    assert p.returncode == 0
    ev = wait_exec(agent, pid=p.pid)["process"]
    assert ev["binary"] == str(script)
    assert ev["arguments"] == "one two"  # argv[0] of the script is dropped, as for any binary
    interp = os.path.realpath("/bin/sh")
    assert ev["binary_properties"]["file"]["path"] == interp
    assert int(ev["binary_properties"]["file"]["inode"]["number"]) == os.stat(interp).st_ino


def test_relative_exec_is_made_absolute(agent, tmp_path):
    shutil.copy("/bin/true", tmp_path / "rel-true")
    p = run(["./rel-true", "x"], cwd=tmp_path)
    assert p.returncode == 0
    ev = wait_exec(agent, pid=p.pid)["process"]
    assert ev["binary"] == str(tmp_path / "rel-true")
    assert ev["cwd"] == str(tmp_path)


def test_grandchildren_link_through_parent_exec_id(agent):
    p = run(["/bin/sh", "-c", "/bin/sh -c '/bin/true gc-marker; true'; true"])
    evs = agent.wait_for(lambda e: execs(e, arguments="gc-marker"), what="grandchild exec")
    gc = _one(execs(evs, arguments="gc-marker"), "grandchild")
    outer = _one(execs(evs, pid=p.pid, binary="/bin/sh"), "outer sh")["process"]
    inner = [e["process"] for e in execs(evs, binary="/bin/sh", arguments="-c \"/bin/true gc-marker; true\"")]
    inner = _one(inner, "inner sh")
    assert gc["process"]["parent_exec_id"] == inner["exec_id"]
    assert inner["parent_exec_id"] == outer["exec_id"]
    assert gc["parent"]["binary"] == "/bin/sh"


def test_forked_child_exit_carries_clone_identity(agent):
    code = "import os,sys\npid=os.fork()\nif pid==0: os._exit(3)\nos.waitpid(pid,0)\nprint(pid)"
    p = run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child = int(p.stdout_text.strip())
    ex = wait_exit(agent, pid=child)
    parent_exec = _one(execs(agent.events(), pid=p.pid), "python exec")["process"]
    assert ex["status"] == 3
    assert ex["process"]["flags"] == "clone"
    assert ex["process"]["binary"] == parent_exec["binary"]
    assert ex["process"]["parent_exec_id"] == parent_exec["exec_id"]
    assert ex["process"]["exec_id"] != parent_exec["exec_id"]
    # a child that execs after fork gets "execve clone"
    p2 = run(["/bin/true", "clone-flag"])
    assert wait_exec(agent, pid=p2.pid)["process"]["flags"] == "execve clone"


def test_uid_of_unprivileged_process(agent):
    p = run(["/bin/true", "as-nobody"], user=65534, group=65534)
    ev = wait_exec(agent, pid=p.pid)["process"]
    assert ev["uid"] == 65534


def test_long_paths(agent, tmp_path):
    deep = tmp_path
    for i in range(30):  # ~3,000 characters and 30+ levels below tmp
        deep = deep / (f"d{i:02d}" + "x" * 90)
    os.makedirs(deep)
    shutil.copy("/bin/true", deep / "deep-true")
    p = run([str(deep / "deep-true")], cwd=deep)
    assert p.returncode == 0
    ev = wait_exec(agent, pid=p.pid)["process"]
    assert len(ev["cwd"]) > 2800
    assert ev["cwd"] == str(deep)
    assert ev["binary"] == str(deep / "deep-true")


def test_process_started_before_agent_is_seeded_from_proc(tmp_path):
    from tests.conftest import start_agent

    r, w = os.pipe()
    pre = subprocess.Popen(["/bin/sh", "-c", "read x; /bin/echo seeded-child"], stdin=r,
                           stdout=subprocess.DEVNULL)
    os.close(r)
    time.sleep(0.2)
    a = start_agent(tmp_path)
    try:
        os.write(w, b"go\n")
        os.close(w)
        pre.wait(timeout=10)
        evs = a.wait_for(lambda e: execs(e, arguments="seeded-child") and exits(e, pid=pre.pid), what="events")
        child = _one(execs(evs, arguments="seeded-child"), "child exec")
        sh_exit = _one(exits(evs, pid=pre.pid), "sh exit")["process"]
        assert "procFS" in sh_exit["flags"].split()
        assert sh_exit["binary"] == os.path.realpath("/bin/sh")
        assert sh_exit["arguments"] == '-c "read x; /bin/echo seeded-child"'
        assert child["process"]["parent_exec_id"] == sh_exit["exec_id"]
        assert child["parent"]["exec_id"] == sh_exit["exec_id"]
        # seeded identity: ktime is the process start time
        _, ktime, pid = base64.b64decode(sh_exit["exec_id"]).decode().split(":")
        assert int(pid) == pre.pid and int(ktime) > 0
    finally:
        a.stop()
        if pre.poll() is None:
            pre.kill()


def _prog_ids_of(pid: int) -> set[int]:
    """BPF program ids held open by a process (from /proc/PID/fdinfo)."""
    ids = set()
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            for line in fdinfo.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def _loaded_prog_ids(name: str) -> set[int]:
    out = subprocess.run(["bpftool", "prog", "list"], capture_output=True, text=True, check=True).stdout
    return {int(m.group(1)) for m in re.finditer(rf"^(\d+): \S+\s+name {name}\b", out, re.M)}


def test_clean_shutdown_detaches_everything(tmp_path):
    from tests.conftest import start_agent

    pin_dir = Path(f"/sys/fs/bpf/lanner-test-{os.getpid()}")
    a = start_agent(tmp_path, "--bpf-pin-dir", str(pin_dir))
    try:
        assert sorted(p.name for p in pin_dir.iterdir()) == ["process_events", "process_execve_map", "process_lanner_lost"]
        ours = _prog_ids_of(a.proc.pid)
        assert len(ours & _loaded_prog_ids("lanner_exec")) == 1
        assert len(ours & (_loaded_prog_ids("lanner_exit") | _loaded_prog_ids("lanner_fork"))) == 2
    finally:
        rc = a.stop()
    assert rc == 0
    still = _loaded_prog_ids("lanner_exec") | _loaded_prog_ids("lanner_exit") | _loaded_prog_ids("lanner_fork")
    assert not (ours & still), "programs of the stopped agent are still loaded"
    assert not a.socket.exists()
    assert not any(pin_dir.iterdir())
    pin_dir.rmdir()


def test_bad_configuration_is_refused_clearly(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lanner", "agent", "--rb-size", "5000", "--no-export-stdout"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--rb-size must be a power of two" in p.stderr
    before = _loaded_prog_ids("lanner_exec")
    p = subprocess.run([sys.executable, "-m", "lanner", "agent", "--bpf-pin-dir", "/sys/fs/bpf/elsewhere",
                        "--no-export-stdout", "--server-address", f"unix://{tmp_path}/s.sock", "--skip-probe"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "must be under /sys/fs/bpf/lanner" in p.stderr
    assert not (tmp_path / "s.sock").exists()
    assert _loaded_prog_ids("lanner_exec") <= before  # the failed start left nothing loaded


def test_execve_map_keeps_each_live_process_binary_for_policies(tmp_path):
    """Policy programs match binaries in the kernel through execve_map; check what it holds."""
    from lanner.bpf import libbpf as L
    from lanner.bpf.objects import Codec, Map
    from tests.conftest import start_agent

    pin_dir = Path(f"/sys/fs/bpf/lanner-test-bin-{os.getpid()}")
    a = start_agent(tmp_path, "--bpf-pin-dir", str(pin_dir))
    sleeper = subprocess.Popen(["/bin/sleep", "30"])
    code = "import os,time\npid=os.fork()\nif pid==0:\n  time.sleep(30)\n  os._exit(0)\nprint(pid,flush=True)\ntime.sleep(30)"
    forker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child = int(forker.stdout.readline())
        wait_exec(a, pid=sleeper.pid)
        fd = L.bpf_obj_get(str(pin_dir / "process_execve_map").encode())
        assert fd >= 0
        m = Map("execve_map", fd, 1, 4, 360, 65536, Codec.struct("<I"), Codec.struct("<IIQIIQII256s64x"))
        pid, _, ktime, ppid, _, _, blen, _, binary = m.lookup(sleeper.pid)
        assert binary.rstrip(b"\0") == b"/bin/sleep" and blen == len(b"/bin/sleep") and ktime > 0
        c = m.lookup(child)
        assert c[8].rstrip(b"\0") == sys.executable.encode()  # a forked child runs its parent's binary
        assert c[3] == forker.pid
        os.close(fd)
    finally:
        for p in (sleeper, forker):
            p.kill()
            p.wait()
        os.kill(child, 9) if child else None
        a.stop()
        pin_dir.rmdir()
