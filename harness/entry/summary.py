"""The typed summary of a result document: the figures a front end stores, ranks and prints (the
site's database columns, the CLI's closing line), read from the document in one place so that no
front end digs through its key paths."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from harness.artifacts.precision import PrecisionReport
from harness.inference.latency import board_latency

MB = 1e6
"""Sizes are shown in decimal megabytes (bytes / 10^6)."""


def split_of(result: dict, split: str | None) -> dict:
    """The ``split`` entry of a result document (case ids, per-class means, summary); empty when
    ``split`` is None or the document has no such split (older documents have none)."""
    return (result.get("splits") or {}).get(split, {}) if split else {}


@dataclass(frozen=True)
class ResultSummary:
    """Scores (mean DSC / NSD / HD95, the spread of mean DSC over resampled calibration sets, the
    drop vs FP32 in percent, the 95% CI of mean DSC, the FP32 mean and the accuracy gate), the
    verified precision (bits, granularity label, effective bits per weight, size, "× smaller"),
    latency (the entry's and FP32's medians of the one paired protocol, "× faster" their ratio
    with its bootstrap interval; all None on the simulator) and the artifact's digest. None where
    not measured."""

    mean_dsc: float
    mean_nsd: float
    mean_hd95: float | None
    calibration_sd: float | None
    dsc_drop_pct: float
    dsc_ci_low: float
    dsc_ci_high: float
    fp32_mean_dsc: float
    gate_passed: bool
    weight_bits: int | None
    activation_bits: int | None
    granularity: str
    size_mb: float | None
    bits_per_weight: float | None
    x_smaller: float | None
    latency_ms: float | None
    fp32_latency_ms: float | None
    x_faster: float | None
    x_faster_ci_low: float | None
    x_faster_ci_high: float | None
    artifact_digest: str
    verification: str = field(default="", compare=False)
    """One line: what verification read from the artifact (for logs, not a column)."""

    @classmethod
    def of(cls, result: dict, split: str | None = None) -> ResultSummary:
        """The figures of ``result``; its accuracy figures over the cases of ``split`` (public or
        private, see ``harness.scoring.splits``) where the document holds that split, else over
        all its cases."""
        summary = result["summary"] | split_of(result, split).get("summary", {})
        precision = result["submission"]["precision"]
        report = PrecisionReport.of(precision)
        size = report.size_bytes
        return cls(
            mean_dsc=summary["mean_dsc"],
            mean_nsd=summary["mean_nsd"],
            mean_hd95=summary.get("mean_hd95"),
            calibration_sd=(summary.get("calibration") or {}).get("sd"),
            dsc_drop_pct=summary["dsc_drop_pct"],
            dsc_ci_low=summary["dsc_ci95"][0],
            dsc_ci_high=summary["dsc_ci95"][1],
            fp32_mean_dsc=summary["fp32_mean_dsc"],
            gate_passed=summary["accuracy_gate"]["passed"],
            weight_bits=report.weight_bits,
            activation_bits=report.activation_bits,
            granularity=report.granularity,
            size_mb=size / MB if size else None,
            bits_per_weight=report.bits_per_weight,
            x_smaller=result.get("compression", {}).get("x_smaller"),
            **board_latency(result),  # every latency figure from the one paired protocol
            artifact_digest=report.artifact_sha256,
            verification=_verification(precision),
        )

    def columns(self) -> dict:
        """The figures a front end stores, as a flat mapping (field name → value)."""
        return {k: v for k, v in asdict(self).items() if k != "verification"}

    def scores_line(self) -> str:
        """One log line: the scores and the accuracy gate."""
        gate = "passed" if self.gate_passed else "failed"
        return (
            f"mean DSC {self.mean_dsc:.4f} (FP32 {self.fp32_mean_dsc:.4f}), "
            f"mean NSD {self.mean_nsd:.4f}; accuracy gate {gate}"
        )


def _verification(precision: dict) -> str:
    acts = precision.get("activation_bits")
    bpw = precision.get("bits_per_weight")
    return (
        f"verified: {precision.get('weight_bits')}-bit weights, "
        f"{f'{acts}-bit' if acts else 'floating-point'} activations, "
        f"{precision.get('granularity')}, {precision.get('size_bytes', 0) / MB:.3f} MB"
        + (f", {bpw:.2f} bits per weight" if bpw is not None else "")
    )


def result_lines(result: dict, label: str, out: object) -> list[str]:
    """What ``harness evaluate`` prints of a result document written to ``out``: the scores,
    and on a real backend its size, kernels and the paired latency protocol."""
    s = result["summary"]
    lines = [
        f"{label}: mean DSC {s['mean_dsc']:.4f} (↓{s['dsc_drop_pct']:.2f}%), "
        f"mean NSD {s['mean_nsd']:.4f} (↓{s['nsd_drop_pct']:.2f}%), "
        f"95% CI [{s['dsc_ci95'][0]:.4f}, {s['dsc_ci95'][1]:.4f}] → {out}"
    ]
    efficiency = result.get("efficiency")
    if efficiency is None:
        return lines
    lines.append(_efficiency_line(efficiency))
    protocol = efficiency.get("latency_protocol")
    if protocol:
        lines.append(_protocol_line(protocol))
    return lines


def _efficiency_line(e: dict) -> str:
    patch, volume = e["latency_ms"]["per_patch"], e["latency_ms"].get("per_volume")
    kernels = e.get("kernels", {})
    return (
        f"{e['backend']}: {e['size_mb']:.2f} MB, per patch {patch['median_ms']:.1f} ms "
        f"(p95 {patch['p95_ms']:.1f})"
        + (f", per volume {volume['median_ms']:.0f} ms" if volume else "")
        + (
            f", {kernels['int8_mac_fraction']:.0%} of conv/linear MACs in integer kernels"
            if kernels
            else ""
        )
    )


def _protocol_line(protocol: dict) -> str:
    speedup = protocol["speedup"]
    low, high = speedup["ci95"]
    verdict = "faster" if low > 1 else "slower than FP32" if high < 1 else "no clear difference"
    return (
        f"latency protocol ({protocol['pairs']} interleaved pairs, {protocol['threads']} "
        f"thread(s), {protocol['unit'].replace('_', ' ')}): entry "
        f"{protocol['entry']['median_ms']:.1f} ms (IQR {protocol['entry']['iqr_ms']:.1f}), "
        f"FP32 {protocol['fp32']['median_ms']:.1f} ms → {speedup['median']:.2f}× "
        f"[{low:.2f}, {high:.2f}] ({verdict})"
    )
