"""Per-feature normalisation whose statistics travel with the checkpoint.

min_max maps [min, max] to [-1, 1] (the range the sampler clips to); mean_std standardises.
Images are not normalised here: encoders take them in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

STAT_NAMES = ("min", "max", "mean", "std")
EPS = 1e-8


class NormalizerError(ValueError):
    pass


class Normalizer:
    def __init__(
        self,
        stats: Mapping[str, Mapping[str, object]],
        mode: str = "min_max",
        gains: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        """`gains`: per-key, per-dim factors applied after normalising (and undone first when
        unnormalising): the network's space may shrink some dims (PolicyConfig.action_gain)."""
        self.gains = {k: torch.as_tensor(list(v), dtype=torch.float32) for k, v in (gains or {}).items()}
        if mode not in ("min_max", "mean_std"):
            raise NormalizerError(f"normalisation mode must be 'min_max' or 'mean_std', got {mode!r}")
        self.mode = mode
        self.stats: dict[str, dict[str, torch.Tensor]] = {}
        for key, s in stats.items():
            needed = ("min", "max") if mode == "min_max" else ("mean", "std")
            missing = [n for n in needed if n not in s]
            if missing:
                raise NormalizerError(f"stats for {key!r} lack {missing} (mode {mode})")
            self.stats[key] = {}
            for n in STAT_NAMES:
                if n in s:
                    t = torch.as_tensor(np.asarray(s[n], dtype=np.float32)).reshape(-1)
                    if not torch.isfinite(t).all():
                        raise NormalizerError(f"stats {key!r}.{n} contain NaN or inf")
                    self.stats[key][n] = t

    @staticmethod
    def compute(data: Mapping[str, np.ndarray | torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
        """Stats over the leading axis of each (N, D) array."""
        out = {}
        for key, arr in data.items():
            a = np.asarray(arr, dtype=np.float64).reshape(len(arr), -1)
            out[key] = {"min": a.min(0), "max": a.max(0), "mean": a.mean(0), "std": a.std(0)}
        return out

    def dim(self, key: str) -> int:
        return int(next(iter(self.stats[key].values())).numel())

    def _get(self, key: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if key not in self.stats:
            raise NormalizerError(f"no normalisation stats for {key!r}; have {sorted(self.stats)}")
        s = self.stats[key]
        d = next(iter(s.values())).numel()
        if x.shape[-1] != d:
            raise NormalizerError(f"{key!r} has {x.shape[-1]} dims but its stats have {d}")
        return {n: v.to(device=x.device, dtype=x.dtype) for n, v in s.items()}

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        s = self._get(key, x)
        if self.mode == "min_max":
            rng = s["max"] - s["min"]
            # A constant feature maps to 0 instead of dividing by zero.
            y = torch.where(rng > EPS, (x - s["min"]) / rng.clamp_min(EPS) * 2 - 1, torch.zeros_like(x))
        else:
            y = (x - s["mean"]) / s["std"].clamp_min(1e-6)
        return y * self.gains[key].to(y) if key in self.gains else y

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        s = self._get(key, x)
        if key in self.gains:
            x = x / self.gains[key].to(x)
        if self.mode == "min_max":
            rng = s["max"] - s["min"]
            return torch.where(rng > EPS, (x + 1) / 2 * rng + s["min"], s["min"].expand_as(x))
        return x * s["std"].clamp_min(1e-6) + s["mean"]

    # safetensors-friendly flat form: {"action.min": tensor, ...}
    def to_flat(self) -> dict[str, torch.Tensor]:
        return {f"{k}.{n}": v.contiguous() for k, s in self.stats.items() for n, v in s.items()}

    @classmethod
    def from_flat(cls, flat: Mapping[str, torch.Tensor], mode: str) -> Normalizer:
        stats: dict[str, dict[str, torch.Tensor]] = {}
        for name, v in flat.items():
            key, _, stat = name.rpartition(".")
            if stat not in STAT_NAMES or not key:
                raise NormalizerError(f"unexpected stats entry {name!r}")
            stats.setdefault(key, {})[stat] = v
        return cls(stats, mode)
