"""Per-layer calibration statistics: plain sums, so ranks and batches combine by addition."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LayerStatistics:
    """Streaming sums over the selected tokens of one calibration domain.

    ``cos_sum[l]`` is the sum of cos(h_l_in, h_l_out); ``angular_sum[n][l]`` the sum of
    arccos(cos(h_l_in, h_{l+n}_in)) / pi, where h_L_in is the last layer's output.
    """

    num_layers: int
    cos_sum: tuple[float, ...]
    tokens: int
    samples: int
    forwards: int = 0
    angular_sum: Mapping[int, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.cos_sum) != self.num_layers:
            raise ValueError(
                f"cos_sum has {len(self.cos_sum)} entries for {self.num_layers} layers"
            )
        for n, values in self.angular_sum.items():
            if len(values) != self.num_layers - n + 1:
                raise ValueError(
                    f"angular_sum[{n}] has {len(values)} entries, expected {self.num_layers - n + 1}"
                )

    def similarity(self) -> list[float]:
        """Token-weighted mean cos(h_in, h_out) per layer."""
        if self.tokens <= 0:
            raise ValueError("these statistics hold no tokens: the calibration set gave no samples")
        return [c / self.tokens for c in self.cos_sum]

    def angular_distance(self, n: int) -> list[float]:
        """Mean angular distance between the inputs of layers l and l+n, for each start l."""
        if n not in self.angular_sum:
            have = sorted(self.angular_sum) or "none"
            raise ValueError(
                f"angular distance for blocks of n={n} was not captured (captured: {have})"
            )
        return [a / self.tokens for a in self.angular_sum[n]]

    def __add__(self, other: LayerStatistics) -> LayerStatistics:
        if other.num_layers != self.num_layers:
            raise ValueError(
                f"cannot add statistics of {self.num_layers} and {other.num_layers} layers"
            )
        ns = set(self.angular_sum) & set(other.angular_sum)
        return LayerStatistics(
            num_layers=self.num_layers,
            cos_sum=tuple(a + b for a, b in zip(self.cos_sum, other.cos_sum, strict=True)),
            tokens=self.tokens + other.tokens,
            samples=self.samples + other.samples,
            forwards=self.forwards + other.forwards,
            angular_sum={
                n: tuple(
                    a + b for a, b in zip(self.angular_sum[n], other.angular_sum[n], strict=True)
                )
                for n in sorted(ns)
            },
        )

    def flatten(self) -> list[float]:
        """Every sum as one list (for an all-reduce); :meth:`unflatten` reads it back."""
        flat = [*self.cos_sum, self.tokens, self.samples, self.forwards]
        for n in sorted(self.angular_sum):
            flat.extend(self.angular_sum[n])
        return flat

    def unflatten(self, values: list[float]) -> LayerStatistics:
        """Statistics of the same shape as these, from :meth:`flatten`'s layout."""
        L = self.num_layers
        if len(values) != len(self.flatten()):
            raise ValueError(f"{len(values)} values do not fit statistics of {L} layers")
        angular, pos = {}, L + 3
        for n in sorted(self.angular_sum):
            angular[n] = tuple(values[pos : pos + L - n + 1])
            pos += L - n + 1
        counts = [int(round(v)) for v in values[L : L + 3]]
        return LayerStatistics(L, tuple(values[:L]), *counts, angular)

    def to_dict(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "cos_sum": list(self.cos_sum),
            "tokens": self.tokens,
            "samples": self.samples,
            "forwards": self.forwards,
            "angular_sum": {str(n): list(v) for n, v in sorted(self.angular_sum.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LayerStatistics:
        return cls(
            num_layers=int(data["num_layers"]),
            cos_sum=tuple(float(x) for x in data["cos_sum"]),
            tokens=int(data["tokens"]),
            samples=int(data["samples"]),
            forwards=int(data.get("forwards", 0)),
            angular_sum={
                int(n): tuple(float(x) for x in v) for n, v in data.get("angular_sum", {}).items()
            },
        )


def pool(stats: Iterable[LayerStatistics]) -> LayerStatistics:
    """All domains together, as if they were one calibration set."""
    items = list(stats)
    if not items:
        raise ValueError("no calibration statistics to pool")
    total = items[0]
    for s in items[1:]:
        total = total + s
    return total
