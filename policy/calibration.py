"""Offline calibration of the accelerations, on logged observations: ``streamdp-calibrate-rti`` picks
RTI's warm-start level k', ``streamdp-calibrate-bac`` records residual-branch deltas and builds BAC's
update schedules (the scheduling maths itself lives in :mod:`streamdp.policy.bac`). Both store their
result in the checkpoint's extras, rewritten atomically.

Observation sources (``dataset=``):

- a ``.npz`` of logged observations — arrays named like the policy's inputs, frame-major:
  ``observation.state`` (T, Ds), ``observation.images.<cam>`` (T, H, W, C) uint8 or (T, C, H, W);
  optionally ``episode_ends`` (cumulative frame counts, diffusion_policy style) or ``episode_index`` (T,).
  :func:`save_observations` writes this format, e.g. from a simulated rollout;
- a LeRobot dataset root (a directory with ``meta/info.json``), read with ``lerobot``'s LeRobotDataset.
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
from streamdp.policy.samplers.rti import guess, snap_discrete, warm_start
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
        frame = {k: np.asarray(v) for k, v in item.items() if k.startswith(OBS_PREFIX)}
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
    for key in episodes[0][0]:
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
    return snap_discrete(s.x[0], list(c.discrete_action_dims))


def calibrate_rti(
    policy: Any,
    episodes: list[list[dict[str, Any]]],
    candidates: list[int] | None = None,
    steps: int | None = None,
    tol: float | str = "auto",
    max_obs: int | None = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Errors of warm starts from each candidate k' against full sampling; returns the extras["rti"] entry.

    Inference happens every Ta frames (as under select_action); the history advances every frame. For each
    inference the reference is a full solve on the policy's configured grid; the warm start uses the
    previous reference shifted by Ta as its guess and the same noise draws (common random numbers, which
    reduce but, with stochastic DDPM steps, do not remove sampling noise). `baseline` is the distance
    between two full solves with different draws: how much full sampling itself varies. tol='auto' uses it
    as the tolerance ("a warm start is as close to full sampling as another full sample is").
    """
    c = policy.config
    n_train = c.schedule.num_train_steps
    steps = int(steps or policy.settings.rti_steps)
    if candidates is None:
        candidates = sorted(set(sampler_grid(n_train, min(10, n_train))))
    candidates = sorted({int(k) for k in candidates})
    if not candidates or candidates[0] < 0 or candidates[-1] > n_train - 1:
        raise UserError(f"candidates must lie in [0, {n_train - 1}], got {candidates}")
    to, ta = c.n_obs_steps, c.n_action_steps
    window = slice(to - 1, to - 1 + ta)
    disc = list(c.discrete_action_dims)
    full_grid = policy.settings.full_grid()
    shape = (1, c.horizon, c.action_dim)
    errors: dict[int, list[float]] = {k: [] for k in candidates}
    baseline: list[float] = []
    inferences = 0
    for ep in episodes:
        policy.reset()
        prev = None  # the previous inference's full solution: the warm starts' guess
        for t, frame in enumerate(ep):
            policy.observe(frame)
            if t % ta:
                continue
            cond = policy.condition()
            s = seed * 1_000_003 + inferences + 1
            ref = _solve(policy, full_grid, cond, torch.Generator().manual_seed(s))
            other = _solve(policy, full_grid, cond, torch.Generator().manual_seed(s + 7919))
            if prev is not None:
                baseline.append(float((other[window] - ref[window]).abs().mean()))
                gs = guess(prev, ta, disc)
                for k in candidates:
                    gk = torch.Generator().manual_seed(s)  # common random numbers with the reference
                    noise = torch.randn(*shape, generator=gk).to(policy.device)
                    xk = warm_start(policy.model.schedule, gs[None], noise, k)
                    warm = _solve(policy, rti_grid(k, steps), cond, gk, xk)
                    errors[k].append(float((warm[window] - ref[window]).abs().mean()))
            prev = ref
            inferences += 1
            if max_obs and inferences >= max_obs:
                break
        if max_obs and inferences >= max_obs:
            break
    compared = len(errors[candidates[0]])
    if compared == 0:
        raise UserError("calibration needs at least two inferences in one episode (Ta frames apart)")
    mean_err = {k: sum(v) / len(v) for k, v in errors.items()}
    spread = sum(baseline) / len(baseline)
    tol = spread if tol == "auto" else float(tol)
    within = [k for k in candidates if mean_err[k] <= tol]
    chosen = within[0] if within else min(candidates, key=lambda k: (mean_err[k], k))
    return {
        "start_level": int(chosen),
        "within_tolerance": bool(within),
        "tolerance": float(tol),
        "steps": steps,
        "step_mode": policy.settings.step_mode,
        "full_grid_levels": len(full_grid),
        "errors": {str(k): v for k, v in mean_err.items()},
        "baseline_full_vs_full": spread,
        "inferences": inferences,
        "compared": compared,
    }


# ---------------------------------------------------------------------------------------------- BAC
def calibrate_bac(
    policy: Any,
    episodes: list[list[dict[str, Any]]],
    updates: int | None = None,
    update_ratio: float = 0.5,
    top_blocks: int = 3,
    max_obs: int | None = 50,
) -> dict[str, Any]:
    """Run `policy` closed-loop style (select_action on every frame) over the episodes, recording branch
    deltas, and return the ``extras["bac"]`` entry. The policy must be a transformer one, cache='none'."""
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
    c = policy.config
    entry = {
        "version": BAC_VERSION,
        "sampler": c.sampler,
        "num_inference_steps": c.num_inference_steps,
        "updates": updates,
        "update_ratio": update_ratio,
        "top_blocks": top_blocks,
        "calibration_observations": inferences,
        "schedules": build_schedules(rec.results(), updates, update_ratio, top_blocks),
    }
    # Vouch for the schedule: its effect on the executed actions (same draws, cached vs not) next to how
    # much two independent full samples differ. A schedule worse than sampling noise is not trusted.
    seed = 4242
    reference = open_loop_actions(policy.twin(seed=seed), episodes, max_obs)
    cached = policy.twin(seed=seed, cache="bac", extras={**policy.extras, "bac": entry})
    entry["open_loop_error"] = mean_abs_diff(open_loop_actions(cached, episodes, max_obs), reference)
    entry["sample_spread"] = mean_abs_diff(open_loop_actions(policy.twin(seed=seed + 1), episodes, max_obs), reference)
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
    tol: str = opt("auto", "max mean |warm - full| on executed actions (normalised); auto: full-vs-full spread")
    steps: int = opt(0, "warm-solve calls (0: the policy's: config, earlier calibration, or 4)")
    candidates: list[int] = opt(help="k' candidates, e.g. candidates=9,49,99 (empty: 10 evenly spaced)", factory=list)


@dataclass
class CalibrateBACConfig(CalibrationInput):
    updates: int = opt(0, "mean update steps M per branch: the budget is M x branches (0: use update_ratio)")
    update_ratio: float = opt(0.5, "M = round(ratio * steps) per solve kind")
    top_blocks: int = opt(3, "n most volatile branches (mean l1 change over all step pairs) get the Bubbling Union")
    force: bool = opt(False, "store the schedules even when their open-loop error exceeds the sampling spread")


def run_rti_calibration(cfg: CalibrateRTIConfig) -> dict[str, Any]:
    """Pick k' and store it in the checkpoint's extras['rti']; prints the errors per candidate."""
    from streamdp.policy.policy import Policy

    policy, episodes = cfg.load()
    tol: float | str = cfg.tol if cfg.tol == "auto" else _float(cfg.tol, "tol")
    entry = calibrate_rti(policy, episodes, cfg.candidates or None, cfg.steps or None, tol, cfg.max_obs, cfg.seed)
    entry["dataset"] = str(cfg.dataset)
    Policy.from_pretrained(cfg.checkpoint).save_pretrained(cfg.checkpoint, extras={"rti": entry})
    errs = ", ".join(f"k'={k}: {v:.4f}" for k, v in entry["errors"].items())
    print(f"[rti] mean |warm - full| on executed actions: {errs}")
    print(f"[rti] full vs full (sampling spread): {entry['baseline_full_vs_full']:.4f}")
    verdict = "within" if entry["within_tolerance"] else "NONE within; smallest error"
    chosen = f"k'={entry['start_level']}"
    print(f"[rti] tolerance {entry['tolerance']}: {verdict} -> {chosen}; wrote extras['rti'] to {cfg.checkpoint}")
    return entry


def run_bac_calibration(cfg: CalibrateBACConfig) -> dict[str, Any]:
    """Build BAC schedules for the sampler's solve kinds and merge them into the checkpoint's extras['bac']."""
    from streamdp.policy.policy import Policy

    policy, episodes = cfg.load()
    entry = calibrate_bac(policy, episodes, cfg.updates or None, cfg.update_ratio, cfg.top_blocks, cfg.max_obs)
    entry["dataset"] = str(cfg.dataset)
    err, spread = entry["open_loop_error"], entry["sample_spread"]
    print(f"[bac] open-loop action error {err:.4f} vs spread of two full samples {spread:.4f} (normalised)")
    if err > spread and not cfg.force:
        raise UserError(
            f"BAC schedules for {cfg.checkpoint} change the executed actions by {err:.4f} (normalised), more than "
            f"two independent samples differ ({spread:.4f}); not stored. Raise update_ratio (now "
            f"{cfg.update_ratio}) or updates, or pass force=true to store them anyway"
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
