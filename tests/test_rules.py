"""The built-in rule library: every rule is a valid Tetragon policy that this kernel can serve."""

from __future__ import annotations

from pathlib import Path

import lanner.rules
from lanner.policy.loader import load_policy_file

RULES = sorted(Path(lanner.rules.__file__).parent.glob("*.yaml"))


def test_rules_exist_and_validate():
    assert len(RULES) >= 5
    names = set()
    for path in RULES:
        policies = load_policy_file(path)
        assert len(policies) == 1, path
        p = policies[0]
        assert p.name.startswith("lanner-") and p.name not in names
        names.add(p.name)
        for hook in p.spec.kprobes:
            assert hook.syscall, f"{path}: built-in rules hook syscalls only, so they run on any kernel"


def test_rules_readme_lists_every_rule():
    readme = (Path(lanner.rules.__file__).parent / "README.md").read_text()
    for path in RULES:
        assert f"`{path.name}`" in readme
        assert f"`{load_policy_file(path)[0].name}`" in readme


def test_agent_serves_builtin_rules_and_policy_cli(tmp_path):
    import json
    import re
    import subprocess
    import sys

    from tests.conftest import start_agent

    lanner = [sys.executable, "-m", "lanner"]
    a = start_agent(tmp_path, "--tracing-policy-dir", lanner_rules_dir())
    try:
        p = subprocess.run(lanner + ["tp", "list", "-o", "json", "--server-address", a.address],
                           capture_output=True, text=True, timeout=30)
        listed = {x["name"]: x for x in json.loads(p.stdout)}
        assert set(listed) == {load_policy_file(r)[0].name for r in RULES}
        tracefs = Path("/sys/kernel/tracing/events/syscalls")
        for name, x in listed.items():
            if x["state"] != "TP_STATE_ENABLED":
                # only a syscall this kernel does not have (e.g. init_module without CONFIG_MODULES) may fail,
                # and the status must say so
                missing = re.findall(r"no syscalls/(sys_enter_\w+) tracepoint", x.get("error", ""))
                assert missing and not any((tracefs / m).exists() for m in missing), x
        reader = subprocess.Popen(["/bin/cat", "/etc/shadow"], stdout=subprocess.DEVNULL)
        reader.wait()

        def shadow_opens(evs):
            return [e["process_kprobe"] for e in evs if "process_kprobe" in e
                    and e["process_kprobe"]["process"]["pid"] == reader.pid]

        ev = shadow_opens(a.wait_for(shadow_opens, what="sensitive-file event"))[0]
        assert ev["policy_name"] == "lanner-sensitive-files" and ev["function_name"] == "__x64_sys_openat"
        assert {"string_arg": "/etc/shadow"} in ev["args"]
        assert ev["process"]["binary"] == "/bin/cat" and ev["message"] == "sensitive file opened"
        # add, disable, delete a policy through the CLI
        pol = tmp_path / "extra.yaml"
        pol.write_text((Path(lanner_rules_dir()) / "mounts.yaml").read_text().replace("lanner-mounts", "extra-mounts"))
        for args, expect in ((["add", str(pol)], "loaded"), (["disable", "extra-mounts"], "disabled"),
                             (["delete", "extra-mounts"], "deleted")):
            p = subprocess.run(lanner + ["tp", *args, "--server-address", a.address], capture_output=True, text=True,
                               timeout=30)
            assert p.returncode == 0 and expect in p.stdout, p.stderr
        bad = tmp_path / "bad.yaml"
        bad.write_text("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: bad}\n"
                       "spec: {kprobes: [{call: sys_read, syscall: true, selectors: [{matchArgs: "
                       "[{index: 0, operator: Prefx, values: ['x']}]}]}]}\n")
        p = subprocess.run(lanner + ["tp", "add", str(bad), "--server-address", a.address], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 1 and "operator: 'Prefx' is not one of" in p.stderr
        p = subprocess.run(lanner + ["tp", "delete", "nope", "--server-address", a.address], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 1 and "nope" in p.stderr
    finally:
        a.stop()


def lanner_rules_dir() -> str:
    return str(Path(lanner.rules.__file__).parent)
