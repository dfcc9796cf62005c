"""Fuzz the TracingPolicy path: bad policies cannot hurt.

Generates N structure-aware mutants of Tetragon's example corpus (../shared/tetragon-policies, read in place;
tests/policy_mutate.py says what is mutated) and runs each through the policy path without the kernel (load ->
validate -> compile -> pack, with this host's probe and with every mechanism available: tests/policy_fuzz.py).
Every mutant must be accepted, or rejected with messages that each name a field path (or a YAML line); any other
exception, a "cannot be compiled" hook, a value that does not fit the kernel's record or a run over the time limit
is a crash.

Every K-th accepted mutant and every 5K-th rejected one (--engine-every) also goes through a real
PolicyEngine.add on this kernel, in monitor mode (tests/policy_fuzz_kernel.py): after a rejection, or after
deleting what was accepted, the engine's maps, links, dispatcher registrations, set ids and policy list must be
exactly as before; each accepted one that writes hooks is loaded again while one map write fails part way (the
late failures a valid policy can meet), with the same check.

Prints progress, then the counts; crashes (first 20: the YAML, its edits and the traceback) are saved in the
directory it names. Exit code 1 on any crash, unlocated rejection or leak.

  .venv/bin/python bench/fuzz_policies.py                    10,000 mutants, seed 1, kernel path every 10th
  .venv/bin/python bench/fuzz_policies.py --count 500 --seed 7 --engine-every 0      pure path only
  .venv/bin/python bench/fuzz_policies.py --replay /tmp/lanner-fuzz-1/crash-0001.yaml one saved input again
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import SHARED  # noqa: E402
from tests.policy_fuzz import ACCEPTED, CRASH, NO_PATH, PurePath  # noqa: E402
from tests.policy_mutate import Mutant, Mutator, corpus_seeds  # noqa: E402

SAVED_CRASHES = 20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=10_000, help="mutants to generate (default 10000)")
    p.add_argument("--seed", type=int, default=1, help="random seed: the same seed gives the same mutants (default 1)")
    p.add_argument("--engine-every", type=int, default=10, metavar="K",
                   help="every K-th accepted mutant (and 5K-th rejected one) also through a real PolicyEngine.add "
                        "(default 10; 0: no kernel path)")
    p.add_argument("--max-units", type=int, default=8,
                   help="kernel path: skip accepted mutants with more hook units (attachments) than this (default 8)")
    p.add_argument("--time-limit", type=float, default=10.0,
                   help="seconds of CPU time per mutant (pure path) before it is a crash (default 10)")
    p.add_argument("--out", type=Path, default=None, help="where crashes are saved (default /tmp/lanner-fuzz-SEED)")
    p.add_argument("--corpus", type=Path, default=SHARED / "tetragon-policies", help="seed policies")
    p.add_argument("--replay", type=Path, default=None, help="run one saved YAML file through the pure path")
    return p.parse_args(argv)


class Run:
    """Counts and saved crashes of one fuzzing run."""

    def __init__(self, out: Path) -> None:
        self.counts: Counter[str] = Counter()
        self.out = out
        self.saved = 0
        self.slowest: tuple[float, int, str] = (0.0, -1, "")

    def crash(self, m: Mutant, text: str, what: str, trace: str) -> None:
        self.counts["crashes"] += 1
        if self.saved >= SAVED_CRASHES:
            return
        self.saved += 1
        self.out.mkdir(parents=True, exist_ok=True)
        base = self.out / f"crash-{self.saved:04d}"
        base.with_suffix(".yaml").write_text(text)
        base.with_suffix(".txt").write_text(f"mutant {m.number} of {m.seed}\nedits: {list(m.edits)}\n{what}\n\n{trace}")
        if self.saved <= 3:
            print(f"\nCRASH mutant {m.number} ({m.seed}; {', '.join(m.edits)[:300]})\n{trace.strip()[-1500:]}\n")

    def line(self, done: int, total: int, t0: float) -> str:
        c = self.counts
        return (f"{done:>6}/{total}  accepted {c['accepted']}  rejected {c['rejected']}  no-path {c['no-path']}  "
                f"crashes {c['crashes']}  kernel {c['kernel checks']} (leaks {c['leaks']})  {time.time() - t0:.0f} s")


def pure_step(run: Run, pure: PurePath, m: Mutant) -> str:
    """The mutant through the pure path, counted; its outcome's kind."""
    t = time.monotonic()
    o = pure.run(m.text)
    run.slowest = max(run.slowest, (time.monotonic() - t, m.number, "; ".join(m.edits)[:200]))
    if o.kind == CRASH:
        run.crash(m, m.text, o.detail, o.trace)
    else:
        run.counts[o.kind] += 1
        if o.kind == NO_PATH:
            run.crash(m, m.text, f"rejection without a field path: {o.detail}", o.detail)
            run.counts["crashes"] -= 1
    return o.kind


def kernel_step(run: Run, pure: PurePath, engine: Any, m: Mutant, rng: random.Random, max_units: int) -> None:
    from tests.policy_fuzz_kernel import FAULT_POINTS, monitored, submit, submit_with_fault

    text = monitored(m.text)
    o = pure.run(text)
    if o.kind == ACCEPTED and o.units > max_units:
        run.counts["kernel skipped (too many units)"] += 1
        return
    try:
        result = submit(engine, text)
        leaks = list(result.leaks)
        run.counts["kernel checks"] += 1
        run.counts["kernel accepted" if result.accepted else "kernel rejected"] += 1
        if result.accepted != (o.kind == ACCEPTED):
            run.counts["kernel late rejections" if o.kind == ACCEPTED else "kernel accepted a rejected text"] += 1
        if o.kind == ACCEPTED and result.accepted and o.units:  # it writes hooks: load it again, failing
            for point in rng.sample(FAULT_POINTS, len(FAULT_POINTS)):  # until one the policy writes to
                faulted, fired = submit_with_fault(engine, text, point, rng.randrange(2))
                leaks += [f"with {point} failing: {x}" for x in faulted.leaks]
                if fired:
                    run.counts["kernel fault checks"] += 1
                    break
    except Exception as exc:
        run.crash(m, text, f"kernel path: {type(exc).__name__}: {exc}", traceback.format_exc())
        return
    if leaks:
        run.counts["leaks"] += 1
        run.crash(m, text, "leak: " + "; ".join(leaks), "\n".join(leaks))
        run.counts["crashes"] -= 1


def report(run: Run, total: int, elapsed: float, args: argparse.Namespace) -> int:
    c = run.counts
    print(f"\nmutants            {total} (seed {args.seed}, {elapsed:.0f} s, {1000 * elapsed / max(total, 1):.1f} ms each)")
    print(f"slowest            {run.slowest[0]:.2f} s: mutant {run.slowest[1]} ({run.slowest[2]})")
    print(f"accepted           {c['accepted']}")
    print(f"rejected, located  {c['rejected']}")
    print(f"rejected, no path  {c['no-path']}")
    print(f"crashes            {c['crashes']}")
    if args.engine_every:
        print(f"kernel checks      {c['kernel checks']} ({c['kernel accepted']} accepted then deleted, "
              f"{c['kernel rejected']} rejected; {c['kernel skipped (too many units)']} skipped: more than "
              f"{args.max_units} hook units)")
        print(f"  late rejections  {c['kernel late rejections']} (accepted by the pure path, refused by the engine)")
        print(f"  wrongly accepted {c['kernel accepted a rejected text']}")
        print(f"  with a map write failing: {c['kernel fault checks']}")
    print(f"leaks              {c['leaks']}")
    if run.saved:
        print(f"saved {run.saved} failing inputs in {run.out}")
    bad = c["crashes"] + c["no-path"] + c["leaks"] + c["kernel accepted a rejected text"]
    print("FAIL" if bad else "OK")
    return 1 if bad else 0


def replay(path: Path, limit: float) -> int:
    o = PurePath(limit).run(path.read_text())
    print(o.kind, o.detail)
    if o.trace:
        print(o.trace)
    return 1 if o.kind in (CRASH, NO_PATH) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replay is not None:
        return replay(args.replay, args.time_limit)
    run = Run(args.out or Path(f"/tmp/lanner-fuzz-{args.seed}"))
    pure = PurePath(args.time_limit)
    mutator = Mutator(corpus_seeds(args.corpus), args.seed)
    rng = random.Random(args.seed)
    t0 = time.time()
    with ExitStack() as stack:
        engine = None
        if args.engine_every:
            from tests.policy_fuzz_kernel import real_engine
            engine = stack.enter_context(real_engine())
        seen: Counter[str] = Counter()
        for m in mutator.mutants(args.count):
            kind = pure_step(run, pure, m)
            seen[kind] += 1
            # every K-th accepted mutant, and every 5K-th rejected one, through the engine
            every = args.engine_every if kind == ACCEPTED else 5 * args.engine_every
            if engine is not None and seen[kind] % every == 0:
                kernel_step(run, pure, engine, m, rng, args.max_units)
            if (m.number + 1) % 500 == 0:
                print(run.line(m.number + 1, args.count, t0), flush=True)
    return report(run, args.count, time.time() - t0, args)


if __name__ == "__main__":
    sys.exit(main())
