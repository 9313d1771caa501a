"""Per-layer calibration statistics: plain sums, so ranks and batches combine by addition."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Token selections a block's angular distance can be read on: the last real token of each
#: sample (Gromov et al.) or the calibration's own selection (``tokens=``, default all).
ANGULAR_TOKENS = ("last", "all")


@dataclass(frozen=True)
class LayerStatistics:
    """Streaming sums over the selected tokens of one calibration domain.

    ``cos_sum[l]`` is the sum of cos(h_l_in, h_l_out); ``angular_sum[n][l]`` the sum of
    arccos(cos(h_l_in, h_{l+n}_in)) / pi, where h_L_in is the last layer's output;
    ``angular_last_sum`` the same on each sample's last real token (``last_tokens`` of them).
    ``norm_*`` hold the last layer's (or top block's) terms with h_L taken after the decoder's
    final norm, as the reference codes read it from ``output_hidden_states`` (None: the model
    has no final norm capture could find). ``divergence_sum`` is the sum over samples of
    KL(unpruned || this model) of the next-token distribution at the answer position, over
    ``divergence_samples`` samples (0: not measured).
    """

    num_layers: int
    cos_sum: tuple[float, ...]
    tokens: int
    samples: int
    forwards: int = 0
    angular_sum: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    last_tokens: int = 0
    angular_last_sum: Mapping[int, tuple[float, ...]] = field(default_factory=dict)
    norm_cos_sum: float | None = None
    norm_angular_sum: Mapping[int, float] = field(default_factory=dict)
    norm_angular_last_sum: Mapping[int, float] = field(default_factory=dict)
    divergence_sum: float = 0.0
    divergence_samples: int = 0

    def __post_init__(self) -> None:
        if len(self.cos_sum) != self.num_layers:
            raise ValueError(
                f"cos_sum has {len(self.cos_sum)} entries for {self.num_layers} layers"
            )
        for name in ("angular_sum", "angular_last_sum"):
            for n, values in getattr(self, name).items():
                if len(values) != self.num_layers - n + 1:
                    raise ValueError(
                        f"{name}[{n}] has {len(values)} entries, expected {self.num_layers - n + 1}"
                    )

    def similarity(self, final_norm: bool = False) -> list[float]:
        """Token-weighted mean cos(h_in, h_out) per layer; ``final_norm``: the last layer's
        output taken after the decoder's final norm (ShortGPT's reference code)."""
        if self.tokens <= 0:
            raise ValueError("these statistics hold no tokens: the calibration set gave no samples")
        sums = list(self.cos_sum)
        if final_norm:
            sums[-1] = self._norm_term(self.norm_cos_sum, "final_norm")
        return [c / self.tokens for c in sums]

    def angular_distance(
        self, n: int, tokens: str = "all", final_norm: bool = False
    ) -> list[float]:
        """Mean angular distance between the inputs of layers l and l+n, for each start l.

        ``tokens``: "all" = the calibration's token selection, "last" = each sample's last real
        token. ``final_norm``: the top block ends at the post-norm state.
        """
        if tokens not in ANGULAR_TOKENS:
            raise ValueError(
                f"angular_tokens={tokens!r} is not allowed; choose one of: {', '.join(ANGULAR_TOKENS)}"
            )
        sums, count = (
            (self.angular_sum, self.tokens)
            if tokens == "all"
            else (self.angular_last_sum, self.last_tokens)
        )
        if n not in sums:
            have = sorted(sums) or "none"
            raise ValueError(
                f"angular distance for blocks of n={n} on {tokens} tokens was not captured (captured: {have})"
            )
        if count <= 0:
            raise ValueError(f"these statistics hold no {tokens} tokens for the angular distance")
        values = list(sums[n])
        if final_norm:
            norm = self.norm_angular_sum if tokens == "all" else self.norm_angular_last_sum
            values[-1] = self._norm_term(norm.get(n), "final_norm")
        return [a / count for a in values]

    @staticmethod
    def _norm_term(value: float | None, param: str) -> float:
        if value is None:
            raise ValueError(
                f"{param}=true needs the state after the decoder's final norm, which capture did not "
                "find for this model (no 'norm' module next to the decoder layers); use final_norm=false"
            )
        return value

    def divergence(self) -> float:
        """Mean KL(unpruned || this model) at the answer positions."""
        if self.divergence_samples <= 0:
            raise ValueError("these statistics hold no output divergence (not measured)")
        return self.divergence_sum / self.divergence_samples

    def __add__(self, other: LayerStatistics) -> LayerStatistics:
        if other.num_layers != self.num_layers:
            raise ValueError(
                f"cannot add statistics of {self.num_layers} and {other.num_layers} layers"
            )

        def tuples(a: Mapping, b: Mapping) -> dict:
            return {
                n: tuple(x + y for x, y in zip(a[n], b[n], strict=True))
                for n in sorted(set(a) & set(b))
            }

        def scalars(a: Mapping, b: Mapping) -> dict:
            return {n: a[n] + b[n] for n in sorted(set(a) & set(b))}

        both_norm = self.norm_cos_sum is not None and other.norm_cos_sum is not None
        return LayerStatistics(
            num_layers=self.num_layers,
            cos_sum=tuple(a + b for a, b in zip(self.cos_sum, other.cos_sum, strict=True)),
            tokens=self.tokens + other.tokens,
            samples=self.samples + other.samples,
            forwards=self.forwards + other.forwards,
            angular_sum=tuples(self.angular_sum, other.angular_sum),
            last_tokens=self.last_tokens + other.last_tokens,
            angular_last_sum=tuples(self.angular_last_sum, other.angular_last_sum),
            norm_cos_sum=self.norm_cos_sum + other.norm_cos_sum if both_norm else None,
            norm_angular_sum=scalars(self.norm_angular_sum, other.norm_angular_sum)
            if both_norm
            else {},
            norm_angular_last_sum=(
                scalars(self.norm_angular_last_sum, other.norm_angular_last_sum)
                if both_norm
                else {}
            ),
            divergence_sum=self.divergence_sum + other.divergence_sum,
            divergence_samples=self.divergence_samples + other.divergence_samples,
        )

    _COUNTS = ("tokens", "samples", "forwards", "last_tokens", "divergence_samples")

    def flatten(self) -> list[float]:
        """Every sum as one list (for an all-reduce); :meth:`unflatten` reads it back."""
        flat = [*self.cos_sum, *(getattr(self, c) for c in self._COUNTS), self.divergence_sum]
        for name in ("angular_sum", "angular_last_sum"):
            for n in sorted(getattr(self, name)):
                flat.extend(getattr(self, name)[n])
        if self.norm_cos_sum is not None:
            flat.append(self.norm_cos_sum)
            flat += [self.norm_angular_sum[n] for n in sorted(self.norm_angular_sum)]
            flat += [self.norm_angular_last_sum[n] for n in sorted(self.norm_angular_last_sum)]
        return flat

    def unflatten(self, values: list[float]) -> LayerStatistics:
        """Statistics of the same shape as these, from :meth:`flatten`'s layout."""
        L = self.num_layers
        if len(values) != len(self.flatten()):
            raise ValueError(f"{len(values)} values do not fit statistics of {L} layers")
        it = iter(values)

        def take(k: int) -> tuple[float, ...]:
            return tuple(next(it) for _ in range(k))

        cos = take(L)
        counts = dict(
            zip(self._COUNTS, (int(round(v)) for v in take(len(self._COUNTS))), strict=True)
        )
        div = next(it)
        blocks = {
            name: {n: take(L - n + 1) for n in sorted(getattr(self, name))}
            for name in ("angular_sum", "angular_last_sum")
        }
        norm: dict = {}
        if self.norm_cos_sum is not None:
            norm["norm_cos_sum"] = next(it)
            norm["norm_angular_sum"] = {n: next(it) for n in sorted(self.norm_angular_sum)}
            norm["norm_angular_last_sum"] = {
                n: next(it) for n in sorted(self.norm_angular_last_sum)
            }
        return LayerStatistics(L, cos, **counts, divergence_sum=div, **blocks, **norm)

    def to_dict(self) -> dict:
        def keyed(m: Mapping) -> dict:
            return {str(n): (list(v) if isinstance(v, tuple) else v) for n, v in sorted(m.items())}

        return {
            "num_layers": self.num_layers,
            "cos_sum": list(self.cos_sum),
            "tokens": self.tokens,
            "samples": self.samples,
            "forwards": self.forwards,
            "angular_sum": keyed(self.angular_sum),
            "last_tokens": self.last_tokens,
            "angular_last_sum": keyed(self.angular_last_sum),
            "norm_cos_sum": self.norm_cos_sum,
            "norm_angular_sum": keyed(self.norm_angular_sum),
            "norm_angular_last_sum": keyed(self.norm_angular_last_sum),
            "divergence_sum": self.divergence_sum,
            "divergence_samples": self.divergence_samples,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> LayerStatistics:
        def blocks(name: str) -> dict:
            return {int(n): tuple(float(x) for x in v) for n, v in data.get(name, {}).items()}

        def scalars(name: str) -> dict:
            return {int(n): float(v) for n, v in data.get(name, {}).items()}

        norm = data.get("norm_cos_sum")
        return cls(
            num_layers=int(data["num_layers"]),
            cos_sum=tuple(float(x) for x in data["cos_sum"]),
            tokens=int(data["tokens"]),
            samples=int(data["samples"]),
            forwards=int(data.get("forwards", 0)),
            angular_sum=blocks("angular_sum"),
            last_tokens=int(data.get("last_tokens", 0)),
            angular_last_sum=blocks("angular_last_sum"),
            norm_cos_sum=None if norm is None else float(norm),
            norm_angular_sum=scalars("norm_angular_sum"),
            norm_angular_last_sum=scalars("norm_angular_last_sum"),
            divergence_sum=float(data.get("divergence_sum", 0.0)),
            divergence_samples=int(data.get("divergence_samples", 0)),
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
