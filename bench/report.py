"""
Figures to text: median and range of the repetitions, ratios between
targets measured in the same invocation, and the issue's targets.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from bench.workloads import Measurement, Workload

# The issue's targets, as (workload, peer) -> (comparison, factor) on
# ours/peer of the figure: for rates "ours >= factor x peer", for times
# "ours <= factor x peer".
RATIO_TARGETS: dict[tuple[str, str], tuple[str, float]] = {
    ("W1", "postfix"): (">=", 2.0),
    ("W1", "twisted-nofsync"): (">=", 1.0),
    ("W2", "postfix"): (">=", 1.5),
    ("W3", "postfix"): (">=", 1.0),
    ("W4", "dovecot"): ("<=", 1.0),
}
# Absolute figures from the issue's machine: shown, never mixed with ours.
ISSUE_FIGURES = {
    ("W1", "twisted-nofsync"): "2,000 msg/s on the issue's machine",
    ("W1", "postfix"): "630-1,040 msg/s on the issue's machine",
    ("W4", "dovecot"): "0.6 s on the issue's machine",
}
MAX_PEAK_RSS_MB = 60.0
# R20 is "bounded" if its peak exceeds W3's by less than one message.
LARGE_MESSAGE_MB = 20.0


@dataclass
class Series:
    """
    The repetitions of one workload on one target.
    """

    workload: Workload
    target: str
    runs: list[Measurement]

    @property
    def values(self) -> list[float]:
        return [m.value for m in self.runs]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def peak_rss(self) -> float | None:
        peaks = [m.peak_rss_mb for m in self.runs if m.peak_rss_mb is not None]
        return max(peaks) if peaks else None


def _figure(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def describe(series: Series) -> str:
    values = series.values
    text = f"{_figure(series.median)} [{_figure(min(values))}-{_figure(max(values))}]"
    return text


def verdict(comparison: str, factor: float, ratio: float) -> str:
    met = ratio >= factor if comparison == ">=" else ratio <= factor
    return "met" if met else "MISSED"


def workload_block(workload: Workload, results: dict[str, Series]) -> list[str]:
    """
    The detailed lines of one workload: every target's figure, ours/peer
    ratios with the issue's targets, our peak RSS.
    """
    better = "higher" if workload.higher_is_better else "lower"
    lines = [f"{workload.key}  {workload.title}  ({workload.unit}, {better} is better)"]
    ours = results.get("mailappliance")
    for name, series in results.items():
        line = f"    {name:<16} {describe(series):>28}"
        if name == "mailappliance" and series.peak_rss is not None:
            line += f"   peak RSS {series.peak_rss:.1f} MB"
        if name != "mailappliance" and ours is not None and series.median:
            ratio = ours.median / series.median
            line += f"   ours/{name} = {ratio:.2f}"
            target = RATIO_TARGETS.get((workload.key, name))
            if target is not None:
                line += f"   target {target[0]} {target[1]:g}: {verdict(*target, ratio)}"
            if (workload.key, name) in ISSUE_FIGURES:
                line += f"   (issue: {ISSUE_FIGURES[(workload.key, name)]})"
        lines.append(line)
    for name, series in results.items():
        for index, run in enumerate(series.runs, 1):
            for note in run.notes:
                lines.append(f"      {name} run {index}: {note}")
    return lines


def summary_table(all_results: dict[str, dict[str, Series]], workloads: list[Workload]) -> list[str]:
    """
    One Markdown table: a row per workload with our figure, each peer's,
    the ratios, our peak RSS, and whether the issue's targets are met.
    """
    lines = [
        "| workload | unit | mailappliance | peer | peer figure | ours/peer | target | peak RSS (ours) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    w3_peak = None
    for workload in workloads:
        results = all_results.get(workload.key)
        if not results or "mailappliance" not in results:
            continue
        ours = results["mailappliance"]
        rss = ours.peak_rss
        if workload.key == "W3":
            w3_peak = rss
        rss_text = "-" if rss is None else f"{rss:.1f} MB"
        if rss is not None and workload.key in ("W1", "W2", "W3", "W4"):
            rss_text += f" ({verdict('<=', MAX_PEAK_RSS_MB, rss)} <= {MAX_PEAK_RSS_MB:g})"
        if workload.key == "R20" and rss is not None and w3_peak is not None:
            growth = rss - w3_peak
            rss_text += f" ({growth:+.1f} MB vs W3: {'bounded' if growth < LARGE_MESSAGE_MB else 'GROWS'})"
        peers = [name for name in results if name != "mailappliance"]
        if not peers:
            lines.append(f"| {workload.key} {workload.title} | {workload.unit} | {describe(ours)} | - | - | - | - |"
                         f" {rss_text} |")
            continue
        for index, peer in enumerate(peers):
            series = results[peer]
            ratio = ours.median / series.median if series.median else float("nan")
            target = RATIO_TARGETS.get((workload.key, peer))
            target_text = f"{target[0]} {target[1]:g}: {verdict(*target, ratio)}" if target else "-"
            first = index == 0
            lines.append(
                f"| {workload.key + ' ' + workload.title if first else ''} | {workload.unit if first else ''} "
                f"| {describe(ours) if first else ''} | {peer} | {describe(series)} | {ratio:.2f} "
                f"| {target_text} | {rss_text if first else ''} |"
            )
    return lines
