"""Offline calibration of the accelerations, on logged observations: ``streamdp-calibrate-rti`` picks
RTI's warm-start level k', ``streamdp-calibrate-bac`` records residual-branch deltas and builds BAC's
update schedules (the scheduling maths itself lives in :mod:`streamdp.policy.bac`). Both store their
result in the checkpoint's extras, rewritten atomically.

Observation sources (``dataset=``):

- a ``.npz`` of logged observations — arrays named like the policy's inputs, frame-major:
  ``observation.state`` (T, Ds), ``observation.images.<cam>`` (T, H, W, C) uint8 or (T, C, H, W);
  optionally ``episode_ends`` (cumulative frame counts, diffusion_policy style) or ``episode_index`` (T,).
  :func:`save_observations` writes this format, e.g. from a simulated rollout;
- a LeRobot dataset root (a directory with ``meta/info.json``), read with ``lerobot``'s LeRobotDataset;
  each frame keeps its ``task`` string, so a multi-task policy sees the instruction it was trained with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamdp.policy.cli import UserError, load_config, opt, run_job
from streamdp.policy.samplers import ChunkSolve, rti_grid
from streamdp.policy.samplers.rti import divergence, guess, snap_discrete, warm_start
from streamdp.policy.schedule import sampler_grid

OBS_PREFIX = "observation."


def save_observations(path: str | Path, episodes: Sequence[Sequence[Mapping[str, Any]]]) -> Path:
    """Write episodes of observation dicts as one .npz (frame-major arrays + episode_ends)."""
    path = Path(path)
    keys = sorted(k for k in episodes[0][0] if k.startswith(OBS_PREFIX))
    arrays = {k: np.stack([np.asarray(f[k]) for ep in episodes for f in ep]) for k in keys}
    arrays["episode_ends"] = np.cumsum([len(ep) for ep in episodes])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


def _split(frames: list[dict[str, Any]], ends: Sequence[int]) -> list[list[dict[str, Any]]]:
    out, start = [], 0
    for e in ends:
        if int(e) > start:
            out.append(frames[start : int(e)])
        start = int(e)
    return out


def load_npz(path: Path, max_frames: int | None = None) -> list[list[dict[str, Any]]]:
    data = np.load(path)
    keys = [k for k in data.files if k.startswith(OBS_PREFIX)]
    if not keys:
        raise UserError(f"{path} holds no 'observation.*' arrays (has {data.files})")
    n = len(data[keys[0]])
    if any(len(data[k]) != n for k in keys):
        raise UserError(f"{path}: observation arrays differ in length")
    if "episode_ends" in data.files:
        ends = [int(e) for e in data["episode_ends"]]
    elif "episode_index" in data.files:
        idx = np.asarray(data["episode_index"])
        ends = [int(i) + 1 for i in np.flatnonzero(np.diff(idx))] + [n]
    else:
        ends = [n]
    if max_frames:
        n = min(n, max_frames)
        ends = [min(e, n) for e in ends if e > 0]
    arrays = {k: data[k][:n] for k in keys}
    frames = [{k: arrays[k][i] for k in keys} for i in range(n)]
    return _split(frames, ends)


def load_lerobot(root: Path, max_frames: int | None = None) -> list[list[dict[str, Any]]]:
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError as e:  # pragma: no cover - lerobot is in the project's environment
        raise RuntimeError("reading a LeRobot dataset needs the `lerobot` package") from e
    ds = LeRobotDataset(repo_id=root.name, root=root)
    n = len(ds) if not max_frames else min(len(ds), max_frames)
    episodes: list[list[dict[str, Any]]] = []
    last = None
    for i in range(n):
        item = ds[i]
        ep = int(item["episode_index"])
        frame: dict[str, Any] = {k: np.asarray(v) for k, v in item.items() if k.startswith(OBS_PREFIX)}
        if isinstance(item.get("task"), str):  # the frame's instruction: what a multi-task policy reads
            frame["task"] = item["task"]
        if ep != last:
            episodes.append([])
            last = ep
        episodes[-1].append(frame)
    return episodes


def load_episodes(spec: str | Path, max_frames: int | None = None) -> list[list[dict[str, Any]]]:
    """Episodes (lists of observation dicts, in time order) from a .npz or a LeRobot dataset root."""
    p = Path(spec)
    if p.suffix == ".npz" and p.is_file():
        eps = load_npz(p, max_frames)
    elif p.is_dir() and (p / "meta" / "info.json").is_file():
        eps = load_lerobot(p, max_frames)
    else:
        raise UserError(
            f"dataset {spec!r} is neither a .npz of logged observations nor a LeRobot dataset root (meta/info.json)"
        )
    if not eps:
        raise UserError(f"dataset {spec!r} holds no frames")
    _check_finite(str(spec), eps)
    return eps


def _check_finite(where: str, episodes: list[list[dict[str, Any]]]) -> None:
    """Refuse NaN/inf in logged observations with the message training gives (episode, frame, dim)."""
    from streamdp.policy.train.data import check_finite

    ep_idx = np.array([e for e, ep in enumerate(episodes) for _ in ep])
    frame_idx = np.array([t for ep in episodes for t in range(len(ep))])
    for key in (k for k in episodes[0][0] if k.startswith(OBS_PREFIX)):
        arr = np.stack([np.asarray(f[key], dtype=np.float64) for ep in episodes for f in ep])
        check_finite(where, key, arr, ep_idx, frame_idx, [])


def run_select_action(
    policy: Any, episodes: list[list[dict[str, Any]]], max_obs: int | None, actions: list | None = None
) -> int:
    """Drive `policy` as a control loop would: reset per episode (from its first state), select_action on
    every frame; returns the number of inferences (observations that ran the sampler). The actions are
    appended, normalised, to `actions` when it is given."""
    from streamdp.policy.encoders import STATE_KEY
    from streamdp.policy.policy import ACTION_KEY

    inferences = 0
    for ep in episodes:
        state = ep[0].get(STATE_KEY)
        policy.reset(state=state if policy.config.primer == "state" else None)
        for frame in ep:
            before = policy.nfe_total
            a = policy.select_action(frame)
            if actions is not None:
                actions.append(policy.normalizer.normalize(ACTION_KEY, torch.as_tensor(a, dtype=torch.float32)))
            inferences += policy.nfe_total > before
            if max_obs and inferences >= max_obs:
                return inferences
    return inferences


def open_loop_actions(policy: Any, episodes: list[list[dict[str, Any]]], max_obs: int | None) -> torch.Tensor:
    """The normalised actions (n, D) `policy` emits on the logged frames (run_select_action's loop)."""
    actions: list[torch.Tensor] = []
    run_select_action(policy, episodes, max_obs, actions)
    return torch.stack(actions) if actions else torch.zeros(0)


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |a - b| over the actions both runs emitted."""
    n = min(len(a), len(b))
    return float((a[:n] - b[:n]).abs().mean()) if n else 0.0


# ---------------------------------------------------------------------------------------------- RTI
def _solve(
    policy: Any, grid: list[int], cond: torch.Tensor, g: torch.Generator, x: torch.Tensor | None = None
) -> torch.Tensor:
    """A clean (Tp, D) trajectory: a chunk solve down `grid` through the policy's own call and step, from
    `x` (default: pure noise drawn from `g`), every draw from `g`; discrete dims snapped."""
    c = policy.config
    if x is None:
        x = torch.randn(1, c.horizon, c.action_dim, generator=g).to(policy.device)
    s = ChunkSolve(x, grid, "calibration")
    s.run(dataclasses.replace(policy.sampler_impl.ctx, generator=g), cond, None)
    return snap_discrete(s.x[0], c.snapped_dims)


def bootstrap_upper(groups: Sequence[Sequence[float]], confidence: float, resamples: int = 2000) -> float:
    """One-sided upper `confidence` bound on the mean of all values, resampling whole groups (episodes):
    errors of one chained episode are correlated, so the episode is the unit. The resampling RNG is
    fixed, so the bound is a function of the data alone."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return float("inf")
    if len(groups) < 5:  # too few episodes to resample: use the individual values
        groups = [np.asarray([v]) for g in groups for v in g]
    sums = np.array([g.sum() for g in groups])
    counts = np.array([len(g) for g in groups], dtype=np.float64)
    rng = np.random.default_rng(20250613)
    idx = rng.integers(0, len(groups), size=(resamples, len(groups)))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return float(np.quantile(means, confidence))


def calibrate_rti(
    policy: Any,
    episodes: list[list[dict[str, Any]]],
    candidates: list[int] | None = None,
    steps: int | None = None,
    tol: float | str = "auto",
    max_obs: int | None = 50,
    seed: int = 0,
    draws: int = 3,
    confidence: float = 0.95,
    follow: float = 0.5,
    per_episode: int = 10,
) -> dict[str, Any]:
    """Pick k' on chained warm starts, as deployed; returns the extras["rti"] entry.

    Inference happens every Ta frames (as under select_action); the history advances every frame; at
    most `per_episode` inferences per episode (0: no cap), so the `max_obs` inferences span many episodes
    (the bootstrap resamples episodes; a few long ones would make the bound too optimistic). Each
    candidate k' runs its own chain per episode and noise draw: the first inference is a full solve, each
    later one a warm start from the candidate's *own previous warm solution* shifted by Ta (with the
    sampler's periodic and divergence resamples), so errors compound as they do on the robot. The
    reference is a full solve with the same noise (common random numbers); the error is mean
    |warm - ref| on the executed rows, pooled over `draws` noise draws.

    A warm solve of `steps` calls cannot beat its own discretisation, so k' is judged by its *excess*
    error over the best candidate (paired: same inference, same draw). Acceptance, on bounds rather than
    means so that calibrations with other seeds agree:
    - the one-sided `confidence` bootstrap upper bound (episodes resampled) of the mean excess is within
      `tol`; tol='auto' is the *median* distance between two independent full samples, the spread within
      one mode (the mean is inflated by pairs of samples that land in different modes, as on PushT);
    - it follows the reference when the reference jumps (multimodal data): on inferences where the
      reference is more than 2 x tol away from the guess, the warm start must remove at least
      1 - `follow` of that distance; a k' that stays locked in the previous mode keeps all of it.
    The smallest accepted k' is stored; if none is, the best candidate (`within_tolerance: false`).
    """
    c = policy.config
    n_train = c.schedule.num_train_steps
    steps = int(steps or policy.settings.rti_steps)
    if candidates is None:
        candidates = sorted(set(sampler_grid(n_train, min(10, n_train))))
    candidates = sorted({int(k) for k in candidates})
    if not candidates or candidates[0] < 0 or candidates[-1] > n_train - 1:
        raise UserError(f"candidates must lie in [0, {n_train - 1}], got {candidates}")
    if draws < 1 or not 0.5 <= confidence < 1 or not 0 < follow <= 1:
        raise UserError(f"need draws >= 1, 0.5 <= confidence < 1, 0 < follow <= 1; got {draws}, {confidence}, {follow}")
    to, ta = c.n_obs_steps, c.n_action_steps
    window = slice(to - 1, to - 1 + ta)
    disc = c.snapped_dims
    full_grid = policy.settings.full_grid()
    shape = (1, c.horizon, c.action_dim)

    def dist(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a[window] - b[window]).abs().mean())

    # per candidate: errors per episode; jump rows: (warm error, jump size) pairs
    errors: dict[int, list[list[float]]] = {k: [] for k in candidates}
    jumps: dict[int, list[tuple[float, float]]] = {k: [] for k in candidates}
    baseline: list[float] = []
    resamples = {k: 0 for k in candidates}
    inferences = 0
    for ep in episodes:
        if max_obs and inferences >= max_obs:
            break
        policy.reset()
        for k in candidates:
            errors[k].append([])
        chain: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}  # (k, draw) -> (solution, since_full)
        prev_ref: dict[int, torch.Tensor] = {}
        in_episode = 0
        for t, frame in enumerate(ep):
            if per_episode and in_episode >= per_episode:
                break
            policy.observe(frame)
            if t % ta:
                continue
            in_episode += 1
            cond = policy.condition()
            for d in range(draws):
                s = (seed * 7_919 + d) * 1_000_003 + inferences + 1
                ref = _solve(policy, full_grid, cond, torch.Generator().manual_seed(s))
                other = _solve(policy, full_grid, cond, torch.Generator().manual_seed(s + 104_729))
                baseline.append(dist(other, ref))
                jump = dist(guess(prev_ref[d], ta, disc), ref) if d in prev_ref else None
                prev_ref[d] = ref
                for k in candidates:
                    if (k, d) not in chain:  # first inference of the episode: a full solve, as deployed
                        chain[k, d] = (ref, 0)
                        continue
                    sol, since_full = chain[k, d]
                    if c.rti_full_every > 0 and since_full + 1 >= c.rti_full_every:
                        chain[k, d] = (ref, 0)
                        continue
                    g = guess(sol, ta, disc)
                    gk = torch.Generator().manual_seed(s)  # common random numbers with the reference
                    noise = torch.randn(*shape, generator=gk).to(policy.device)
                    xk = warm_start(policy.model.schedule, g[None], noise, k)
                    warm = _solve(policy, rti_grid(k, steps), cond, gk, xk)
                    moved = divergence(warm, g, c.horizon - ta, c.discrete_action_dims)
                    if c.rti_divergence > 0 and moved > c.rti_divergence:
                        resamples[k] += 1
                        warm = ref  # the sampler re-solves from noise: a full sample
                    e = dist(warm, ref)
                    errors[k][-1].append(e)
                    if jump is not None:
                        jumps[k].append((e, jump))
                    chain[k, d] = (warm, since_full + 1)
            inferences += 1
            if max_obs and inferences >= max_obs:
                break
    compared = sum(len(g) for g in errors[candidates[0]])
    if compared == 0:
        raise UserError("calibration needs at least two inferences in one episode (Ta frames apart)")
    spread_median = float(np.median(baseline))
    tol = spread_median if tol == "auto" else float(tol)
    mean_err = {k: sum(map(sum, v)) / compared for k, v in errors.items()}
    best = min(candidates, key=lambda k: (mean_err[k], k))
    excess = {  # paired (same inference, same draw) error beyond the best candidate's, per episode
        k: [[a - b for a, b in zip(ek, eb, strict=True)] for ek, eb in zip(errors[k], errors[best], strict=True)]
        for k in candidates
    }
    upper = {k: bootstrap_upper(v, confidence) for k, v in excess.items()}
    kept: dict[int, float | None] = {}
    for k in candidates:
        big = [(e, j) for e, j in jumps[k] if j > 2 * tol]
        kept[k] = sum(e for e, _ in big) / sum(j for _, j in big) if len(big) >= 5 else None
    accepted = [k for k in candidates if upper[k] <= tol and (kept[k] is None or kept[k] <= follow)]
    chosen = accepted[0] if accepted else best
    return {
        "start_level": int(chosen),
        "within_tolerance": bool(accepted),
        "tolerance": float(tol),
        "steps": steps,
        "step_mode": policy.settings.step_mode,
        "full_grid_levels": len(full_grid),
        "chained": True,
        "draws": draws,
        "confidence": confidence,
        "errors": {str(k): v for k, v in mean_err.items()},
        "best": int(best),
        "excess_upper": {str(k): v for k, v in upper.items()},
        "jump_kept": {str(k): v for k, v in kept.items()},
        "jumps": sum(1 for _, j in jumps[candidates[0]] if j > 2 * tol),
        "follow": follow,
        "episodes": sum(1 for g in errors[candidates[0]] if g),
        "divergence_resamples": {str(k): v for k, v in resamples.items()},
        "baseline_full_vs_full": float(np.mean(baseline)),
        "baseline_median": spread_median,
        "inferences": inferences,
        "compared": compared,
    }


# ---------------------------------------------------------------------------------------------- BAC
# Update ratios tried, in order, when the requested one is not vouched for (search=True): each spends more
# branch computes; at 1.0 nothing is cached, so the search stops short of it.
BAC_SEARCH_RATIOS = (0.625, 0.75, 0.875)


def calibrate_bac(
    policy: Any,
    episodes: list[list[dict[str, Any]]],
    updates: int | None = None,
    update_ratio: float = 0.5,
    top_blocks: int = 3,
    max_obs: int | None = 50,
    search: bool = False,
) -> dict[str, Any]:
    """Run `policy` closed-loop style (select_action on every frame) over the episodes, recording branch
    deltas, and return the ``extras["bac"]`` entry. The policy must be a transformer one, cache='none'.

    The entry says whether it can be vouched for: its open-loop action error (cached vs not, same draws, mean
    over actions) next to the spread between two independent full samples (median over actions). With
    `search` (and no fixed `updates`), a schedule that is worse than that spread is rebuilt with the next
    larger update ratio of BAC_SEARCH_RATIOS from the same recording, until one is within it; ``search`` in
    the entry lists every ratio tried. Short chained solves need it: RTI's 4-call warm solves at ratio 0.5
    reuse the first call's branches for both middle calls, and the error carries from one warm start to the next."""
    from streamdp.policy.bac import BAC_VERSION, BranchRecorder, build_schedules

    if policy.config.denoiser != "transformer":
        raise UserError(
            "BAC caches transformer residual branches; this checkpoint's denoiser is "
            f"{policy.config.denoiser!r}: train with policy=sdp_transformer"
        )
    rec = BranchRecorder()
    policy.attach_cache(rec)
    try:
        inferences = run_select_action(policy, episodes, max_obs)
    finally:
        policy.detach_cache()
    recorded = rec.results()
    c = policy.config
    seed = 4242
    reference = open_loop_actions(policy.twin(seed=seed), episodes, max_obs)
    other = open_loop_actions(policy.twin(seed=seed + 1), episodes, max_obs)
    # The bound is the *median* over actions of the distance between two independent samples (as RTI's
    # tolerance): on multimodal data (PushT) the mean is inflated by the actions where the two samples sit in
    # different modes, and a cache that changes actions by that much is not sampling noise within a mode.
    n = min(len(other), len(reference))
    per_action = (other[:n] - reference[:n]).abs().mean(dim=-1) if n else torch.zeros(1)
    spread = float(per_action.median())
    spread_mean = mean_abs_diff(other, reference)
    ratios = [update_ratio]
    if search and not updates:
        ratios += [r for r in BAC_SEARCH_RATIOS if r > update_ratio]
    tried: list[dict[str, float]] = []
    for ratio in ratios:
        entry = {
            "version": BAC_VERSION,
            "sampler": c.sampler,
            "num_inference_steps": c.num_inference_steps,
            "updates": updates,
            "update_ratio": ratio,
            "top_blocks": top_blocks,
            "calibration_observations": inferences,
            "schedules": build_schedules(recorded, updates, ratio, top_blocks),
        }
        # Vouch for the schedule: its effect on the executed actions (same draws, cached vs not) next to how
        # much two independent full samples differ. A schedule worse than sampling noise is not trusted.
        cached = policy.twin(seed=seed, cache="bac", extras={**policy.extras, "bac": entry})
        entry["open_loop_error"] = mean_abs_diff(open_loop_actions(cached, episodes, max_obs), reference)
        entry["sample_spread"] = spread
        entry["sample_spread_mean"] = spread_mean
        tried.append({"update_ratio": ratio, "open_loop_error": entry["open_loop_error"]})
        if entry["open_loop_error"] <= spread:
            break
    entry["search"] = tried
    return entry


def merge_bac_extras(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Keep schedules of other solve kinds already in the checkpoint; replace the recalibrated ones."""
    from streamdp.policy.bac import BAC_VERSION

    merged = dict(new)
    if old and old.get("version") == BAC_VERSION:
        merged["schedules"] = {**old.get("schedules", {}), **new["schedules"]}
    return merged


# ---------------------------------------------------------------------------------------------- CLIs
@dataclass
class CalibrationInput:
    """What both calibration commands read: the checkpoint, the logged observations, load-time overrides."""

    checkpoint: str = opt("???", "checkpoint directory (rewritten atomically)")
    dataset: str = opt("???", ".npz of logged observations or a LeRobot dataset root")
    sampler: str | None = opt(None, "sampler to calibrate for (null: the checkpoint's)")
    num_inference_steps: int | None = opt(None, "grid size K (null: the checkpoint's)")
    policy: dict[str, Any] = opt(help="other PolicyConfig overrides, e.g. +policy.step_mode=ddim", factory=dict)
    max_obs: int = opt(50, "inferences (observations that run the sampler) to use")
    max_frames: int = opt(0, "dataset frames to read (0: all)")
    seed: int = opt(0, "noise seed")

    def overrides(self) -> dict[str, Any]:
        over = dict(self.policy)
        if self.sampler is not None:
            over["sampler"] = self.sampler
        if self.num_inference_steps is not None:
            over["num_inference_steps"] = self.num_inference_steps
        return {**over, "cache": "none", "cuda_graph": False}

    def load(self) -> tuple[Any, list[list[dict[str, Any]]]]:
        from streamdp.policy.policy import Policy

        policy = Policy.from_pretrained(self.checkpoint, seed=self.seed, **self.overrides())
        return policy, load_episodes(self.dataset, max_frames=self.max_frames or None)


@dataclass
class CalibrateRTIConfig(CalibrationInput):
    max_obs: int = opt(120, "inferences (observations that run the sampler) to use, over all episodes")
    tol: str = opt("auto", "bound on |warm - full| (executed actions, normalised); auto: median full-vs-full spread")
    draws: int = opt(3, "noise draws per inference (independent chains per candidate)")
    confidence: float = opt(0.95, "one-sided bootstrap bound on the mean chained error (episodes resampled)")
    follow: float = opt(0.5, "on reference jumps (> 2 x tol), largest share of the jump a warm start may keep")
    per_episode: int = opt(10, "inferences used per episode (0: all), so max_obs spans many episodes")
    steps: int = opt(0, "warm-solve calls (0: the policy's: config, earlier calibration, or 4)")
    candidates: list[int] = opt(help="k' candidates, e.g. candidates=9,49,99 (empty: 10 evenly spaced)", factory=list)


@dataclass
class CalibrateBACConfig(CalibrationInput):
    updates: int = opt(0, "mean update steps M per branch: the budget is M x branches (0: use update_ratio)")
    update_ratio: float = opt(0.5, "M = round(ratio * steps) per solve kind")
    top_blocks: int = opt(3, "n most volatile branches (mean l1 change over all step pairs) get the Bubbling Union")
    search: bool = opt(True, "when a schedule's open-loop error exceeds the sampling spread, retry with update "
                       "ratios 0.625, 0.75, 0.875 (more branch computes) and keep the first within it")
    force: bool = opt(False, "store the schedules even when their open-loop error exceeds the sampling spread")


def run_rti_calibration(cfg: CalibrateRTIConfig) -> dict[str, Any]:
    """Pick k' and store it in the checkpoint's extras['rti']; prints the errors per candidate."""
    from streamdp.policy.policy import Policy

    policy, episodes = cfg.load()
    tol: float | str = cfg.tol if cfg.tol == "auto" else _float(cfg.tol, "tol")
    entry = calibrate_rti(
        policy, episodes, cfg.candidates or None, cfg.steps or None, tol, cfg.max_obs, cfg.seed,
        cfg.draws, cfg.confidence, cfg.follow, cfg.per_episode,
    )  # fmt: skip
    entry["dataset"] = str(cfg.dataset)
    Policy.from_pretrained(cfg.checkpoint).save_pretrained(cfg.checkpoint, extras={"rti": entry})
    n, draws, jumps = entry["compared"], entry["draws"], entry["jumps"]
    print(f"[rti] chained warm starts: {n} comparisons ({draws} draws per inference), {jumps} reference jumps")
    for k, v in entry["errors"].items():
        kept = entry["jump_kept"][k]
        print(
            f"[rti]   k'={k}: mean |warm - full| {v:.4f}, excess bound {entry['excess_upper'][k]:.4f}"
            + ("" if kept is None else f", keeps {kept:.0%} of jumps")
        )
    print(
        f"[rti] full vs full (sampling spread): median {entry['baseline_median']:.4f}, "
        f"mean {entry['baseline_full_vs_full']:.4f}"
    )
    verdict = "accepted" if entry["within_tolerance"] else "NONE accepted; smallest error"
    chosen = f"k'={entry['start_level']}"
    print(f"[rti] tolerance {entry['tolerance']}: {verdict} -> {chosen}; wrote extras['rti'] to {cfg.checkpoint}")
    return entry


def run_bac_calibration(cfg: CalibrateBACConfig) -> dict[str, Any]:
    """Build BAC schedules for the sampler's solve kinds and merge them into the checkpoint's extras['bac']."""
    from streamdp.policy.policy import Policy

    policy, episodes = cfg.load()
    entry = calibrate_bac(policy, episodes, cfg.updates or None, cfg.update_ratio, cfg.top_blocks, cfg.max_obs,
                          search=cfg.search)
    entry["dataset"] = str(cfg.dataset)
    err, spread = entry["open_loop_error"], entry["sample_spread"]
    for t in entry["search"]:
        print(f"[bac] update ratio {t['update_ratio']:g}: open-loop action error {t['open_loop_error']:.4f} vs "
              f"spread of two full samples {spread:.4f} (median over actions; mean "
              f"{entry['sample_spread_mean']:.4f}; normalised)")
    if err > spread and not cfg.force:
        tried = ", ".join(f"{t['update_ratio']:g}" for t in entry["search"])
        raise UserError(
            f"BAC schedules for {cfg.checkpoint} change the executed actions by {err:.4f} (normalised), more than "
            f"two independent samples differ ({spread:.4f}), at update ratio {tried}; not stored. Raise "
            "update_ratio or updates, or pass force=true to store them anyway"
        )
    base = Policy.from_pretrained(cfg.checkpoint)
    merged = merge_bac_extras(base.extras.get("bac"), entry)
    base.save_pretrained(cfg.checkpoint, extras={"bac": merged})
    for key, s in entry["schedules"].items():
        print(
            f"[bac] {key}: {s['num_steps']} steps, M={s['num_updates']}, bubbled {s['bubbled']}, "
            f"branch computes per solve {s['branch_computes_per_solve']} of {s['branch_computes_uncached']}"
        )
    print(f"[bac] wrote extras['bac'] ({len(merged['schedules'])} solve kinds) to {cfg.checkpoint}")
    return entry


def _float(value: str, key: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise UserError(f"{key} must be a number or 'auto', got {value!r}") from None


RTI_LIST_KEYS = ("candidates",)


def rti_config(argv: Sequence[str]) -> CalibrateRTIConfig:
    """The validated ``streamdp-calibrate-rti`` config of these ``key=value`` overrides."""
    return load_config("calibrate_rti", CalibrateRTIConfig, argv, RTI_LIST_KEYS)


def bac_config(argv: Sequence[str]) -> CalibrateBACConfig:
    """The validated ``streamdp-calibrate-bac`` config of these ``key=value`` overrides."""
    return load_config("calibrate_bac", CalibrateBACConfig, argv)


def rti_cli(argv: Sequence[str]) -> dict[str, Any]:
    """``streamdp-calibrate-rti`` as a function (tests, notebooks): returns the stored entry."""
    return run_rti_calibration(rti_config(argv))


def bac_cli(argv: Sequence[str]) -> dict[str, Any]:
    """``streamdp-calibrate-bac`` as a function: returns the stored entry."""
    return run_bac_calibration(bac_config(argv))


def rti_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``streamdp-calibrate-rti checkpoint=DIR dataset=OBS [key=value ...]``."""
    return run_job(
        "streamdp-calibrate-rti", "calibrate_rti", CalibrateRTIConfig, run_rti_calibration, argv,
        doc="Pick the RTI warm-start level k' on logged observations; store it in the checkpoint (extras['rti']).",
        groups=(), list_keys=RTI_LIST_KEYS,
    )  # fmt: skip


def bac_main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``streamdp-calibrate-bac checkpoint=DIR dataset=OBS [key=value ...]``."""
    return run_job(
        "streamdp-calibrate-bac", "calibrate_bac", CalibrateBACConfig, run_bac_calibration, argv,
        doc="Calibrate BAC block-caching schedules for a transformer checkpoint; store them in extras['bac'].",
        groups=(),
    )  # fmt: skip
