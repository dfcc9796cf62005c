"""What the built-in rule library costs and how noisy it is on a benign developer workload.

One real agent with every rule of rules/ loaded. For ``--minutes`` a workload runs round after round in a work
directory under build/ (a project checkout, as a developer's would be):
  * compile a small C project (8 files, make -j2, run the binary, make clean);
  * ``pip install`` into a fresh venv (offline: setuptools from ensurepip's wheels, --no-index);
  * git init/add/commit, git clone, commit in the clone;
  * run a test suite (pytest on 40 generated tests);
  * apt metadata reads (apt-cache policy/show, dpkg -l).
Alerts are the rule events whose process ran in the work directory (its cwd): the workload's own, not what
other work on the machine did at the same time (counted apart). Per rule: alerts, and alerts per hour.

Then, in the same agent, the cost: rounds alternate every rule attached / every rule detached (lanner rules
enable/disable through the API), each timing a fork+exec loop of /bin/true and a C openat+close loop (the
median of its batches; wall ns per operation).

Goal (issue 17): 0 alerts for most rules, at most 1 per rule per hour of this workload.

Usage: .venv/bin/python bench/rules_noise.py [--minutes 3] [--rounds 4] [--iterations 2000]
"""

from __future__ import annotations

import argparse
import ensurepip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import _policy_common as P  # noqa: E402
from exec_overhead import fork_exec_loop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def write_project(d: Path) -> None:
    """A C project and a test module, written once."""
    c = d / "cproj"
    c.mkdir()
    for i in range(8):
        (c / f"m{i}.c").write_text(f"int f{i}(int x) {{ return x * {i + 1}; }}\n")
    (c / "main.c").write_text("#include <stdio.h>\n" + "".join(f"int f{i}(int);\n" for i in range(8)) +
                              "int main(void) { int s = 0;\n" + "".join(f" s += f{i}(s + 1);\n" for i in range(8)) +
                              ' printf("%d\\n", s); return 0; }\n')
    objs = " ".join(f"m{i}.o" for i in range(8))
    (c / "Makefile").write_text(f"app: main.o {objs}\n\tcc -o app main.o {objs}\n%.o: %.c\n\tcc -O2 -c $<\n"
                                "clean:\n\trm -f *.o app\n")
    (d / "test_gen.py").write_text("".join(f"def test_{i}():\n    assert sum(range({i})) == {i * (i - 1) // 2}\n"
                                           for i in range(40)))


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
                   check=True)


def workload_round(d: Path, n: int) -> dict[str, float]:
    """One round of the five steps; seconds per step."""
    t: dict[str, float] = {}
    t0 = time.monotonic()
    run(["make", "-j2"], d / "cproj")
    run(["./app"], d / "cproj")
    run(["make", "clean"], d / "cproj")
    t["compile"], t0 = time.monotonic() - t0, time.monotonic()
    venv = d / f"venv{n}"
    run([PY, "-m", "venv", str(venv)], d)
    bundled = Path(ensurepip.__file__).parent / "_bundled"  # offline: the wheels ensurepip ships
    run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(bundled), "--force-reinstall",
         "setuptools"], d)
    shutil.rmtree(venv)
    t["pip"], t0 = time.monotonic() - t0, time.monotonic()
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.invalid",
               "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.invalid", "HOME": str(d)}
    src, dst = d / f"git{n}", d / f"clone{n}"
    run(["git", "init", "-q", str(src)], d, git_env)
    shutil.copytree(d / "cproj", src / "cproj")
    run(["git", "add", "-A"], src, git_env)
    run(["git", "commit", "-qm", "import"], src, git_env)
    run(["git", "clone", "-q", str(src), str(dst)], d, git_env)
    (dst / "NOTES").write_text("change\n")
    run(["git", "add", "NOTES"], dst, git_env)
    run(["git", "commit", "-qm", "notes"], dst, git_env)
    shutil.rmtree(src)
    shutil.rmtree(dst)
    t["git"], t0 = time.monotonic() - t0, time.monotonic()
    run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_gen.py"], d)
    t["tests"], t0 = time.monotonic() - t0, time.monotonic()
    for cmd in (["apt-cache", "policy", "bash"], ["apt-cache", "show", "coreutils"], ["dpkg", "-l"]):
        if shutil.which(cmd[0]):
            run(cmd, d)
    t["apt"] = time.monotonic() - t0
    return t


def alerts(export: Path, workdir: Path) -> tuple[Counter, Counter]:
    """(the workload's alerts per rule, everything else's) from the export file."""
    mine, other = Counter(), Counter()
    for line in export.read_text().splitlines():
        ev = json.loads(line).get("process_kprobe")
        if not ev or not ev.get("policy_name"):
            continue
        (mine if ev["process"].get("cwd", "").startswith(str(workdir)) else other)[ev["policy_name"]] += 1
    return mine, other


def set_rules(agent: C.AgentProc, names: list[str], enable: bool) -> None:
    from lanner.client import AgentClient

    with AgentClient(agent.address, timeout=30) as c:
        for name in names:
            c.configure_policy(name, enable=enable)


def cost(agent: C.AgentProc, names: list[str], d: Path, rounds: int, iterations: int) -> dict[str, list[float]]:
    """ns per fork+exec and per openat+close, rounds alternating rules on / off."""
    exe = P.build_loop(d)
    target = d / "openat-target"
    target.write_text("x")
    out: dict[str, list[float]] = {"exec_on": [], "exec_off": [], "open_on": [], "open_off": []}
    for r in range(rounds):
        for on in ((True, False) if r % 2 == 0 else (False, True)):
            set_rules(agent, names, on)
            key = "on" if on else "off"
            out[f"exec_{key}"].append(fork_exec_loop(iterations // 4) * 1e9)
            out[f"open_{key}"].append(C.median([w for w, _ in P.run_loop(exe, str(target), iterations * 10, 5, 0)]))
    set_rules(agent, names, True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="how long the benign workload runs")
    ap.add_argument("--rounds", type=int, default=4, help="cost rounds (each: rules on and rules off)")
    ap.add_argument("--iterations", type=int, default=2000, help="fork+exec per loop x4; openat per batch / 10")
    args = ap.parse_args()
    C.require_root()
    sys.path.insert(0, str(ROOT))
    from lanner.rules import catalog

    names = [r.name for r in catalog.load_catalog()]
    (ROOT / "build").mkdir(exist_ok=True)
    with C.Cleanup(budget_s=args.minutes * 60 + 900) as stack:
        d = Path(tempfile.mkdtemp(prefix="rules-noise-", dir=ROOT / "build"))
        stack.callback(shutil.rmtree, d, True)
        agent = C.start_agent(stack, d, "--tracing-policy-dir", str(catalog.rules_dir()))
        agent.wait_ready()
        time.sleep(2)  # the policy files load right after ready
        work = d / "work"
        work.mkdir()
        write_project(work)
        mon = C.LoadMonitor()
        t_end, n, steps = time.monotonic() + args.minutes * 60, 0, Counter()
        t0 = time.monotonic()
        while time.monotonic() < t_end:
            steps.update(workload_round(work, n))
            n += 1
        hours = (time.monotonic() - t0) / 3600
        time.sleep(1)
        mine, other = alerts(agent.export_file, work)
        print(f"workload: {n} rounds in {hours * 60:.1f} min (" +
              ", ".join(f"{k} {v / n:.1f} s" for k, v in steps.items()) + " per round)")
        print(f"alerts from the workload: {sum(mine.values())} in {len(mine)} of {len(names)} rules")
        for name, count in mine.most_common():
            print(f"  {name:40s} {count:6d}  {count / hours:8.0f}/h")
        print(f"rules silent: {len(names) - len(mine)}; events from other processes meanwhile: "
              f"{dict(other.most_common(8))}")
        c = cost(agent, names, d, args.rounds, args.iterations)
        for what, unit in (("exec", "fork+exec of /bin/true"), ("open", "openat+close")):
            on, off = C.median(c[f"{what}_on"]), C.median(c[f"{what}_off"])
            print(f"{unit}: {off:,.0f} ns with every rule detached, {on:,.0f} ns with all {len(names)} rules "
                  f"({on / off - 1:+.1%})")
        print(mon.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
