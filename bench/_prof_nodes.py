"""Scratch: py-spy a node during a two-node drain (not part of the benchmarks)."""
import asyncio, subprocess, sys, threading, time
from bench import scale_out as so
from bench import notebooks as nbs
from postgres import throwaway_server

orig = so._Cpu.__init__

def hooked(self, nodes, robots):
    orig(self, nodes, robots)
    for i, pid in enumerate(nodes):
        subprocess.Popen([".venv/bin/py-spy", "record", "-p", str(pid), "-d", "12", "-r", "200",
                          "-f", "raw", "-o", f"/tmp/prof-{len(nodes)}-{i}.txt"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

so._Cpu.__init__ = hooked
with throwaway_server() as server:
    for count in (int(sys.argv[1]),):
        with nbs.temp_dir(f"prof-{count}") as work:
            r = asyncio.run(so._drain_nodes(server, work, count, 8000))
            print(count, round(r["rate"]), r["cpu"], flush=True)
            time.sleep(3)
