"""Reading one sample of the VM's facts: what ``SAMPLE_SCRIPT`` printed, split into its
sections and parsed defensively.

The VM is only semi-trusted (root there is any notebook cell or pip package): every field
is checked, a value that does not parse is absent (None), never 0, and the accelerator's
name is escaped with ``untrusted()`` before it goes anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gateway.untrusted import quoted, untrusted

MIB = 1024 * 1024
NAME_LIMIT = 60  # an accelerator's name: "NVIDIA A100-SXM4-40GB" is 21
# Each section's bound on the VM (``head -c``) and the whole sample's on the Pi.
SECTION_BYTES = 4096
OUTPUT_LIMIT = 6 * SECTION_BYTES
MARK = "@@gw-"  # a section starts with a line "@@gw-<name>"

GPU_QUERY = "name,utilization.gpu,memory.used,memory.total"
# nvidia-smi is on Colab's PATH through /opt/bin; an ssh login's PATH lacks that.
SAMPLE_SCRIPT = (
    "export PATH=/opt/bin:/usr/local/nvidia/bin:$PATH LC_ALL=C; "
    f"echo {MARK}gpu; "
    f"timeout 10 nvidia-smi --query-gpu={GPU_QUERY} --format=csv,noheader,nounits "
    f"2>/dev/null | head -c {SECTION_BYTES}; "
    f"echo; echo {MARK}free; free -b 2>/dev/null | head -c {SECTION_BYTES}; "
    f"echo {MARK}df; timeout 5 df -P -B1 /content 2>/dev/null | head -c {SECTION_BYTES}; "
    f"echo {MARK}uptime; head -c 200 /proc/uptime; echo {MARK}end"
)


@dataclass(frozen=True)
class Gpu:
    name: str | None
    utilization: float | None  # 0..1
    memory_used: int | None  # bytes
    memory_total: int | None


@dataclass
class Sample:
    """One look at the VM. ``problems``: what did not parse, in a few words each."""

    gpus: list[Gpu] = field(default_factory=list)
    memory_used: int | None = None
    memory_total: int | None = None
    disk_used: int | None = None
    disk_total: int | None = None
    uptime: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.gpus and self.memory_total is None and self.uptime is None


def sections(output: str) -> dict[str, str]:
    """``{"gpu": ..., "free": ..., ...}`` from the marked output; unknown marks ignored."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith(MARK):
            name = line[len(MARK) :].strip()
            current = found.setdefault(name, []) if name in _SECTIONS else None
            continue
        if current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


_SECTIONS = {"gpu", "free", "df", "uptime", "end"}
_NUMBER = re.compile(r"^\d{1,15}(\.\d{1,6})?$")


def _number(text: str) -> float | None:
    """A plain non-negative number, or None ("[N/A]", "[Not Supported]", garbage)."""
    text = text.strip()
    return float(text) if _NUMBER.match(text) else None


def parse_gpus(text: str) -> tuple[list[Gpu], list[str]]:
    """nvidia-smi's ``--query-gpu=GPU_QUERY --format=csv,noheader,nounits``: one line per
    GPU, ``Tesla T4, 87, 11468, 15360`` (utilisation in %, memory in MiB)."""
    gpus: list[Gpu] = []
    problems: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4:
            problems.append(f"nvidia-smi line {quoted(line, 200)} has not 4 fields")
            continue
        name, util, used, total = fields
        percent = _number(util)
        gpu = Gpu(
            name=untrusted(name, NAME_LIMIT) if name and not name.startswith("[") else None,
            utilization=percent / 100 if percent is not None and percent <= 100 else None,
            memory_used=_mib(used),
            memory_total=_mib(total),
        )
        if gpu.utilization is None and gpu.memory_total is None:
            problems.append(f"nvidia-smi line {quoted(line, 200)} has no number")
            continue
        gpus.append(gpu)
    return gpus, problems


def _mib(text: str) -> int | None:
    value = _number(text)
    return int(value * MIB) if value is not None else None


def parse_free(text: str) -> tuple[int | None, int | None]:
    """``free -b``'s ``Mem:`` line: (used, total) in bytes. Used is total - available when
    ``available`` is there (what a person means by used: caches can be given back)."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "Mem:" and len(fields) >= 3:
            numbers = [_number(f) for f in fields[1:]]
            total, used = numbers[0], numbers[1]
            available = numbers[5] if len(numbers) >= 6 else None
            if total is None:
                return None, None
            if available is not None and available <= total:
                return int(total - available), int(total)
            return (int(used) if used is not None else None), int(total)
    return None, None


def parse_df(text: str) -> tuple[int | None, int | None]:
    """``df -P -B1 /content``: (used, total) bytes from the line after the header."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None, None
    fields = lines[-1].split()
    if len(fields) < 6:
        return None, None
    total, used = _number(fields[1]), _number(fields[2])
    return (int(used) if used is not None else None), (int(total) if total is not None else None)


def parse_uptime(text: str) -> float | None:
    """/proc/uptime: ``12345.67 23456.78``: the first number, seconds since boot."""
    fields = text.split()
    return _number(fields[0]) if fields else None


def parse(output: str) -> Sample:
    found = sections(output)
    sample = Sample()
    if "end" not in found:
        sample.problems.append("the output ended early")
    sample.gpus, gpu_problems = parse_gpus(found.get("gpu", ""))
    sample.problems += gpu_problems
    sample.memory_used, sample.memory_total = parse_free(found.get("free", ""))
    sample.disk_used, sample.disk_total = parse_df(found.get("df", ""))
    sample.uptime = parse_uptime(found.get("uptime", ""))
    if sample.empty:
        sample.problems.append("no fact in the output")
    return sample
