"""The table that ``foveal models`` prints: every EfficientNet variant with parameters, FLOPs and resolution."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from foveal.models import efficientnet as eff


@dataclass(frozen=True)
class ModelRow:
    name: str
    width: float
    depth: float
    resolution: int
    dropout: float
    params: int
    macs: int


def model_rows(extra_phis: list[float] | None = None, num_classes: int = 1000) -> list[ModelRow]:
    """One row per named variant B0–B7 (released coefficients) and per extra φ (from α, β, γ)."""
    entries = [(f"efficientnet_{k}", s) for k, s in eff.VARIANTS.items()]
    entries += [(f"efficientnet phi={phi:g}", eff.compound_scaling(phi)) for phi in extra_phis or []]
    rows = []
    for name, s in entries:
        with torch.device("meta"):
            model = eff.EfficientNet(width=s.width, depth=s.depth, num_classes=num_classes, dropout=s.dropout)
        rows.append(
            ModelRow(
                name,
                s.width,
                s.depth,
                s.resolution,
                s.dropout,
                eff.count_parameters(model),
                eff.count_flops(model, s.resolution),
            )
        )
    return rows


def format_models(extra_phis: list[float] | None = None) -> str:
    """A plain-text table of :func:`model_rows` (FLOPs are multiply-adds, as in the paper's Table 2)."""
    header = f"{'model':<24}{'width':>7}{'depth':>7}{'res':>6}{'dropout':>9}{'params':>10}{'FLOPs':>9}"
    lines = [header, "-" * len(header)]
    for r in model_rows(extra_phis):
        lines.append(
            f"{r.name:<24}{r.width:>7.3f}{r.depth:>7.3f}{r.resolution:>6}{r.dropout:>9.2f}"
            f"{r.params / 1e6:>9.2f}M{r.macs / 1e9:>8.2f}B"
        )
    lines.append("params for 1000 classes and 3 input channels; FLOPs = multiply-adds at the listed resolution")
    return "\n".join(lines)
