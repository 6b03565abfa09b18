#!/usr/bin/env python3
"""Runs every figure of docs/performance.md in one go and prints the tables.

Usage: cargo build --release && python3 scripts/perf-report.py [--seconds S] > /tmp/report.md
Each figure is one `dtc bench --json` run; all of them run in one session on
the same machine, so the ratios are comparable.
"""
import json, subprocess, sys, tempfile, shutil, os

SECONDS = "3"
if "--seconds" in sys.argv:
    SECONDS = sys.argv[sys.argv.index("--seconds") + 1]
DTC = os.path.join(os.path.dirname(__file__), "..", "target", "release", "dtc")

def run(*args):
    out = subprocess.run([DTC, *args, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

def bench(system, durability, threads, extra=(), services=8, accounts=100_000):
    args = ["bench", "--system", system, "--durability", durability, "--threads", str(threads),
            "--seconds", SECONDS, "--services", str(services), "--accounts", str(accounts), *extra]
    tmp = None
    if durability == "sync":
        tmp = tempfile.mkdtemp(prefix="dtc-perf-")
        args += ["--dir", tmp]
    try:
        return run(*args)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

def main():
    limits_dir = tempfile.mkdtemp(prefix="dtc-limits-")
    limits = run("bench", "--limits", "--dir", limits_dir)
    shutil.rmtree(limits_dir, ignore_errors=True)
    print("## Machine limits\n")
    for k, v in limits.items():
        print(f"- `{k}`: {v:,.1f}")
    print()
    for durability in ["none", "sync"]:
        print(f"## dtc vs naive, durability {durability} (8 services, 100 000 accounts, 1 leg)\n")
        print("| threads | dtc tx/s | dtc p50 µs | dtc p99 µs | naive tx/s | naive p99 µs | ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for t in [1, 2, 4, 8, 16] + ([64] if durability == "sync" else []):
            d = bench("dtc", durability, t)
            n = bench("naive", durability, t)
            print(f"| {t} | {d['tx_per_s']:,.0f} | {d['p50_us']:.1f} | {d['p99_us']:.1f} | {n['tx_per_s']:,.0f} | {n['p99_us']:.1f} | {d['tx_per_s']/n['tx_per_s']:.2f}× |")
        print()
    print("## Group-commit gathering (durability sync, dtc, same run)\n")
    print("| threads | gather off tx/s | p99 µs | gather on (default) tx/s | p99 µs | on / off |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t in [1, 4, 16]:
        off = bench("dtc", "sync", t, ["--gather-us", "0"])
        on = bench("dtc", "sync", t)
        print(f"| {t} | {off['tx_per_s']:,.0f} | {off['p99_us']:.1f} | {on['tx_per_s']:,.0f} | {on['p99_us']:.1f} | {on['tx_per_s']/off['tx_per_s']:.2f}× |")
    print()
    print("## Batches (`--batch 1000`, 2 threads; p50/p99 are per batch call)\n")
    print("| durability | transfers/s | p50 µs | p99 µs |")
    print("| --- | --- | --- | --- |")
    for durability in ["none", "sync"]:
        d = bench("dtc", durability, 2, ["--batch", "1000"])
        print(f"| {durability} | {d['tx_per_s']:,.0f} | {d['p50_us']:.0f} | {d['p99_us']:.0f} |")
    print()
    print("## Skew (4 threads, in memory)\n")
    print("| accounts chosen | dtc tx/s | aborted | p99 µs | naive tx/s |")
    print("| --- | --- | --- | --- | --- |")
    for skew in [None, "0.99", "1.2"]:
        extra = [] if skew is None else ["--skew", skew]
        d = bench("dtc", "none", 4, extra)
        n = bench("naive", "none", 4, extra)
        print(f"| {'uniform' if skew is None else 'Zipf ' + skew} | {d['tx_per_s']:,.0f} | {d['aborted']:,} | {d['p99_us']:.1f} | {n['tx_per_s']:,.0f} |")
    print()
    print("## Scaling with services (4 threads, 2 legs, in memory)\n")
    print("| services | tx/s | p99 µs |")
    print("| --- | --- | --- |")
    for s in [1, 2, 8, 16, 64]:
        d = bench("dtc", "none", 4, ["--legs", "2"], services=s)
        print(f"| {s} | {d['tx_per_s']:,.0f} | {d['p99_us']:.1f} |")
    print()
    print("## Scaling with accounts (4 threads, in memory)\n")
    print("| accounts | tx/s | p99 µs |")
    print("| --- | --- | --- |")
    for a in [1_000, 10_000, 100_000, 1_000_000, 10_000_000]:
        d = bench("dtc", "none", 4, accounts=a)
        print(f"| {a:,} | {d['tx_per_s']:,.0f} | {d['p99_us']:.1f} |")
    print()
    mem = run("memory", "--accounts", "10000000")
    print(f"## Memory\n\n10 000 000 accounts: {mem['structure_bytes_per_account']:.1f} bytes/account in the ledger's structures, "
          f"{mem['resident_bytes_per_account']:.1f} resident, created in {mem['seconds_to_create']:.1f} s.\n")

if __name__ == "__main__":
    main()
