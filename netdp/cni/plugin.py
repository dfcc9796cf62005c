"""lanner-cni: the CNI 1.1 plugin executable (placeholder until the plugin lands)."""

import sys


def main() -> int:
    sys.stdout.write('{"cniVersion":"1.1.0","code":50,"msg":"lanner-cni is not built yet"}\n')
    return 1
