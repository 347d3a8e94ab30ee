"""Report objects the stages return, and their one-line-per-kind text form for the CLI."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from amos_onnx.find.sites import Site
from amos_onnx.fit.site_fit import FitSource, SiteFit
from amos_onnx.options import EmitForm
from amos_onnx.rewrite.graph import RewriteResult


class SiteStatus(StrEnum):
    """What became of an activation site."""

    CONVERTED = "converted"
    WOULD_CONVERT = "would convert"  # inspect: nothing written
    SKIPPED = "skipped"


@dataclass(frozen=True)
class SiteReport:
    """One activation site: converted with its gate's figures, or skipped with the reason."""

    node: str
    op: str
    function: str | None
    status: SiteStatus
    reason: str | None = None
    k: int | None = None
    source: FitSource | None = None
    fit_range: tuple[float, float] | None = None
    mse: float | None = None
    max_error: float | None = None
    mean_spikes: float | None = None
    fit_seconds: float | None = None  # the site's fit (shared by the sites it serves; a focused fit: its refit)

    @classmethod
    def of(cls, site: Site, fit: SiteFit | None, status: SiteStatus) -> SiteReport:
        label = site.activation.label if site.activation else None
        if not site.converts or fit is None:
            return cls(site.name, site.op, label, SiteStatus.SKIPPED if not site.converts else status, site.reason)
        return cls(
            site.name, site.op, label, status, None, fit.params.k, fit.source, (fit.lo, fit.hi),
            fit.mse, fit.max_error, fit.mean_spikes, fit.seconds,
        )


@dataclass
class ConversionReport:
    """What `convert` (or `inspect`) did to a model, site by site."""

    input: str
    output: str | None
    sites: list[SiteReport] = field(default_factory=list)
    emit: EmitForm | None = None
    calibration: str | None = None  # what the calibration data was, or None for data-free ranges
    calibration_samples: int = 0
    ir_version: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    near_misses: list[tuple[str, str]] = field(default_factory=list)  # (node, why it is not a composite)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # wall time per pipeline stage
    # --bias-correction: every bias written, {"node", "initializer", "channels", "changed", "largest"} (largest:
    # the largest absolute change of a channel's bias); --reconstruct: every refitted layer, the same and
    # "weight_initializer", "weight_change" (relative, Frobenius) and "held_out_ratio" (its error after over before)
    biases: list[dict[str, object]] = field(default_factory=list)
    # --latency / --spike-budget: K per site, the latency and critical path, mean spikes per gate, the predicted
    # output change beside the best uniform K's, and the measured curves (fit.budget.Allocation.to_dict)
    budget: dict[str, object] | None = None

    @property
    def converted(self) -> int:
        return sum(s.status is SiteStatus.CONVERTED for s in self.sites)

    @property
    def skipped(self) -> int:
        return sum(s.status is SiteStatus.SKIPPED for s in self.sites)

    def kind_lines(self) -> list[str]:
        """One line per op type: how many converted, how many skipped and why."""
        by_op: dict[str, list[SiteReport]] = defaultdict(list)
        for site in self.sites:
            by_op[site.op].append(site)
        lines = []
        for op, sites in sorted(by_op.items()):
            done = Counter(str(s.status) for s in sites if s.status is not SiteStatus.SKIPPED)
            parts = [f"{n} {status}" for status, n in sorted(done.items())]
            reasons = Counter(s.reason for s in sites if s.status is SiteStatus.SKIPPED)
            parts += [f"{n} skipped ({reason})" for reason, n in sorted(reasons.items(), key=lambda r: str(r[0]))]
            ks = sorted({s.k for s in sites if s.k})
            suffix = f"  K={','.join(map(str, ks))}" if ks else ""
            lines.append(f"{op}: {', '.join(parts)}{suffix}")
        return lines

    def summary(self) -> str:
        if not self.sites:
            if not self.output:
                return "no activations found"
            return "no activations found; the model is unchanged apart from being re-saved"
        fitting = f"fitted on {self.calibration} ({self.calibration_samples} samples)" if self.calibration else (
            "data-free default ranges (no --calib)"
        )
        verb = "converted" if self.output else "would convert"
        n = self.converted if self.output else sum(s.status is SiteStatus.WOULD_CONVERT for s in self.sites)
        return f"{verb} {n} of {len(self.sites)} activation sites, {self.skipped} skipped; gates {fitting}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def site_reports(sites: list[Site], fits: dict[str, SiteFit], status: SiteStatus) -> list[SiteReport]:
    return [SiteReport.of(site, fits.get(site.name), status) for site in sites]


def rewrite_notes(result: RewriteResult) -> list[str]:
    before, after = result.ir_version
    notes = []
    if after != before:
        why = "function overloads need IR 10" if result.overloads else "the initializers stay constants, not inputs"
        notes.append(f"IR version raised from {before} to {after} ({why})")
    return notes
