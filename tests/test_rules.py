"""The built-in rule library: every rule is a valid Tetragon policy that this kernel can serve, mapped to
MITRE ATT&CK with a severity and notes; the catalog, the overlay and `lanner rules` without an agent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lanner.rules
from lanner.policy.loader import load_policy_file
from lanner.rules import catalog

RULES = sorted(Path(lanner.rules.__file__).parent.glob("*.yaml"))


def test_rules_exist_and_validate():
    assert len(RULES) >= 40
    names = set()
    for path in RULES:
        policies = load_policy_file(path)
        assert len(policies) == 1, path
        p = policies[0]
        assert p.name.startswith("lanner-") and p.name not in names
        assert not p.warnings, (path, p.warnings)
        names.add(p.name)
        for hook in p.spec.kprobes:
            assert hook.syscall, f"{path}: built-in rules hook syscalls only, so they run on any kernel"


def test_every_rule_is_mapped_observes_and_tags_its_events():
    rules = catalog.load_catalog()
    assert len(rules) == len(RULES) and len({r.tactic for r in rules}) == len(catalog.TACTICS)
    for r in rules:
        assert r.techniques and all(t.startswith("T1") for t in r.techniques), r
        assert r.description and r.false_positives and r.kernel, r
        assert not r.enforcing, f"{r.path}: built-in rules observe; enforcement comes from an overlay"
        spec = yaml.safe_load(r.path.read_text())["spec"]
        hooks = spec.get("kprobes", []) + spec.get("lsmhooks", [])
        assert hooks and set(spec) <= {"kprobes", "lsmhooks"}, r.path
        for hook in hooks:
            assert set(hook["tags"]) == {*r.techniques, r.tactic_id}, (r.path, hook)
            assert len(hook.get("selectors", [])) <= 5 and hook["message"]
        if "lsmhooks" in spec:  # an LSM variant: named so, its kernel said, a syscall rule beside it
            assert r.name.endswith("-lsm") and "BPF LSM" in r.kernel, r.name


def test_select_by_tactic_and_severity():
    rules = catalog.load_catalog()
    high = catalog.select(rules, min_severity="high")
    assert high and {r.severity for r in high} <= {"high", "critical"}
    ex = catalog.select(rules, tactics=["execution", "impact"], min_severity="medium")
    assert {r.tactic for r in ex} == {"execution", "impact"} and all(r.severity != "low" for r in ex)
    with pytest.raises(ValueError, match="unknown tactic 'exfil'"):
        catalog.select(rules, tactics=["exfil"])


def test_overlay_merges_exceptions_and_enforce(tmp_path):
    rules = catalog.load_catalog()
    ov = tmp_path / "team.yaml"
    ov.write_text("exceptions:\n  lanner-cron-write: [/opt/backup/agent]\n  lanner-mounts: [/usr/bin/snapd]\n"
                  "enforce: [lanner-miner-exec]\ndisable: [lanner-exec-from-tmp]\nminSeverity: info\n")
    overlay = catalog.load_overlay(ov, rules)
    out = tmp_path / "out"
    written = {p.name for p in catalog.render(rules, overlay, out)}
    assert "exec-from-tmp.yaml" not in written and len(written) == len(rules) - 1
    cron = load_policy_file(out / "cron-write.yaml")[0]
    for hook in cron.spec.kprobes:
        for sel in hook.selectors:
            assert "/opt/backup/agent" in sel.match_binaries[0].values and "/usr/bin/crontab" in sel.match_binaries[0].values
    mounts = yaml.safe_load((out / "mounts.yaml").read_text())  # a rule without selectors gets one
    assert mounts["spec"]["kprobes"][0]["selectors"] == [{"matchBinaries": [{"operator": "NotIn", "values": ["/usr/bin/snapd"]}]}]
    miner = yaml.safe_load((out / "miner-exec.yaml").read_text())
    assert miner["spec"]["kprobes"][0]["selectors"][0]["matchActions"] == [{"action": "Sigkill"}]
    assert catalog.load_catalog(out)[0].name  # the rendered set is a valid catalog too
    assert [r for r in catalog.load_catalog(out) if r.name == "lanner-miner-exec"][0].enforcing


@pytest.mark.parametrize("text, message", [
    ("enforce: [lanner-mounts]\n", "enforce.lanner-mounts: the rule is not marked safe to enforce"),
    ("disable: [lanner-nope]\n", "disable: no rule named 'lanner-nope'"),
    ("exceptions: {lanner-nope: [/x]}\n", "exceptions.lanner-nope: no rule named"),
    ("exceptions: {lanner-cron-write: [relative]}\n", "exceptions.lanner-cron-write: a list of absolute binary paths"),
    ("minSeverity: urgent\n", "unknown severity 'urgent'"),
    ("enforced: []\n", "unknown key 'enforced'"),
])
def test_overlay_errors_name_the_file_and_field(tmp_path, text, message):
    ov = tmp_path / "bad.yaml"
    ov.write_text(text)
    with pytest.raises(ValueError, match=message) as exc:
        catalog.load_overlay(ov, catalog.load_catalog())
    assert str(ov) in str(exc.value)


def test_overlay_refuses_binary_exceptions_on_binary_selected_rules(tmp_path):
    ov = tmp_path / "o.yaml"
    ov.write_text("exceptions: {lanner-reverse-shell-connect: [/usr/bin/bash]}\n")
    rules = catalog.load_catalog()
    with pytest.raises(ValueError, match="lanner-reverse-shell-connect .*matchBinaries Postfix"):
        catalog.render(rules, catalog.load_overlay(ov, rules), tmp_path / "out")


def test_rules_cli_without_agent(tmp_path):
    lanner = [sys.executable, "-m", "lanner", "rules"]
    p = subprocess.run(lanner + ["list", "-o", "json", "--server-address", f"unix://{tmp_path}/none.sock",
                                 "--timeout", "1"], capture_output=True, text=True, timeout=60)
    rows = json.loads(p.stdout)
    assert len(rows) == len(RULES) and {x["state"] for x in rows} == {"agent not reachable"}
    assert {"rule", "tactic", "technique", "severity", "state", "mode"} <= set(rows[0])
    p = subprocess.run(lanner + ["render", "--out", str(tmp_path / "r"), "--enforce", "lanner-mounts"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "--enforce lanner-mounts" in p.stderr
    p = subprocess.run(lanner + ["--help"], capture_output=True, text=True, timeout=60)
    assert "overlay" in p.stdout and "lanner rules disable --tactic discovery" in p.stdout


def test_rules_readme_lists_every_rule():
    readme = (Path(lanner.rules.__file__).parent / "README.md").read_text()
    for path in RULES:
        assert f"`{path.name}`" in readme
        assert f"`{load_policy_file(path)[0].name}`" in readme


def test_agent_serves_builtin_rules_and_policy_cli(tmp_path):
    import re
    import time

    from tests.conftest import start_agent

    lanner = [sys.executable, "-m", "lanner"]
    a = start_agent(tmp_path, "--tracing-policy-dir", lanner_rules_dir())
    try:
        for _ in range(100):  # the policy files load right after the API is up
            p = subprocess.run(lanner + ["tp", "list", "-o", "json", "--server-address", a.address],
                               capture_output=True, text=True, timeout=30)
            listed = {x["name"]: x for x in json.loads(p.stdout)}
            if len(listed) == len(RULES) and all(x["state"] != "TP_STATE_LOADING" for x in listed.values()):
                break
            time.sleep(0.2)
        assert set(listed) == {load_policy_file(r)[0].name for r in RULES}
        tracefs = Path("/sys/kernel/tracing/events/syscalls")
        for name, x in listed.items():
            if x["state"] != "TP_STATE_ENABLED":
                # only a syscall this kernel does not have (e.g. init_module without CONFIG_MODULES) may fail,
                # and the status must say so
                if name.endswith("-lsm") and not _has_bpf_lsm():
                    assert "needs BPF LSM programs" in x.get("error", ""), x  # the LSM variants, without BPF LSM
                    continue
                missing = re.findall(r"no syscalls/(sys_enter_\w+) tracepoint", x.get("error", ""))
                assert missing and not any((tracefs / m).exists() for m in missing), x
        # a shadow-like path that does not exist: the open is reported, no credential is read
        reader = subprocess.Popen(["/bin/cat", "/etc/shadow.lanner-test-missing"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        reader.wait()

        def shadow_opens(evs):
            return [e["process_kprobe"] for e in evs if "process_kprobe" in e
                    and e["process_kprobe"]["process"]["pid"] == reader.pid]

        ev = shadow_opens(a.wait_for(shadow_opens, what="sensitive-file event"))[0]
        assert ev["policy_name"] == "lanner-sensitive-files" and ev["function_name"] == "__x64_sys_openat"
        assert {"string_arg": "/etc/shadow.lanner-test-missing"} in ev["args"] and "T1003.008" in ev["tags"]
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


def _has_bpf_lsm() -> bool:
    try:
        return "bpf" in Path("/sys/kernel/security/lsm").read_text().split(",")
    except OSError:
        return False


def lanner_rules_dir() -> str:
    return str(Path(lanner.rules.__file__).parent)


def test_docs_list_every_rule_with_its_mapping():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "rules.md").read_text()
    for r in catalog.load_catalog():
        row = next((line for line in doc.splitlines() if line.startswith(f"| `{r.name}` |")), None)
        assert row and all(t in row for t in r.techniques) and f"| {r.severity} |" in row, r.name


def test_agent_rule_flags_choose_the_set_and_enforce(tmp_path):
    """--rules-tactic / --rules-min-severity / --rules-enforce / --rules-overlay render the set the agent loads."""
    import time

    from tests.conftest import start_agent

    ov = tmp_path / "team.yaml"
    ov.write_text("disable: [lanner-sysrq-trigger]\n")
    a = start_agent(tmp_path, "--tracing-policy-dir", lanner_rules_dir(), "--rules-tactic", "impact",
                    "--rules-min-severity", "high", "--rules-enforce", "lanner-miner-exec", "--rules-overlay", str(ov))
    want = {r.name for r in catalog.select(catalog.load_catalog(), ["impact"], "high")} - {"lanner-sysrq-trigger"}
    try:
        for _ in range(100):
            p = subprocess.run([sys.executable, "-m", "lanner", "rules", "list", "-o", "json", "--tactic", "impact",
                                "--server-address", a.address], capture_output=True, text=True, timeout=30)
            rows = {x["rule"]: x for x in json.loads(p.stdout)}
            if {k for k, v in rows.items() if v["state"] == "enabled"} == want:
                break
            time.sleep(0.2)
        assert {k for k, v in rows.items() if v["state"] == "enabled"} == want, rows
        assert rows["lanner-miner-exec"]["mode"] == "enforce" and rows["lanner-miner-pool-connect"]["mode"] == "observe"
        assert rows["lanner-sysrq-trigger"]["state"] == "not loaded"
    finally:
        a.stop()
    bad = subprocess.run([sys.executable, "-m", "lanner", "agent", "--tracing-policy-dir", "", "--rules-tactic",
                          "impact"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--tracing-policy-dir, which is empty" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "lanner", "agent", "--rules-enforce", "lanner-mounts"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--rules-enforce lanner-mounts" in bad.stderr
