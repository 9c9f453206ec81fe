"""Block-wise Adaptive Caching (BAC; Ji et al., ICLR 2026, arXiv 2506.13456) for the transformer denoiser.

Every decoder block of :class:`~streamdp.policy.nets.TransformerDenoiser` has three residual branches
(self-attention, cross-attention, FFN) that return only their delta. Across the inner steps of one
solve a branch's delta changes slowly, so a branch may recompute only on its *update steps* and add
its cached delta on the others. Encoder, embeddings and head always run; so does every network call:
BAC saves branch computations, never network calls.

What a "step" is
----------------
A step is one network call inside the solve for one observation, numbered from 0 at the first call
made for that observation; the caches are emptied there (step 0 is an update step of every branch).

- ``ddpm`` / ``ddim``: the levels of the full grid, N = 100 or K steps.
- ``rti``: a warm solve's ``rti_steps`` calls on [k' ... clean]. Full solves (the first observation,
  periodic and divergence resamples) are another solve kind with their own schedule.
- ``sdp`` / ``sdp_rti``: the about ceil(K/h) calls that take chunk 0 of the rolling buffer to clean
  after an observation arrives. Step j sees the buffer j grid positions further down its ladder, and
  that ladder state recurs from one observation to the next (every observation when h divides K,
  otherwise in a short cycle such as 5, 5, 6 calls), so "step j" means the same kind of input in every
  observation and a per-step schedule is meaningful. The schedule spans the longest solve seen in
  calibration; a step beyond it recomputes everything.

Solve kinds are keyed (see ``Policy.solve_key``), e.g. ``full-ddpm-K100``, ``warm-ddpm-k29-S4``,
``sdp-ddpm-K16``; a checkpoint can hold schedules for several keys.

Calibration (``streamdp-calibrate-bac`` in :mod:`streamdp.policy.calibration`) runs the sampler that will
really run on logged observations, records every branch's delta at every step, and per solve kind builds each
branch's step x step cosine-similarity matrix (averaged over observations) and its volatility (mean L1 change
between consecutive steps). The Adaptive Caching Scheduler (:func:`acs_schedule`) picks M update steps per
branch by dynamic programming; Bubbling Union (:func:`bubbling_union`) then gives the n most volatile branches
the update steps of every FFN at the same or a deeper layer, so that no FFN refreshes on stale upstream input.
The schedules are stored in the checkpoint's ``extras["bac"]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamdp.policy.config import ConfigError

BAC_VERSION = 1


class BACScheduleError(ConfigError):
    """cache='bac' was asked for a solve kind the checkpoint holds no schedule for."""


def branch_name(branch: Any) -> str:
    return f"{branch.layer}.{branch.kind}"


def _parse_name(name: str) -> tuple[int, str]:
    layer, _, kind = name.partition(".")
    return int(layer), kind


# ----------------------------------------------------------------------------------------------
# Adaptive Caching Scheduler and Bubbling Union
# ----------------------------------------------------------------------------------------------
def acs_value(sim: np.ndarray, updates: Iterable[int]) -> float:
    """Objective: sum over non-update steps j of sim[j, u(j)], u(j) = the latest update step before j."""
    ups = sorted(set(updates))
    k = sim.shape[0]
    total, last = 0.0, None
    for j in range(k):
        if j in ups:
            last = j
        elif last is not None:
            total += float(sim[j, last])
    return total


def acs_schedule(sim: np.ndarray, m: int) -> list[int]:
    """M update steps (step 0 always) maximising the summed similarity of every reused step to the
    step whose output it reuses. Dynamic programming over (count, last update), O(M K^2).

    dp[c][j]: best value of steps before j with c update steps, the c-th at j.
    dp[c][j] = max_{i<j} dp[c-1][i] + seg(i, j), seg(i, j) = sum_{t=i+1}^{j-1} sim[t, i].
    """
    sim = np.asarray(sim, dtype=np.float64)
    k = sim.shape[0]
    if sim.shape != (k, k) or k == 0:
        raise ValueError(f"similarity matrix must be square and non-empty, got {sim.shape}")
    m = max(1, min(int(m), k))
    if m == k:
        return list(range(k))
    col = np.cumsum(sim, axis=0)  # col[t, i] = sum_{s<=t} sim[s, i]
    # seg[i, j] for j in 0..K (j = K closes the last segment); -inf where j <= i (not a valid successor)
    seg = np.full((k, k + 1), -np.inf)
    for i in range(k):
        seg[i, i + 1] = 0.0
        if i + 2 <= k:
            seg[i, i + 2 :] = col[i + 1 : k, i] - col[i, i]
    dp = np.full((m + 1, k), -np.inf)
    arg = np.full((m + 1, k), -1, dtype=np.int64)
    dp[1, 0] = 0.0
    for c in range(2, m + 1):
        cand = dp[c - 1][:, None] + seg[:, :k]  # cand[i, j]: previous update i, this one at j
        arg[c] = np.argmax(cand, axis=0)  # first maximum: deterministic tie-breaking
        dp[c] = cand[arg[c], np.arange(k)]
    j = int(np.argmax(dp[m] + seg[:, k]))
    steps = [j]
    for c in range(m, 1, -1):
        j = int(arg[c, j])
        steps.append(j)
    return sorted(steps)


def acs_brute_force(sim: np.ndarray, m: int) -> tuple[list[int], float]:
    """Exhaustive search over all update sets of size M containing step 0 (for tests, small K)."""
    k = sim.shape[0]
    m = max(1, min(m, k))
    best, best_set = -np.inf, None
    for rest in itertools.combinations(range(1, k), m - 1):
        ups = [0, *rest]
        v = acs_value(sim, ups)
        if v > best:
            best, best_set = v, ups
    assert best_set is not None
    return best_set, best


def bubbling_union(
    updates: Mapping[str, list[int]], volatility: Mapping[str, float], top_n: int
) -> tuple[dict[str, list[int]], list[str]]:
    """Add to each of the top_n most volatile branches the update steps of every FFN branch at the same
    or a deeper layer. Processing runs from the deepest layer up (an FFN before the other branches of its
    layer), so each selected branch ends up containing the *final* update set of every such FFN.
    Returns (new update sets, selected branch names)."""
    out = {n: sorted(set(s)) for n, s in updates.items()}
    ranked = sorted(out, key=lambda n: (-float(volatility.get(n, 0.0)), n))
    selected = ranked[: max(0, int(top_n))]
    ffns = [n for n in out if _parse_name(n)[1] == "ffn"]
    order = sorted(selected, key=lambda n: (-_parse_name(n)[0], _parse_name(n)[1] != "ffn"))
    for name in order:
        layer = _parse_name(name)[0]
        union = set(out[name])
        for f in ffns:
            if _parse_name(f)[0] >= layer:
                union |= set(out[f])
        out[name] = sorted(union)
    return out, selected


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------
@dataclass
class SolveSchedule:
    """Update steps of every branch for one solve kind."""

    num_steps: int
    updates: dict[str, list[int]]
    _sets: dict[str, frozenset[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._sets = {n: frozenset(int(s) for s in v) for n, v in self.updates.items()}
        bad = [n for n, s in self._sets.items() if 0 not in s]
        if bad:
            raise ValueError(f"every branch must update at step 0; {bad} do not")

    def is_update(self, name: str, step: int) -> bool:
        s = self._sets.get(name)
        return s is None or step >= self.num_steps or step in s

    def computes(self) -> int:
        """Branch computations of one solve of num_steps calls."""
        return sum(len([t for t in s if t < self.num_steps]) for s in self._sets.values())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SolveSchedule:
        return cls(int(d["num_steps"]), {n: [int(t) for t in v] for n, v in d["updates"].items()})


def schedules_from_extras(extras: Mapping[str, Any]) -> dict[str, SolveSchedule]:
    bac = extras.get("bac")
    if not bac:
        raise BACScheduleError(
            "cache='bac' needs block-caching schedules in the checkpoint (extras['bac']); "
            "run `streamdp-calibrate-bac checkpoint=<dir> dataset=<obs.npz|lerobot root> sampler=<sampler>` first"
        )
    if bac.get("version") != BAC_VERSION:
        raise BACScheduleError(f"extras['bac'] has version {bac.get('version')!r}; this streamdp reads {BAC_VERSION}")
    return {key: SolveSchedule.from_dict(v) for key, v in bac.get("schedules", {}).items()}


# ----------------------------------------------------------------------------------------------
# Runtime cache and calibration recorder (both plug into Branch.cache_hook via Policy.attach_cache)
# ----------------------------------------------------------------------------------------------
class BlockCache:
    """Runtime of BAC. The policy calls begin_solve(key) at the start of every observation's solve and
    end_step() after every network call; each branch's residual goes through hook().

    On CUDA the add runs through the fused cached-residual kernel into persistent per-branch buffers
    (fixed addresses, so graph replay works); on CPU it is the plain reference (``x + delta``).
    Counters: `computed` and `reused` branch evaluations.
    """

    def __init__(self, schedules: Mapping[str, SolveSchedule], fused: bool | None = None) -> None:
        self.schedules = dict(schedules)
        self.fused = fused
        self.key: str | None = None
        self.active: SolveSchedule | None = None
        self.step = 0
        self.store: dict[str, torch.Tensor] = {}
        self.valid: set[str] = set()
        self.names: dict[int, str] = {}
        self.order: list[str] = []
        self.computed = 0
        self.reused = 0
        self.counting = True

    @property
    def graph_safe(self) -> bool:
        """CUDA-graph replay needs deltas in persistent buffers, i.e. the fused (buffered) path."""
        return self.fused is not False

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any], fused: bool | None = None) -> BlockCache:
        return cls(schedules_from_extras(extras), fused=fused)

    def bind(self, branches: list[Any]) -> None:
        self.names = {id(b): branch_name(b) for b in branches}
        self.order = [branch_name(b) for b in branches]

    def begin_solve(self, key: str) -> None:
        if key not in self.schedules:
            raise BACScheduleError(
                f"no BAC schedule for solve kind {key!r} in this checkpoint (have {sorted(self.schedules)}); "
                "calibrate for the sampler you run: `streamdp-calibrate-bac checkpoint=<dir> dataset=<...> "
                "sampler=<...>` with the same grid/RTI settings"
            )
        self.key, self.active, self.step = key, self.schedules[key], 0
        self.valid.clear()

    def end_step(self) -> None:
        self.step += 1

    def is_update(self, name: str) -> bool:
        if name not in self.valid:
            return True
        return self.active is None or self.active.is_update(name, self.step)

    def pattern(self) -> tuple[bool, ...]:
        """Which branches recompute at the current step (the CUDA-graph variant)."""
        return tuple(self.is_update(n) for n in self.order)

    def account(self, pattern: tuple[bool, ...]) -> None:
        """Count a graph replay's branch evaluations (hooks do not run during replay)."""
        c = sum(pattern)
        self.computed += c
        self.reused += len(pattern) - c
        for n, u in zip(self.order, pattern):
            if u:
                self.valid.add(n)

    def _fused(self, x: torch.Tensor) -> bool:
        return x.is_cuda if self.fused is None else self.fused

    def hook(
        self, branch: Any, x: torch.Tensor, memory: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        name = self.names.get(id(branch)) or branch_name(branch)
        if self.is_update(name):
            delta = branch(x, memory, mask)
            if self.counting:
                self.computed += 1
            self.valid.add(name)
            if not self._fused(x):
                self.store[name] = delta
                return x + delta
            from streamdp.kernels.residual_cache import cached_residual

            buf = self.store.get(name)
            if buf is None or buf.shape != delta.shape or buf.dtype != delta.dtype or buf.device != delta.device:
                buf = self.store[name] = torch.empty_like(delta, memory_format=torch.contiguous_format)
            return cached_residual(x, delta, cache=buf, force=True if self.fused else None)
        if self.counting:
            self.reused += 1
        cached = self.store[name]
        if not self._fused(x):
            return x + cached
        from streamdp.kernels.residual_cache import cached_residual

        return cached_residual(x, cached, force=True if self.fused else None)


@dataclass
class _KindStats:
    sim_sum: dict[str, np.ndarray] = field(default_factory=dict)
    count: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    vol_sum: dict[str, float] = field(default_factory=dict)
    vol_count: int = 0
    solves: int = 0
    step_hist: dict[int, int] = field(default_factory=dict)


def _grow(a: np.ndarray, k: int) -> np.ndarray:
    if a.shape[0] >= k:
        return a
    out = np.zeros((k, k))
    out[: a.shape[0], : a.shape[1]] = a
    return out


class BranchRecorder:
    """Calibration hook: computes every branch (output identical to no cache) and accumulates, per solve
    kind, each branch's step x step cosine similarity and its consecutive-step L1 change."""

    graph_safe = False

    def __init__(self) -> None:
        self.kinds: dict[str, _KindStats] = {}
        self.key: str | None = None
        self.step = 0
        self.cur: dict[str, list[torch.Tensor]] = {}
        self.names: dict[int, str] = {}
        self.computed = 0
        self.reused = 0

    def bind(self, branches: list[Any]) -> None:
        self.names = {id(b): branch_name(b) for b in branches}

    def begin_solve(self, key: str) -> None:
        self.flush()
        self.key, self.step = key, 0

    def end_step(self) -> None:
        self.step += 1

    def hook(
        self, branch: Any, x: torch.Tensor, memory: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        delta = branch(x, memory, mask)
        self.computed += 1
        if self.key is not None:
            name = self.names.get(id(branch)) or branch_name(branch)
            outs = self.cur.setdefault(name, [])
            if len(outs) == self.step:  # one record per step (a step never calls a branch twice)
                outs.append(delta.detach().double().reshape(-1).cpu())
        return x + delta

    def flush(self) -> None:
        if self.key is None or not self.cur:
            self.cur = {}
            return
        st = self.kinds.setdefault(self.key, _KindStats())
        n_steps = min(len(v) for v in self.cur.values())
        if n_steps == 0:
            self.cur = {}
            return
        st.solves += 1
        st.step_hist[n_steps] = st.step_hist.get(n_steps, 0) + 1
        st.count = _grow(st.count, n_steps)
        st.count[:n_steps, :n_steps] += 1
        for name, outs in self.cur.items():
            o = torch.stack(outs[:n_steps])
            on = o / o.norm(dim=1, keepdim=True).clamp_min(1e-12)
            sim = (on @ on.T).numpy()
            acc = _grow(st.sim_sum.get(name, np.zeros((0, 0))), n_steps)
            acc[:n_steps, :n_steps] += sim
            st.sim_sum[name] = acc
            if n_steps > 1:
                st.vol_sum[name] = st.vol_sum.get(name, 0.0) + float((o[1:] - o[:-1]).abs().mean(1).sum())
        st.vol_count += max(n_steps - 1, 0)
        self.cur = {}

    def results(self) -> dict[str, dict[str, Any]]:
        """Per solve kind: num_steps, mean similarity matrices, volatilities, solves and step histogram."""
        self.flush()
        out = {}
        for key, st in self.kinds.items():
            k = st.count.shape[0]
            cnt = np.maximum(st.count, 1)
            sims = {n: _grow(s, k) / cnt for n, s in st.sim_sum.items()}
            vol = {n: st.vol_sum.get(n, 0.0) / max(st.vol_count, 1) for n in st.sim_sum}
            out[key] = {"num_steps": k, "sim": sims, "volatility": vol, "solves": st.solves, "steps": st.step_hist}
        return out


def build_schedules(
    results: Mapping[str, Mapping[str, Any]],
    updates: int | None = None,
    update_ratio: float = 0.5,
    top_blocks: int = 2,
) -> dict[str, dict[str, Any]]:
    """ACS + Bubbling Union for every recorded solve kind; JSON-ready."""
    out = {}
    for key, r in results.items():
        k = int(r["num_steps"])
        m = int(updates) if updates else max(1, int(round(update_ratio * k)))
        m = max(1, min(m, k))
        acs = {n: acs_schedule(s, m) for n, s in r["sim"].items()}
        final, selected = bubbling_union(acs, r["volatility"], top_blocks)
        sched = SolveSchedule(k, final)
        out[key] = {
            "num_steps": k,
            "num_updates": m,
            "updates": final,
            "acs_updates": acs,
            "bubbled": selected,
            "volatility": {n: float(v) for n, v in r["volatility"].items()},
            "acs_similarity": {n: acs_value(r["sim"][n], final[n]) for n in final},
            "branch_computes_per_solve": sched.computes(),
            "branch_computes_uncached": k * len(final),
            "calibration_solves": int(r["solves"]),
            "steps_seen": {str(a): int(b) for a, b in sorted(r["steps"].items())},
        }
    return out
