#!/usr/bin/env python3
"""Measures engine failover on a 3-node NATS cluster with three engines.

Starts three nats-servers as one cluster (loopback, free ports, temp
stores) and three `jetsaga server` engines (R3 streams, default lease
settings unless given), then repeatedly SIGKILLs the engine leading
partition 0 and measures the time until another engine leads it (as
`jetsaga cluster status` reports: the lease names it and its heartbeat says
it leads), restarting the killed engine after each round. Prints each time
and the distribution as JSON.

    cargo build --release --bin jetsaga
    python3 scripts/failover.py --rounds 20 [--jetsaga target/release/jetsaga]
        [--nats-server .venv/bin/nats-server] [--lease-ttl 3s --lease-renew 1s]

The time is measured from the kill to the first status that names another
leader, polled every 50 ms: it includes the lease TTL, the new leader's
catching up and its first record, and the heartbeat's second.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(nats_server, root):
    ports = [(free_port(), free_port()) for _ in range(3)]
    procs = []
    for i, (client, route) in enumerate(ports):
        d = os.path.join(root, f"n{i}")
        os.makedirs(d)
        routes = ", ".join(f'"nats-route://127.0.0.1:{r}"' for _, r in ports if r != route)
        conf = os.path.join(d, "server.conf")
        with open(conf, "w") as f:
            f.write(
                f'server_name: n{i}\nlisten: "127.0.0.1:{client}"\n'
                f'jetstream {{ store_dir: "{d}/data" }}\n'
                f'cluster {{ name: failover, listen: "127.0.0.1:{route}", routes: [{routes}] }}\n'
            )
        procs.append(
            subprocess.Popen([nats_server, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return procs, ",".join(f"nats://127.0.0.1:{c}" for c, _ in ports)


def status(jetsaga, url):
    out = subprocess.run(
        [jetsaga, "--nats-url", url, "--output", "json", "cluster", "status"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    if out.returncode != 0:
        return None
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError:
        return None


def leader(st):
    if not st or not st.get("partitions"):
        return None
    lead = st["partitions"][0].get("leader")
    beats = any(e["id"] == lead and e["partitions"] == [0] for e in st.get("engines", []))
    return lead if beats else None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--jetsaga", default="target/release/jetsaga")
    p.add_argument("--nats-server", default=".venv/bin/nats-server")
    p.add_argument("--lease-ttl", default=None)
    p.add_argument("--lease-renew", default=None)
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="jetsaga-failover-")
    nats, url = start_cluster(args.nats_server, root)
    engines = {}

    def spawn(eid):
        cmd = [args.jetsaga, "--nats-url", url, "server", "--replicas", "3", "--engine-id", eid,
               "--data-dir", os.path.join(root, eid)]
        if args.lease_ttl:
            cmd += ["--lease-ttl", args.lease_ttl]
        if args.lease_renew:
            cmd += ["--lease-renew", args.lease_renew]
        log = open(os.path.join(root, f"{eid}.log"), "a")
        engines[eid] = subprocess.Popen(cmd, stdout=log, stderr=log)

    times = []
    try:
        deadline = time.time() + 60
        for eid in ("e1", "e2", "e3"):
            spawn(eid)
        while leader(status(args.jetsaga, url)) is None:
            if time.time() > deadline:
                sys.exit("no leader within 60 s; logs in " + root)
            time.sleep(0.2)
        for r in range(args.rounds):
            old = leader(status(args.jetsaga, url))
            # Every engine up and beating before the kill.
            while len((status(args.jetsaga, url) or {}).get("engines", [])) < 3:
                time.sleep(0.2)
            engines[old].send_signal(signal.SIGKILL)
            killed = time.time()
            engines[old].wait()
            while True:
                new = leader(status(args.jetsaga, url))
                if new is not None and new != old:
                    break
                if time.time() - killed > 60:
                    sys.exit(f"round {r}: no new leader within 60 s; logs in {root}")
                time.sleep(0.05)
            took = time.time() - killed
            times.append(took)
            print(f"round {r + 1}: killed {old}, {new} leads after {took:.2f} s", file=sys.stderr)
            spawn(old)
    finally:
        for e in engines.values():
            e.kill()
        for n in nats:
            n.kill()
    times.sort()
    print(json.dumps({
        "rounds": len(times),
        "lease_ttl": args.lease_ttl or "3s (default)",
        "lease_renew": args.lease_renew or "1s (default)",
        "seconds": [round(t, 2) for t in times],
        "min": round(times[0], 2),
        "median": round(statistics.median(times), 2),
        "p90": round(times[int(0.9 * (len(times) - 1))], 2),
        "max": round(times[-1], 2),
    }, indent=2))


if __name__ == "__main__":
    main()
