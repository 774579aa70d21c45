"""Memory of one Chromium's processes, split so that runs on a shared machine compare.

PSS splits every page among all the processes that map it. Chromium's binary and data
files are mapped by every Chromium on the machine, so the file part of our PSS falls while
other instances run, and rises when they end; the anonymous part (heaps, surfaces, shared
memory between our own processes) does not depend on them. ``alone`` is the PSS with the
share of Chromium's own files (everything in its binary's directory) replaced by the
distinct physical pages of those files our processes map (read from /proc/PID/pagemap,
which gives frame numbers to root only): the PSS these processes would have if no other
Chromium ran. System libraries keep their share, as they would on a machine running only
this Chromium.
"""

from __future__ import annotations

import array
import os
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
PFN_MASK = (1 << 55) - 1


def rollup(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[name] = int(parts[0])
    return values


def chromium_dir(pid: int) -> str:
    """The directory of the program ``pid`` runs (Chromium's binary, paks, ICU data)."""
    try:
        return os.path.dirname(os.readlink(f"/proc/{pid}/exe")) + "/"
    except OSError:
        return "/nonexistent/"


def chromium_files(pid: int, directory: str) -> tuple[set[int], int]:
    """The physical frames ``pid`` maps of the files in ``directory`` (from
    /proc/PID/pagemap; frame numbers need root, without it the set is empty), and the PSS
    (KiB) those mappings count now (from /proc/PID/smaps)."""
    frames: set[int] = set()
    pss = 0
    try:
        smaps = Path(f"/proc/{pid}/smaps").read_text().splitlines()
        pagemap = open(f"/proc/{pid}/pagemap", "rb")  # noqa: SIM115
    except OSError:
        return frames, pss
    mine = False
    with pagemap:
        for line in smaps:
            parts = line.split(maxsplit=5)
            if "-" in parts[0] and not parts[0].endswith(":"):  # a mapping's header
                mine = len(parts) > 5 and parts[5].startswith(directory)
                if not mine:
                    continue
                start, end = (int(x, 16) for x in parts[0].split("-"))
                try:
                    pagemap.seek(start // PAGE * 8)
                    entries = array.array("Q", pagemap.read((end - start) // PAGE * 8))
                except (OSError, ValueError):
                    continue
                frames.update(e & PFN_MASK for e in entries if e >> 63 and e & PFN_MASK)
            elif mine and parts[0] == "Pss:":
                pss += int(parts[1])
    return frames, pss


def measure(pids: list[int]) -> dict[str, float]:
    """MiB summed over ``pids``: ``pss``, ``anon`` (Pss_Anon + Pss_Shmem), ``file``
    (Pss_File), ``uss``, ``alone`` (see above), and ``processes``."""
    total = {"pss": 0, "anon": 0, "file": 0, "uss": 0}
    for pid in pids:
        r = rollup(pid)
        total["pss"] += r.get("Pss", 0)
        total["anon"] += r.get("Pss_Anon", 0) + r.get("Pss_Shmem", 0)
        total["file"] += r.get("Pss_File", 0)
        total["uss"] += r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
    # Chromium's own files: replace their shared PSS by their whole size in memory
    frames: set[int] = set()
    shared_pss = 0
    directory = chromium_dir(pids[0]) if pids else "/nonexistent/"
    for pid in pids:
        mapped, pss = chromium_files(pid, directory)
        frames |= mapped
        shared_pss += pss
    result: dict[str, float] = {k: round(v / 1024, 1) for k, v in total.items()}
    if frames:
        alone_kib = total["pss"] - shared_pss + len(frames) * PAGE // 1024
        result["alone"] = round(alone_kib / 1024, 1)
    else:
        result["alone"] = float("nan")  # not root
    result["processes"] = len(pids)
    return result


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each process, in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
    ticks = {}
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


def cpu_percent(before: dict[int, int], after: dict[int, int], seconds: float) -> float:
    """Share of one core used between two ``cpu_ticks`` samples by the processes alive at
    both (a process that ended in between is not counted: measure windows without reloads)."""
    used = sum(after[pid] - before[pid] for pid in before.keys() & after.keys())
    return round(100 * used / os.sysconf("SC_CLK_TCK") / seconds, 2)


def other_chromium_processes(ours: set[int]) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in ours:
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("chromium") or comm == "chrome":
                count += 1
    return count
