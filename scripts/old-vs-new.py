#!/usr/bin/env python3
"""The same-run comparison of docs/performance.md: an old `dtc` binary against
the new one (and the naive baseline), interleaved round by round so drift on
this shared machine hits both alike, then the HTTP and branch benchmarks and
the machine limits of the new binary.

Usage:
  git worktree add /tmp/old OLD_COMMIT && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target cargo build --release)
  cargo build --release
  python3 scripts/old-vs-new.py --old /tmp/old-target/release/dtc [--rounds 3] [--seconds 3] [--handles] [--no-extras] > report.md

--handles adds, in the same rounds, the new binary and the naive baseline
with `--handles` (accounts resolved once: dtc's `Account` handles, naive's
prebuilt names); --no-extras skips the HTTP and branch-store tables.

Each figure is one `dtc bench --json` run; a table cell is the median of the
rounds, and the ratio column is the median of the per-round ratios.
"""
import json, os, shutil, statistics, subprocess, sys, tempfile


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


OLD = arg("--old", None)
ROUNDS = int(arg("--rounds", "3"))
HANDLES = "--handles" in sys.argv
EXTRAS = "--no-extras" not in sys.argv
SECONDS = arg("--seconds", "3")
NEW = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "dtc")


def run(binary, *args):
    tmp = tempfile.mkdtemp(prefix="dtc-ovn-")
    try:
        full = [binary, "bench", *args, "--json"]
        if "--limits" in args or "sync" in args:
            full += ["--dir", tmp]
        out = subprocess.run(full, capture_output=True, text=True, check=True, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ledger(binary, system, durability, threads, batch, handles=False):
    args = ["--system", system, "--durability", durability, "--threads", str(threads),
            "--seconds", SECONDS] + (["--handles"] if handles else [])
    if batch > 1:
        args += ["--batch", str(batch)]
    r = run(binary, *args)
    return r["tx_per_s"], r["p50_us"], r["p99_us"]  # tx_per_s counts transfers, batched or not


def print_limits(limits, prefix=""):
    for k, v in limits.items():
        if isinstance(v, dict):
            print_limits(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)):
            print(f"- `{prefix}{k}`: {v:,.1f}")
        else:
            print(f"- `{prefix}{k}`: {v}")


def med(xs):
    return statistics.median(xs)


def main():
    print(f"Rounds: {ROUNDS}, {SECONDS} s per figure, old = `{OLD}`, new = `{NEW}`.\n")
    limits = run(NEW, "--limits")
    print("## Limits (new binary, at the start)\n")
    print_limits(limits)
    print()

    cases = [("none", t, 1) for t in (1, 2, 4, 16)] + [("sync", t, 1) for t in (1, 4, 16)]
    cases += [("sync", 64, 1), ("none", 2, 1000), ("sync", 2, 1000)]
    if OLD:
        results = {c: {"old": [], "new": [], "naive": [], "new-h": [], "naive-h": []} for c in cases}
        for rnd in range(ROUNDS):
            for c in cases:
                d, t, b = c
                order = ["old", "new"] if rnd % 2 == 0 else ["new", "old"]
                for who in order:
                    results[c][who].append(ledger(OLD if who == "old" else NEW, "dtc", d, t, b))
                if b == 1:
                    results[c]["naive"].append(ledger(NEW, "naive", d, t, b))
                if HANDLES:
                    results[c]["new-h"].append(ledger(NEW, "dtc", d, t, b, handles=True))
                    if b == 1:
                        results[c]["naive-h"].append(ledger(NEW, "naive", d, t, b, handles=True))
                print(f"<!-- round {rnd + 1} {c} done -->", file=sys.stderr, flush=True)
        print("## Ledger, old vs new vs naive (8 services, 100 000 accounts, 1 leg)\n")
        print("| durability | threads | batch | old tx/s | new tx/s | new/old (median of rounds) | naive tx/s | new/naive | old p50/p99 µs | new p50/p99 µs |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for c in cases:
            d, t, b = c
            o, n, nv = results[c]["old"], results[c]["new"], results[c]["naive"]
            ratio = med([x[0] / y[0] for x, y in zip(n, o)])
            naive = f"{med([x[0] for x in nv]):,.0f}" if nv else ""
            vs_naive = f"{med([x[0] / y[0] for x, y in zip(n, nv)]):.2f}×" if nv else ""
            print(f"| {d} | {t} | {b} | {med([x[0] for x in o]):,.0f} | {med([x[0] for x in n]):,.0f} | "
                  f"**{ratio:.2f}×** | {naive} | {vs_naive} | "
                  f"{med([x[1] for x in o]):,.1f} / {med([x[2] for x in o]):,.0f} | "
                  f"{med([x[1] for x in n]):,.1f} / {med([x[2] for x in n]):,.0f} |")
        print("\n(batch rows: transfers/s; p50/p99 per batch call)\n")
        if HANDLES:
            print("## Accounts resolved once (`--handles`), same rounds\n")
            print("| durability | threads | batch | new tx/s | new --handles tx/s | naive --handles tx/s | handles / naive --handles | handles / naive | new --handles p50/p99 µs |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for c in cases:
                d, t, b = c
                n, h, nh, nv = results[c]["new"], results[c]["new-h"], results[c]["naive-h"], results[c]["naive"]
                naive_h = f"{med([x[0] for x in nh]):,.0f}" if nh else ""
                vs_h = f"**{med([x[0] / y[0] for x, y in zip(h, nh)]):.2f}×**" if nh else ""
                vs_n = f"{med([x[0] / y[0] for x, y in zip(h, nv)]):.2f}×" if nv else ""
                print(f"| {d} | {t} | {b} | {med([x[0] for x in n]):,.0f} | {med([x[0] for x in h]):,.0f} | "
                      f"{naive_h} | {vs_h} | {vs_n} | "
                      f"{med([x[1] for x in h]):,.1f} / {med([x[2] for x in h]):,.0f} |")
            print()

    if not EXTRAS:
        limits = run(NEW, "--limits")
        print("## Limits (new binary, at the end)\n")
        print_limits(limits)
        return

    print("## HTTP: `dtc bench --http --participants 3` (new binary)\n")
    print("| durability | threads | tx/s | p50 µs | p99 µs |")
    print("| --- | --- | --- | --- | --- |")
    for d in ("none", "sync"):
        for t in (1, 16, 64):
            r = run(NEW, "--http", "--participants", "3", "--durability", d, "--threads", str(t),
                    "--seconds", SECONDS)
            print(f"| {d} | {t} | {r['tx_per_s']:,.0f} | {r['p50_us']:,.1f} | {r['p99_us']:,.1f} |", flush=True)
    print()

    print("## In-process participants with durable stores: `dtc bench --branches 3` (new binary)\n")
    print("| durability | threads | tx/s | p50 µs | p99 µs |")
    print("| --- | --- | --- | --- | --- |")
    for d in ("none", "sync"):
        for t in (1, 16):
            r = run(NEW, "--branches", "3", "--durability", d, "--threads", str(t), "--seconds", SECONDS)
            print(f"| {d} | {t} | {r['tx_per_s']:,.0f} | {r['p50_us']:,.1f} | {r['p99_us']:,.1f} |", flush=True)
    print()

    limits = run(NEW, "--limits")
    print("## Limits (new binary, at the end)\n")
    print_limits(limits)


if __name__ == "__main__":
    main()
