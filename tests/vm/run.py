#!/usr/bin/env python3
"""The kernel matrix (`make vmtest`): the BPF-marked tests on stock Debian kernels, each booted under QEMU.

The CI machine's own kernel can't load kprobe, fentry or LSM programs (docs/kernels.md). Debian's 6.1
and 6.12 kernels can, so every kernel of ``tests/vm/kernels.txt`` is

1. resolved with apt-cache to the newest package matching its pattern, fetched with
   ``apt-get download`` and extracted with ``dpkg-deb -x`` (never installed on the host);
2. booted with virtme-ng under QEMU TCG (KVM here is PVM-only and cannot run stock kernels), one
   vCPU per guest, one guest per host CPU at a time, with the BPF LSM enabled, the host's root
   filesystem shared read-only over 9p, and a read-only ext4 image (virtio-blk) that holds Debian's
   Python stdlib, a test venv and a copy of the project: over 9p every file lookup costs
   milliseconds, which made ``import pytest`` alone take 28 s;
3. made to run ``tests/vm/guest.sh``: ``lanner probe -o json``, then ``pytest -m bpf`` with
   ``LANNER_TEST_KERNEL`` set to the kernel's name, so the tests assert what that kernel offers
   (tests/vm/expectations.py), and with the plugin tests/vm/guest_plugin.py.

Every QEMU run is wrapped in ``timeout`` and is its own process group, killed when the run ends. The
guest prints ``VMTEST_RC=<status>`` when its command finishes; no marker means the guest died (panic,
QEMU crash) or timed out, and is reported as a failure with the tail of its console log. A summary
table follows the runs and the exit status is non-zero if any kernel failed.

Measured on the CI machine kind (Firecracker VM, 2 cores): see docs/kernels.md. The reference recipe
is /work/shared/reference/kernel-matrix.md.

Needs (``make vmtest`` installs them): apt ``qemu-system-x86 kmod e2fsprogs busybox-static python3-venv``, and
virtme-ng 1.42 (``vng``) from PyPI in ``build/vmtest/venv``. Caches live under ``build/vmtest``:
``kernels/`` (extracted packages), ``root/`` (the image tree: stdlib, test venv, project copy),
``out/<kernel>/`` (console.log, probe.json, junit.xml of the last run), ``summary.json``.

    tests/vm/run.py [--kernels 6.1,6.12] [--timeout 2700] [--jobs N] [--shards N] [-- PYTEST ARGS]
    tests/vm/run.py --kernels 6.12 --sh 'lanner probe; bpftool prog'     # a look inside a guest
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cmp_to_key
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KERNELS_FILE = HERE / "kernels.txt"
WORK = Path(os.environ.get("VMTEST_DIR", ROOT / "build" / "vmtest")).resolve()
DEBIAN_PYTHON = "/usr/bin/python3"  # not pyenv's: its site hooks add seconds per start under TCG
APPEND = "lsm=lockdown,capability,landlock,yama,bpf clocksource=tsc tsc=reliable"
PROJECT_SKIP = {".git", ".venv", "build", ".pytest_cache", "__pycache__", ".mypy_cache", ".ruff_cache"}
# the BPF objects the BPF-marked tests load: built on the host (`make bpf`), loaded unchanged in
# every guest -- the point of CO-RE
REQUIRED_OBJECTS = ("lanner/kernel/obj/probe.bpf.o", "sensors/bpf/obj/process.bpf.o")
TAIL_LINES = 60
LANNER_ENV = "LANNER_TEST_KERNEL"


def log(msg: str) -> None:
    print(f"==> {msg}", flush=True)


class HarnessError(Exception):
    """A setup step failed: nothing was booted."""


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a setup command; its output goes to the log only when it fails."""
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise HarnessError(f"{shlex.join(map(str, cmd))} failed (exit {p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    return p


# --------------------------------------------------------------------------------- kernel list
@dataclass(frozen=True)
class KernelSpec:
    name: str
    pattern: str

    def regex(self) -> re.Pattern:
        """``*`` matches within one dash-separated part: ``6.1.0-*-amd64`` never matches ``-cloud-``."""
        return re.compile("".join("[^-/]+" if c == "*" else re.escape(c) for c in self.pattern))


def load_kernels(path: Path = KERNELS_FILE) -> list[KernelSpec]:
    specs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise HarnessError(f"{path}:{n}: expected 'NAME PACKAGE-PATTERN', got {line!r}")
        specs.append(KernelSpec(*parts))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise HarnessError(f"{path}: duplicate kernel names in {names}")
    return specs


def _candidates(names: list[str]) -> dict[str, str]:
    """package -> candidate version, for the packages apt can fetch."""
    out = sh(["apt-cache", "policy", *names]).stdout
    found, pkg = {}, None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            pkg = line[:-1].split(":")[0]
        elif pkg and line.strip().startswith("Candidate:"):
            ver = line.split(":", 1)[1].strip()
            if ver != "(none)":
                found[pkg] = ver
    return found


def _dpkg_cmp(a: str, b: str) -> int:
    if a == b:
        return 0
    return -1 if subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0 else 1


def resolve(spec: KernelSpec, updated: list[bool]) -> tuple[str, str]:
    """The (package, version) with the newest candidate version matching ``spec``."""
    rx = spec.regex()
    prefix = spec.pattern.split("*", 1)[0]
    for attempt in range(2):
        names = [n for n in sh(["apt-cache", "pkgnames", prefix]).stdout.split() if rx.fullmatch(n)]
        cands = _candidates(names) if names else {}
        if cands:
            break
        if attempt == 0 and not updated[0]:  # a fresh machine may have no package lists yet
            log("apt-get update (no package matches yet)")
            sh(["apt-get", "update", "-qq"])
            updated[0] = True
    else:
        raise HarnessError(f"kernel {spec.name}: no package in the apt sources matches {spec.pattern!r}")
    pkg = max(cands, key=cmp_to_key(lambda a, b: _dpkg_cmp(cands[a], cands[b])))
    return pkg, cands[pkg]


# ------------------------------------------------------------------------------------ kernels
@dataclass
class Kernel:
    spec: KernelSpec
    package: str
    version: str
    vmlinuz: Path


def fetch(spec: KernelSpec, pkg: str, ver: str) -> Kernel:
    """Download and extract the package once; later runs reuse ``kernels/<pkg>_<ver>``."""
    kroot = WORK / "kernels"
    dest = kroot / f"{pkg}_{ver}"
    if not (dest / ".complete").exists():
        t0 = time.monotonic()
        tmp = kroot / f".tmp-{pkg}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        (tmp / "deb").mkdir(parents=True)
        log(f"kernel {spec.name}: apt-get download {pkg}={ver}")
        sh(["apt-get", "download", "-q", f"{pkg}={ver}"], cwd=tmp / "deb")
        debs = list((tmp / "deb").glob("*.deb"))
        if len(debs) != 1:
            raise HarnessError(f"apt-get download {pkg} left {debs}")
        sh(["dpkg-deb", "-x", str(debs[0]), str(tmp / "x")])
        (tmp / "x").rename(dest)
        shutil.rmtree(tmp)
        (dest / ".complete").write_text(f"{pkg} {ver}\n")
        log(f"kernel {spec.name}: extracted to {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
            f" in {time.monotonic() - t0:.1f} s")
        # older versions of the same kernel are never booted again
        rx = spec.regex()
        for old in kroot.iterdir():
            if old != dest and rx.fullmatch(old.name.split("_", 1)[0]):
                shutil.rmtree(old, ignore_errors=True)
    images = sorted((dest / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise HarnessError(f"{dest}/boot: expected one vmlinuz, found {images}")
    return Kernel(spec, pkg, ver, images[0])


# -------------------------------------------------------------------------------- guest image
def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _copy_project(dest: Path) -> None:
    def skip(dirpath: str, names: list[str]) -> set[str]:
        top = Path(dirpath).resolve() == ROOT
        return {n for n in names if n in PROJECT_SKIP or n.endswith(".egg-info") or n.endswith(".pyc")
                or (top and n in ("build",))}

    tmp = dest.with_name(dest.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ROOT, tmp, symlinks=True, ignore=skip)
    # of build/ only the vmlinux.h the suite compiles test programs against (test_bpf_layer)
    if (ROOT / "build" / "vmlinux").is_dir():
        shutil.copytree(ROOT / "build" / "vmlinux", tmp / "build" / "vmlinux")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def build_image() -> Path:
    """The ext4 image the guests mount (read-only) at ``WORK/root``: the same path as on the host,
    so the venv's absolute paths hold. Stdlib and venv are rebuilt only when they change; the project
    copy and the image itself every run (about a second)."""
    missing = [o for o in REQUIRED_OBJECTS if not (ROOT / o).exists()]
    if missing:
        raise HarnessError(f"BPF objects missing: {missing}; run 'make bpf' (make vmtest does)")
    t0 = time.monotonic()
    root = WORK / "root"
    root.mkdir(parents=True, exist_ok=True)

    # 1. the Debian interpreter's stdlib, bind-mounted over its own path in the guest
    info = json.loads(sh([DEBIAN_PYTHON, "-c", "import json, sys, sysconfig; print(json.dumps("
                          "[sys.version, sysconfig.get_path('stdlib')]))"]).stdout)
    py3 = root / "py3"
    stamp = f"{info[0]}\n{info[1]}"
    if not (py3 / ".stamp").exists() or (py3 / ".stamp").read_text() != stamp:
        log(f"image: copying {info[1]} (Python {info[0].split()[0]})")
        shutil.rmtree(py3, ignore_errors=True)
        py3.mkdir()
        sh(["cp", "-a", info[1], str(py3 / "stdlib")])
        (py3 / ".stdlib").write_text(info[1] + "\n")
        (py3 / ".stamp").write_text(stamp)

    # 2. the project copy: refreshed every run, byte-compiled for the guest's interpreter. Tests find
    # reference data in ../shared beside the checkout: a link to the host's, read over 9p.
    proj = root / "proj"
    _copy_project(proj)
    shared = root / "shared"
    if shared.is_symlink() or shared.exists():
        shared.unlink()
    if (ROOT.parent / "shared").is_dir():
        shared.symlink_to(ROOT.parent / "shared")

    # 3. the test venv: the project installed editable from the copy, so refreshing the copy is enough
    tv = root / "tv"
    want = _digest(ROOT / "pyproject.toml") + " " + info[0]
    if not (tv / ".stamp").exists() or (tv / ".stamp").read_text() != want:
        log("image: test venv (pip install -e '.[test]' from Debian's python3)")
        shutil.rmtree(tv, ignore_errors=True)
        sh([DEBIAN_PYTHON, "-m", "venv", str(tv)])
        sh([str(tv / "bin/python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e",
            f"{proj}[test]"])
        (tv / ".stamp").write_text(want)
    for junk in proj.glob("*.egg-info"):
        shutil.rmtree(junk, ignore_errors=True)
    sh([str(tv / "bin/python"), "-m", "compileall", "-q", "-j", "0", str(proj)])
    # pytest's assertion-rewritten test modules too: the guests read them (they write no bytecode).
    # Best effort: a test module that does not import fails in the guests, with pytest's own report.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", LANNER_ENV)}
    subprocess.run([str(tv / "bin/python"), "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                    "tests"], cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # 4. the image
    img_dir = WORK / "img"
    img_dir.mkdir(exist_ok=True)
    img = img_dir / "root.ext4"
    used = int(sh(["du", "-sk", "--apparent-size", str(root)]).stdout.split()[0])
    size_mb = used * 13 // 10 // 1024 + 128
    img.unlink(missing_ok=True)
    sh(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "vmtest", "-d", str(root),
        str(img), f"{size_mb}M"])
    log(f"image: {img.relative_to(ROOT) if img.is_relative_to(ROOT) else img} ({size_mb} MiB) "
        f"ready in {time.monotonic() - t0:.1f} s")
    return img


# ------------------------------------------------------------------------------------- booting
@dataclass
class Result:
    name: str
    shard: str = ""  # "1/2": this guest ran every second test
    package: str = ""
    version: str = ""
    status: str = "SETUP"  # PASS, FAIL, TIMEOUT, DIED, SETUP
    rc: int | None = None
    summary: str = ""
    seconds: float = 0.0
    kernel_release: str = ""
    probe: dict = field(default_factory=dict)
    detail: str = ""
    log: Path | None = None


def _vng() -> str:
    cand = WORK / "venv" / "bin" / "vng"
    found = str(cand) if cand.exists() else shutil.which("vng")
    if not found:
        raise HarnessError(f"vng (virtme-ng) not found in {cand.parent} or PATH; 'make vmtest' installs it")
    return found


def _check_tools() -> None:
    missing = [t for t in ("qemu-system-x86_64", "depmod", "mke2fs", "busybox", "apt-get", "dpkg-deb", "timeout")
               if not shutil.which(t)]
    if missing:
        raise HarnessError(f"missing tools {missing}: 'make vmtest' installs qemu-system-x86 kmod e2fsprogs busybox-static")
    if not Path(DEBIAN_PYTHON).exists():
        raise HarnessError(f"{DEBIAN_PYTHON} missing (apt-get install python3-venv)")


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
KERNEL_TROUBLE = re.compile(r"^\[\s*\d+\.\d+\] (Oops|BUG:|WARNING: CPU:|Kernel panic|general protection fault)")
PYTEST_SUMMARY = re.compile(r"^=+ (.*\d+ (?:passed|failed|error|errors|skipped|deselected).*) in ([\d.]+)s.* =+$")


@dataclass(frozen=True)
class Guest:
    kernel: Kernel
    shard: int  # 0-based
    shards: int

    @property
    def label(self) -> str:
        return self.kernel.spec.name + (f" {self.shard + 1}/{self.shards}" if self.shards > 1 else "")

    @property
    def out(self) -> Path:
        return WORK / "out" / self.kernel.spec.name / (f"shard{self.shard + 1}" if self.shards > 1 else "")


def boot(g: Guest, img: Path, args: argparse.Namespace, printer: "Printer") -> Result:
    k, name = g.kernel, g.label
    res = Result(k.spec.name, f"{g.shard + 1}/{g.shards}", k.package, k.version)
    out = g.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    console = out / "console.log"
    res.log = console
    root = WORK / "root"
    guest = (f"modprobe -q virtio_blk; modprobe -q ext4; mount -o ro /dev/vda {shlex.quote(str(root))} && "
             f"VMTEST_SHARD={g.shard}/{g.shards} "
             f"sh {shlex.quote(str(root / 'proj/tests/vm/guest.sh'))} {shlex.quote(k.spec.name)} {shlex.quote(str(out))} "
             + " ".join(shlex.quote(a) for a in (["--sh", args.sh] if args.sh else args.pytest_args))
             # the marker goes to the shared directory too: the last console bytes can be lost when
             # the guest powers off before the emulated UART drained
             + f"; rc=$?; echo $rc >{shlex.quote(str(out / 'rc'))}; echo VMTEST_RC=$rc; sleep 1")
    cmd = ["timeout", "-k", "15", str(args.timeout), _vng(), "--run", str(k.vmlinuz),
           "--disable-kvm", "--force-9p", "--verbose", "-p", str(args.cpus), "-m", args.memory,
           "--append", f"{APPEND} {args.append}".strip(),
           f"--qemu-opts=-drive file={img},if=virtio,format=raw,readonly=on "
           "-fsdev local,id=vmtestusr,path=/usr,security_model=none,readonly=on,multidevs=remap "
           "-device virtio-9p-pci,fsdev=vmtestusr,mount_tag=vmtest.usr",
           "--rwdir", str(out), "--exec", guest]
    (out / "command").write_text(shlex.join(cmd) + "\n")
    printer.say(name, f"booting {k.package} {k.version} under QEMU TCG ({args.cpus} vCPU, {args.memory}, "
                      f"timeout {args.timeout} s)")
    t0 = time.monotonic()
    env = dict(os.environ, PATH=f"{Path(cmd[4]).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")  # vng runs virtme-run
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=out, env=env)
    RUNNING.add(proc.pid)
    # a last resort if even timeout's KILL does not end it (the pipe would keep us reading)
    watchdog = threading.Timer(args.timeout + 60, lambda: _killpg(proc.pid))
    watchdog.daemon = True
    watchdog.start()
    lines: list[str] = []
    showing = args.verbose
    try:
        with open(console, "w", encoding="utf-8", errors="replace") as fh:
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
                fh.write(line + "\n")
                lines.append(line)
                if line.startswith("=== vmtest guest"):
                    showing = True
                if showing and not line.startswith("VMTEST_RC="):
                    printer.say(name, line)
        proc.wait()
    finally:
        watchdog.cancel()
        _killpg(proc.pid)  # QEMU and anything else of this run
        RUNNING.discard(proc.pid)
    res.seconds = time.monotonic() - t0
    rcs = [m.group(1) for ln in lines for m in [re.search(r"VMTEST_RC=(\d+)", ln)] if m]
    try:
        rcs.append(str(int((out / "rc").read_text())))
    except (OSError, ValueError):
        pass
    plain = [ANSI.sub("", ln).strip() for ln in lines]
    sums = [m for ln in plain for m in [PYTEST_SUMMARY.match(ln)] if m]
    if sums:
        res.summary = f"{sums[-1].group(1)} in {float(sums[-1].group(2)):.0f} s"
    try:
        res.probe = json.loads((out / "probe.json").read_text())
        res.kernel_release = res.probe.get("kernel_release", "")
    except (OSError, ValueError):
        pass
    if rcs:
        res.rc = int(rcs[-1])
        res.status = "PASS" if res.rc == 0 else "FAIL"
        if res.rc and not sums:
            res.detail = f"guest command exited {res.rc} before pytest reported (see {console})"
    elif proc.returncode in (124, 137, -9):
        res.status = "TIMEOUT"
        res.detail = f"no result after {args.timeout} s: QEMU was killed"
    else:
        res.status = "DIED"
        panic = next((ln for ln in lines if "Kernel panic" in ln or "BUG:" in ln), "")
        res.detail = (f"the guest ended without a result (vng/QEMU exit {proc.returncode})"
                      + (f": {panic.strip()}" if panic else ""))
    # a kernel that oopsed or warned while the suite ran fails the run even if every test passed
    at = next((i for i, ln in enumerate(plain) if KERNEL_TROUBLE.search(ln)), None)
    if at is not None and res.status == "PASS":
        res.status = "FAIL"
        res.detail = f"the kernel reported: {plain[at]} (see {console})"
        printer.say(name, f"FAIL: {res.detail}:\n" + "\n".join(lines[at:at + TAIL_LINES]))
    elif res.status != "PASS" and not (showing and sums):  # else the guest's output was shown already
        tail = "\n".join(lines[-TAIL_LINES:])
        printer.say(name, f"{res.status}: {res.detail or res.summary}; last {TAIL_LINES} console lines "
                          f"({console}):\n{tail}")
    return res


RUNNING: set[int] = set()  # process groups of the guests still running


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Printer:
    """Line-atomic output, prefixed with the kernel name when guests run in parallel."""

    def __init__(self, prefix: bool):
        self.prefix = prefix
        self.lock = threading.Lock()

    def say(self, name: str, text: str) -> None:
        with self.lock:
            for line in text.splitlines() or [""]:
                print(f"[{name}] {line}" if self.prefix else line, flush=True)


# -------------------------------------------------------------------------------------- summary
PROBE_COLUMNS = ("kprobe", "fentry", "fmod_ret", "lsm", "override_return")


COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)")
SEVERITY = ("PASS", "FAIL", "TIMEOUT", "DIED", "SETUP")


def merge(shards: list[Result]) -> Result:
    """One kernel's result from its guests: the worst status, pytest counts added up, the longest wall."""
    if len(shards) == 1:
        return shards[0]
    first = shards[0]
    res = Result(first.name, f"{len(shards)} guests", first.package, first.version)
    res.status = max((r.status for r in shards), key=SEVERITY.index)
    res.seconds = max(r.seconds for r in shards)
    res.probe = next((r.probe for r in shards if r.probe), {})
    res.kernel_release = next((r.kernel_release for r in shards if r.kernel_release), "")
    counts: dict[str, int] = {}
    for r in shards:
        for n, what in COUNTS.findall(r.summary.rsplit(" in ", 1)[0]):
            what = {"error": "errors", "warning": "warnings"}.get(what, what)
            counts[what] = counts.get(what, 0) + int(n)
    if counts:
        res.summary = ", ".join(f"{n} {w}" for w, n in counts.items()) + \
            f" in {' + '.join(r.summary.rsplit(' in ', 1)[1] for r in shards if ' in ' in r.summary)}"
    bad = [r for r in shards if r.status != "PASS"]
    res.detail = "; ".join(f"guest {r.shard}: {r.status} {r.detail or r.summary}" for r in bad)
    res.log = bad[0].log if bad else first.log
    return res


def print_summary(guests: list[Result], total_s: float) -> list[Result]:
    names = list(dict.fromkeys(r.name for r in guests))
    results = [merge([r for r in guests if r.name == n]) for n in names]
    print()
    log(f"kernel matrix: {sum(r.status == 'PASS' for r in results)}/{len(results)} kernels passed "
        f"in {total_s:.0f} s")
    rows = [("kernel", "release", "result", "pytest", " ".join(PROBE_COLUMNS), "enforcement", "wall")]
    for r in results:
        feats = r.probe.get("features", {})
        probe = " ".join(("yes" if feats[c]["supported"] else "no").center(len(c)) if c in feats else "?".center(len(c))
                         for c in PROBE_COLUMNS)
        rows.append((r.name, r.kernel_release or f"{r.package} {r.version}".strip(), r.status,
                     r.summary or r.detail or "-", probe, r.probe.get("best_mechanism", {}).get("enforcement", "?"),
                     f"{r.seconds:.0f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    for r in results:
        if r.status != "PASS":
            print(f"  {r.name}: {r.status}: {r.detail or r.summary}" + (f" (log: {r.log})" if r.log else ""))
    summary = [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.__dict__.items() if k != "probe"}
               for r in guests]
    (WORK / "summary.json").write_text(json.dumps({"total_s": round(total_s, 1), "guests": summary}, indent=2))
    return results


# ----------------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", default=os.environ.get("VMTEST_KERNELS", ""),
                   help="comma/space separated names from tests/vm/kernels.txt (default: all; env VMTEST_KERNELS)")
    p.add_argument("--timeout", type=int, default=int(os.environ.get("VMTEST_TIMEOUT", 2700)),
                   help="seconds per guest, boot included (env VMTEST_TIMEOUT)")
    p.add_argument("--shards", type=int, default=int(os.environ.get("VMTEST_SHARDS", 1)),
                   help="guests per kernel, each running every n-th test (env VMTEST_SHARDS). Worth it only "
                        "with more host CPUs than kernels: TCG is CPU-bound, and an oversubscribed guest "
                        "misses the suite's start-up deadlines")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("VMTEST_JOBS", 0)),
                   help="guests running at the same time (env VMTEST_JOBS; default: one per host CPU)")
    p.add_argument("--cpus", type=int, default=int(os.environ.get("VMTEST_CPUS", 1)),
                   help="vCPUs per guest (env VMTEST_CPUS). 1 by default: with 2, TCG occasionally lets one vCPU "
                        "run kernel text another is patching (int3 text_poke of a static key), and 6.12 oopses")
    p.add_argument("--memory", default=os.environ.get("VMTEST_MEMORY", "2G"), help="memory per guest")
    p.add_argument("--verbose", action="store_true", help="also print the kernel's boot messages")
    p.add_argument("--sh", metavar="COMMAND", help="run COMMAND in each guest instead of the suite (debugging)")
    p.add_argument("--append", default=os.environ.get("VMTEST_APPEND", ""), help="more kernel parameters")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.monotonic()
    try:
        if os.geteuid() != 0:
            raise HarnessError("run as root: the guests load BPF programs as root and apt-get fetches kernels")
        _check_tools()
        specs = load_kernels()
        if args.kernels:
            wanted = args.kernels.replace(",", " ").split()
            unknown = set(wanted) - {s.name for s in specs}
            if unknown:
                raise HarnessError(f"unknown kernels {sorted(unknown)}; {KERNELS_FILE} lists {[s.name for s in specs]}")
            specs = [s for s in specs if s.name in wanted]
        updated = [False]
        kernels = []
        for spec in specs:
            pkg, ver = resolve(spec, updated)
            kernels.append(fetch(spec, pkg, ver))
        img = build_image()
    except HarnessError as exc:
        print(f"vmtest: setup failed: {exc}", file=sys.stderr)
        return 2
    log(f"setup done in {time.monotonic() - t0:.0f} s; kernels: "
        + ", ".join(f"{k.spec.name} = {k.package} {k.version}" for k in kernels))
    shards = 1 if args.sh else max(1, args.shards)
    guests = [Guest(k, i, shards) for k in kernels for i in range(shards)]
    jobs = args.jobs or max(1, min(len(guests), os.cpu_count() or 1))
    printer = Printer(prefix=len(guests) > 1)
    # make's SIGTERM (or CI's cancel) must not leave a QEMU behind: each guest is its own session
    signal.signal(signal.SIGTERM, _interrupt)
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        results = list(pool.map(lambda g: boot(g, img, args, printer), guests))
    except KeyboardInterrupt:
        print("vmtest: interrupted; stopping the guests", file=sys.stderr)
        for pgid in list(RUNNING):
            _killpg(pgid)
        pool.shutdown(wait=True, cancel_futures=True)
        return 130
    pool.shutdown()
    merged = print_summary(results, time.monotonic() - t0)
    return 0 if merged and all(r.status == "PASS" for r in merged) else 1


if __name__ == "__main__":
    sys.exit(main())
