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
