"""Reports the sandbox it runs in to /output/probe.json: user, capabilities, no-new-privs,
mounts, network interfaces, cgroup limits (v1 or v2 file names)."""

import json
import os
from pathlib import Path


def status(field: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def writable(path: str) -> bool:
    try:
        Path(path, ".probe").write_text("x")
        Path(path, ".probe").unlink()
        return True
    except OSError:
        return False


def cgroup(*paths: str) -> str | None:
    """The first readable of the cgroup files (v1 and v2 names), stripped."""
    for path in paths:
        try:
            return Path("/sys/fs/cgroup", path).read_text().strip()
        except OSError:
            continue
    return None


mounts = {}
for line in Path("/proc/self/mounts").read_text().splitlines():
    _, target, fstype, options, *_ = line.split()
    mounts[target] = {"type": fstype, "options": options.split(",")}
report = {
    "uid": os.getuid(),
    "gid": os.getgid(),
    "cap_eff": status("CapEff"),
    "no_new_privs": status("NoNewPrivs"),
    "mounts": {k: v for k, v in mounts.items() if k in ("/", "/tmp", "/input", "/output")},
    "tmp_size": os.statvfs("/tmp").f_blocks * os.statvfs("/tmp").f_frsize,
    "output_size": os.statvfs("/output").f_blocks * os.statvfs("/output").f_frsize,
    "writable": {p: writable(p) for p in ("/", "/tmp", "/input", "/output", "/opt")},
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "input": sorted(str(p.relative_to("/input")) for p in Path("/input").rglob("*")),
    "env": {k: os.environ.get(k) for k in ("HOME", "OMP_NUM_THREADS")},
    "cgroup": {
        "memory": cgroup("memory/memory.limit_in_bytes", "memory.max"),
        "memory_and_swap": cgroup("memory/memory.memsw.limit_in_bytes"),
        "swap": cgroup("memory.swap.max"),
        "pids": cgroup("pids/pids.max", "pids.max"),
        "cpu_quota": cgroup("cpu/cpu.cfs_quota_us"),
        "cpu_period": cgroup("cpu/cpu.cfs_period_us"),
        "cpu_max": cgroup("cpu.max"),
    },
}
Path("/output/probe.json").write_text(json.dumps(report, indent=1))
