"""Peak-memory helpers shared by the benchmarks (Linux /proc; zeros elsewhere)."""

from __future__ import annotations

from pathlib import Path


def status_kb(key: str) -> int:
    """A ``/proc/self/status`` field in kB (VmRSS, VmHWM, ...), 0 when unavailable."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> int:
    """Reset the resident high-water mark (VmHWM) to the current RSS; returns that RSS in kB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return status_kb("VmRSS")
