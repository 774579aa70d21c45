"""What issue 17 asks the daemon to export, and how tests read it: the list is written
out here, apart from the code, so that a metric dropped by mistake fails a test."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

# Sample name -> its label names. (``sync`` metrics come once sync exists.)
EXPECTED: dict[str, tuple[str, ...]] = {
    "colab_gateway_component_health": ("component",),
    "colab_gateway_component_restarts_total": ("component",),
    "colab_gateway_runtime_connected": ("session",),
    "colab_gateway_runtime_gpu": ("session",),
    "colab_gateway_runtime_needs_human": ("session",),
    "colab_gateway_reconnects_total": ("session", "reason"),
    "colab_gateway_dialogs_total": ("session", "kind"),
    "colab_gateway_reruns_total": ("session",),
    "colab_gateway_vm_resets_total": ("session",),
    "colab_gateway_colab_refusals_total": ("session", "reason"),
    "colab_gateway_tunnel_up": ("session",),
    "colab_gateway_tunnel_bytes_total": ("session", "direction"),
    "colab_gateway_tunnel_refused_total": ("reason",),
    "colab_gateway_tunnel_penalised_sources": (),
    "colab_gateway_browser_pss_bytes": (),
    "colab_gateway_browser_restarts_total": ("reason",),
    "colab_gateway_ddns_published_timestamp_seconds": ("family",),
    "colab_gateway_ddns_errors_total": ("kind",),
    "colab_gateway_up_seconds": (),
    # The Colab VM's own facts (issue 27), sampled by vm_stats.
    **{
        f"colab_gateway_vm_{name}": ("session", "accelerator")
        for name in (
            "gpu_utilization_ratio",
            "gpu_memory_used_bytes",
            "gpu_memory_total_bytes",
            "memory_used_bytes",
            "memory_total_bytes",
            "disk_used_bytes",
            "disk_total_bytes",
            "uptime_seconds",
        )
    },
    "colab_gateway_build_info": (
        "asyncssh",
        "chromium",
        "chromium_engine",
        "python",
        "selenium",
        "version",
    ),
}

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def family_names(text: str) -> set[str]:
    """Every metric the exposition declares (HELP/TYPE), with or without samples."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def samples(text: str) -> Samples:
    """Sample name -> {sorted label pairs: value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def value(text_or_samples: str | Samples, name: str, **labels: str) -> float | None:
    got = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return got.get(name, {}).get(tuple(sorted(labels.items())))


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())
