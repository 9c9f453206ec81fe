"""Block-wise Adaptive Caching (BAC; Ji et al., ICLR 2026, arXiv 2506.13456) for the transformer denoiser.

Every decoder block of :class:`~streamdp.policy.nets.TransformerDenoiser` has three residual branches
(self-attention, cross-attention, FFN) that return only their delta. Across the inner steps of one
solve a branch's delta changes slowly, so a branch may recompute only on its *update steps* and add
its cached delta on the others. Encoder, embeddings and head always run; so does every network call:
BAC saves branch computations, never network calls.

What a "step" is
----------------
A step is one network call inside the solve for one observation. Steps are indexed by the calls that
remain in the solve (the call wrapper passes that count), so the *last* call, the one that produces the
executed chunk, always has the same index, and it always recomputes every branch. The first call of a
solve does too (the caches are emptied there).

- ``ddpm`` / ``ddim``: the levels of the full grid, N = 100 or K steps.
- ``rti``: a warm solve's ``rti_steps`` calls on [k' ... clean]. Full solves (the first observation,
  periodic and divergence resamples) are another solve kind with their own schedule.
- ``sdp`` / ``sdp_rti``: the about ceil(K/h) calls that take chunk 0 of the rolling buffer to clean.
  With K not a multiple of h the solve length cycles (5, 5, 6 calls for K=16, h=3); counted from the
  end, a step sees the same ladder state in every phase of the cycle, so one schedule fits them all.

Solve kinds are keyed (see ``SolveSettings.solve_key``), e.g. ``full-ddpm-K100``, ``warm-ddpm-k29-S4``,
``sdp-ddpm-K16``; a checkpoint can hold schedules for several keys.

Calibration (``streamdp-calibrate-bac`` in :mod:`streamdp.policy.calibration`) runs the sampler that will
really run on logged observations and records every branch's delta at every step. Per solve kind it builds
each branch's step x step cosine-similarity matrix, its volatility (the paper's measure: mean l1 change
over all pairs of steps) and its mean magnitude. One budget of M x branches computations per solve is
shared (:func:`allocate_updates`): each branch gets its first and last step, the rest goes where the
ACS reuse cost (:func:`acs_schedule`, dynamic programming) falls most, so a branch whose delta does not
change gives its share away. Bubbling Union (:func:`bubbling_union`) then gives the n most volatile
branches the update steps of every FFN at the same or a deeper layer, so that no FFN refreshes on stale
upstream input. The tool reports the schedule's open-loop action error next to the spread of two
independent samples and stores it in the checkpoint's ``extras["bac"]`` only if it is within.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamdp.policy.config import ConfigError

BAC_VERSION = 2  # 2: steps indexed by calls remaining, forced last call, one budget across branches


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


def _acs_table(sim: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ACS dynamic programme over (count, last update), O(M K^2): (dp, arg, seg).

    dp[c][j]: best value of steps before j with c update steps, the c-th at j.
    dp[c][j] = max_{i<j} dp[c-1][i] + seg(i, j), seg(i, j) = sum_{t=i+1}^{j-1} sim[t, i].
    Row c holds the optimum for every count up to m, so one table serves all budgets.
    """
    k = sim.shape[0]
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
    return dp, arg, seg


def _square(sim: np.ndarray) -> np.ndarray:
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] == 0:
        raise ValueError(f"similarity matrix must be square and non-empty, got {sim.shape}")
    return sim


def acs_schedule(sim: np.ndarray, m: int) -> list[int]:
    """M update steps (step 0 always) maximising the summed similarity of every reused step to the
    step whose output it reuses (see :func:`_acs_table`)."""
    sim = _square(sim)
    k = sim.shape[0]
    m = max(1, min(int(m), k))
    if m == k:
        return list(range(k))
    dp, arg, seg = _acs_table(sim, m)
    j = int(np.argmax(dp[m] + seg[:, k]))
    steps = [j]
    for c in range(m, 1, -1):
        j = int(arg[c, j])
        steps.append(j)
    return sorted(steps)


def acs_best_values(sim: np.ndarray) -> np.ndarray:
    """The ACS objective of the optimal schedule for every count m = 1 .. K (index m - 1), from one table."""
    sim = _square(sim)
    k = sim.shape[0]
    dp, _, seg = _acs_table(sim, k)
    return np.max(dp[1:] + seg[:, k][None, :], axis=1)


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
    """Update steps of every branch for one solve kind.

    Steps are indexed by *calls remaining*: step j of a schedule over `num_steps` calls is the call with
    num_steps - j calls left (the last call is step num_steps - 1 whatever the solve's length). With SDP,
    whose solves cycle in length (5, 5, 6 calls for K=16, h=3), a call's index then says what the call is:
    the ladder state it sees, and how far it is from the chunk that will be executed.
    """

    num_steps: int
    updates: dict[str, list[int]]
    _sets: dict[str, frozenset[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._sets = {n: frozenset(int(s) for s in v) for n, v in self.updates.items()}
        bad = [n for n, s in self._sets.items() if 0 not in s]
        if bad:
            raise ValueError(f"every branch must update at step 0; {bad} do not")

    def index(self, remaining: int) -> int:
        """Step index of the call with `remaining` calls left (this one included)."""
        return self.num_steps - remaining

    def is_update(self, name: str, step: int) -> bool:
        s = self._sets.get(name)
        return s is None or not 0 <= step < self.num_steps or step in s

    def computes(self) -> int:
        """Branch computations of one solve of num_steps calls (the forced last call included)."""
        last = self.num_steps - 1
        return sum(len({t for t in s if t < self.num_steps} | {last}) for s in self._sets.values())

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
        raise BACScheduleError(
            f"extras['bac'] has version {bac.get('version')!r}; this streamdp reads {BAC_VERSION}: "
            "re-run `streamdp-calibrate-bac` on this checkpoint"
        )
    return {key: SolveSchedule.from_dict(v) for key, v in bac.get("schedules", {}).items()}


def require_schedules(schedules: Mapping[str, SolveSchedule], keys: Iterable[str], sampler: str = "<...>") -> None:
    """Refuse solve kinds the checkpoint holds no schedule for, saying how to calibrate them."""
    missing = [k for k in keys if k not in schedules]
    if missing:
        raise BACScheduleError(
            f"no BAC schedule for solve kind {missing[0]!r} in this checkpoint (have {sorted(schedules)}); "
            f"calibrate for the sampler you run: `streamdp-calibrate-bac checkpoint=<dir> dataset=<...> "
            f"sampler={sampler}` with the same grid/RTI settings"
        )


# ----------------------------------------------------------------------------------------------
# Runtime cache and calibration recorder (both plug into Branch.cache_hook via Policy.attach_cache)
# ----------------------------------------------------------------------------------------------
class BlockCache:
    """Runtime of BAC. The call wrapper calls begin_solve(key) at the start of every solve, begin_step(r)
    before every network call (r = calls remaining in the solve, this one included) and end_step()
    after it; each branch's residual goes through hook().

    The last call of a solve (r == 1) recomputes every branch: it produces the clean chunk that is
    executed. The first call does too (the caches are emptied at begin_solve). On CUDA the add runs
    through the fused cached-residual kernel into persistent per-branch buffers (fixed addresses, so
    graph replay works); on CPU it is the plain reference (``x + delta``). Counters: `computed` and
    `reused` branch evaluations.
    """

    def __init__(self, schedules: Mapping[str, SolveSchedule], fused: bool | None = None) -> None:
        self.schedules = dict(schedules)
        self.fused = fused
        self.key: str | None = None
        self.active: SolveSchedule | None = None
        self.step = 0  # calls made in this solve
        self.remaining: int | None = None  # calls left in this solve, this one included (None: unknown)
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
        require_schedules(self.schedules, [key])
        self.key, self.active, self.step, self.remaining = key, self.schedules[key], 0, None
        self.valid.clear()

    def begin_step(self, remaining: int | None) -> None:
        self.remaining = remaining

    def end_step(self) -> None:
        self.step += 1
        self.remaining = None

    def is_update(self, name: str) -> bool:
        if name not in self.valid or self.remaining == 1 or self.active is None:
            return True
        index = self.step if self.remaining is None else self.active.index(self.remaining)
        return self.active.is_update(name, index)

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
    """Per solve kind, keyed by calls remaining r (r = 1 is the last call)."""

    sim_sum: dict[str, dict[tuple[int, int], float]] = field(default_factory=dict)
    count: dict[tuple[int, int], int] = field(default_factory=dict)
    vol_sum: dict[str, float] = field(default_factory=dict)  # l1 change summed over all pairs of steps
    vol_pairs: int = 0
    size_sum: dict[str, float] = field(default_factory=dict)  # mean |delta|, summed over steps
    size_count: int = 0
    solves: int = 0
    step_hist: dict[int, int] = field(default_factory=dict)


class BranchRecorder:
    """Calibration hook: computes every branch (output identical to no cache) and accumulates, per solve
    kind and per pair of steps (indexed by calls remaining), each branch's cosine similarity, its l1
    change (the paper's volatility, over all pairs of steps) and its mean magnitude."""

    graph_safe = False

    def __init__(self) -> None:
        self.kinds: dict[str, _KindStats] = {}
        self.key: str | None = None
        self.step = 0
        self.remaining: int | None = None
        self.cur: dict[str, dict[int, torch.Tensor]] = {}
        self.names: dict[int, str] = {}
        self.computed = 0
        self.reused = 0

    def bind(self, branches: list[Any]) -> None:
        self.names = {id(b): branch_name(b) for b in branches}

    def begin_solve(self, key: str) -> None:
        self.flush()
        self.key, self.step, self.remaining = key, 0, None

    def begin_step(self, remaining: int | None) -> None:
        self.remaining = remaining

    def end_step(self) -> None:
        self.step += 1
        self.remaining = None

    def hook(
        self, branch: Any, x: torch.Tensor, memory: torch.Tensor | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        delta = branch(x, memory, mask)
        self.computed += 1
        if self.key is not None:
            name = self.names.get(id(branch)) or branch_name(branch)
            # Without a remaining-count from the caller, steps count down from a large number.
            r = self.remaining if self.remaining is not None else 1_000_000 - self.step
            self.cur.setdefault(name, {}).setdefault(r, delta.detach().double().reshape(-1).cpu())
        return x + delta

    def flush(self) -> None:
        cur, self.cur = self.cur, {}
        if self.key is None or not cur:
            return
        st = self.kinds.setdefault(self.key, _KindStats())
        rs = sorted(set.intersection(*(set(v) for v in cur.values())), reverse=True)  # time order
        if not rs:
            return
        st.solves += 1
        st.step_hist[len(rs)] = st.step_hist.get(len(rs), 0) + 1
        for p in ((a, b) for a in rs for b in rs):
            st.count[p] = st.count.get(p, 0) + 1
        n_pairs = len(rs) * (len(rs) - 1) // 2
        st.vol_pairs += n_pairs
        st.size_count += len(rs)
        for name, outs in cur.items():
            o = torch.stack([outs[r] for r in rs])
            on = o / o.norm(dim=1, keepdim=True).clamp_min(1e-12)
            sim = (on @ on.T).numpy()
            acc = st.sim_sum.setdefault(name, {})
            for i, a in enumerate(rs):
                for j, b in enumerate(rs):
                    acc[(a, b)] = acc.get((a, b), 0.0) + float(sim[i, j])
            if n_pairs:
                l1 = (o[:, None, :] - o[None, :, :]).abs().mean(-1)  # (steps, steps)
                st.vol_sum[name] = st.vol_sum.get(name, 0.0) + float(l1.triu(1).sum())
            st.size_sum[name] = st.size_sum.get(name, 0.0) + float(o.abs().mean(1).sum())

    def results(self) -> dict[str, dict[str, Any]]:
        """Per solve kind: num_steps, mean similarity matrices (index = num_steps - calls remaining),
        volatilities, mean branch magnitudes, solves and the histogram of solve lengths."""
        self.flush()
        out = {}
        for key, st in self.kinds.items():
            k = max(max(p) for p in st.count)  # steps of the longest solve; index j <-> k - j calls remaining
            cnt = np.ones((k, k))
            for (a, b), c in st.count.items():
                cnt[k - a, k - b] = c
            sims = {}
            for name, acc in st.sim_sum.items():
                m = np.eye(k)  # pairs never seen together: unrelated, except each step with itself
                for (a, b), v in acc.items():
                    m[k - a, k - b] = v
                sims[name] = m / cnt
            vol = {n: st.vol_sum.get(n, 0.0) / max(st.vol_pairs, 1) for n in st.sim_sum}
            size = {n: st.size_sum.get(n, 0.0) / max(st.size_count, 1) for n in st.sim_sum}
            out[key] = {
                "num_steps": k,
                "sim": sims,
                "volatility": vol,
                "size": size,
                "solves": st.solves,
                "steps": st.step_hist,
            }
        return out


def _reuse_costs(sim: np.ndarray, weight: float) -> list[float]:
    """cost[m] for m = 1 .. K-1 update steps among the first K-1 steps (the last always updates): the
    weighted dissimilarity of every reused step to the step whose delta it reuses, ACS-optimal."""
    k1 = sim.shape[0] - 1
    best = acs_best_values(sim[:k1, :k1])
    return [0.0] + [weight * ((k1 - m) - float(best[m - 1])) for m in range(1, k1 + 1)]  # [0]: placeholder


def allocate_updates(
    sims: Mapping[str, np.ndarray], sizes: Mapping[str, float], per_branch: int
) -> dict[str, list[int]]:
    """Update steps of every branch under one budget of per_branch x branches computations.

    Every branch updates at its first step and at the last (forced); the rest of the budget goes,
    one step at a time, to the branch whose reuse cost falls most (ACS cost of its cosine
    dissimilarities, weighted by the branch's mean delta magnitude). A branch whose delta does not
    change across steps costs nothing to reuse and keeps the minimum; its share goes elsewhere.
    """
    names = sorted(sims)
    k = next(iter(sims.values())).shape[0]
    if k <= 2:
        return {n: list(range(k)) for n in names}
    mean_size = sum(sizes.get(n, 1.0) for n in names) / len(names) or 1.0
    costs = {n: _reuse_costs(sims[n], sizes.get(n, 1.0) / mean_size) for n in names}
    m = dict.fromkeys(names, 1)  # updates among the first K-1 steps (step 0 included)
    budget = max(per_branch, 2) * len(names) - 2 * len(names)
    while budget > 0:
        best = max(
            (n for n in names if m[n] < k - 1),
            key=lambda n: (costs[n][m[n]] - costs[n][m[n] + 1], n),
            default=None,
        )
        if best is None:
            break
        m[best] += 1
        budget -= 1
    return {n: [*acs_schedule(sims[n][: k - 1, : k - 1], m[n]), k - 1] for n in names}


def build_schedules(
    results: Mapping[str, Mapping[str, Any]],
    updates: int | None = None,
    update_ratio: float = 0.5,
    top_blocks: int = 3,
) -> dict[str, dict[str, Any]]:
    """Budgeted ACS + Bubbling Union for every recorded solve kind; JSON-ready."""
    out = {}
    for key, r in results.items():
        k = int(r["num_steps"])
        m = int(updates) if updates else max(1, int(round(update_ratio * k)))
        m = max(1, min(m, k))
        acs = allocate_updates(r["sim"], r.get("size", {}), m)
        final, selected = bubbling_union(acs, r["volatility"], top_blocks)
        sched = SolveSchedule(k, final)
        out[key] = {
            "num_steps": k,
            "num_updates": m,
            "updates": final,
            "acs_updates": acs,
            "bubbled": selected,
            "volatility": {n: float(v) for n, v in r["volatility"].items()},
            "size": {n: float(v) for n, v in r.get("size", {}).items()},
            "acs_similarity": {n: acs_value(r["sim"][n], final[n]) for n in final},
            "branch_computes_per_solve": sched.computes(),
            "branch_computes_uncached": k * len(final),
            "calibration_solves": int(r["solves"]),
            "steps_seen": {str(a): int(b) for a, b in sorted(r["steps"].items())},
        }
    return out
