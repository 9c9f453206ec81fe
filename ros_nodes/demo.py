"""The main job (``make demo`` / ``streamdp-demo``): the whole loop on the built-in arm task.

    streamdp-demo                                  # bundled policy, 10 episodes per sampler over ROS 2
    streamdp-demo --train-steps 8000               # train a fresh policy from the demos just collected
    streamdp-demo --episodes 20 --samplers sdp ddim:10 ddpm --out outputs/demo

1. **Collect** ``arm_reach_dynamic`` demonstrations with the scripted IK expert into a LeRobot v3
   dataset (``streamdp-collect``; only successful episodes are kept).
2. **Policy.** By default the small SDP transformer bundled in the package
   (``streamdp/sim/assets/checkpoints/arm_reach_dynamic``, made by this project's own pipeline:
   ``scripts/make_bundled_checkpoints.sh``); it is checked against the dataset (joints, dims, fps)
   as a robot would check it. ``--train-steps N`` trains a new one from the demos with
   ``streamdp-train`` instead (about 8 steps/s on one CPU core).
3. **Per-observation cost** of every sampler on the same weights: network calls and ms.
4. **Closed loop over ROS 2**: ``sim_bridge_node`` (MuJoCo, real time at 20 Hz) and the lifecycle
   ``policy_node`` (safety filter on: ``config/ros/sim.yaml``'s limits, the arm's URDF ones) as
   separate processes over DDS;
   scored episodes per sampler (``streamdp.ros_nodes.sim_episodes``).
5. **Results**: the tables printed, ``results.json``, ``success_latency.png`` and
   ``distance.png`` (end-effector distance to the target over each episode) in ``--out``.

ROS network hygiene: discovery stays on this machine (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST), a
ROS_DOMAIN_ID of its own (random unless set) and ROS_LOG_DIR inside ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

TASK = "arm_reach_dynamic"


def _step(i: int, n: int, text: str) -> None:
    print(f"\n[demo {i}/{n}] {text}", flush=True)


def set_ros_env(out: Path) -> dict[str, str]:
    """The three variables every ROS process here needs (kept if the caller set them)."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 101)))
    os.environ.setdefault("ROS_LOG_DIR", str((out / "ros_log").resolve()))
    Path(os.environ["ROS_LOG_DIR"]).mkdir(parents=True, exist_ok=True)
    return {k: os.environ[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID", "ROS_LOG_DIR")}


def plots(runs: list, out: Path, fps: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files = []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(runs))
    s = [r.summary() for r in runs]
    rate = np.array([v["success_rate"] for v in s])
    lo = np.array([v["success_ci95"][0] for v in s])
    hi = np.array([v["success_ci95"][1] for v in s])
    a1.bar(x, rate, yerr=[rate - lo, hi - rate], capsize=4)
    a1.set_xticks(x, [r.label for r in runs])
    a1.set_ylim(0, 1)
    a1.set_ylabel(f"success ({s[0]['episodes']} episodes, 95% CI)")
    a1.set_title("closed loop over ROS 2, real time")
    a2.bar(x - 0.2, [v["obs_to_cmd_ms_p50"] for v in s], 0.4, label="obs -> command p50")
    a2.bar(x + 0.2, [v["obs_to_cmd_ms_p99_max"] for v in s], 0.4, label="p99 (worst episode)")
    a2.axhline(1e3 / fps, color="k", ls="--", lw=1, label="control period")
    a2.set_xticks(x, [f"{r.label}\n{v['nfe_per_chunk']:.1f} calls/chunk" for r, v in zip(runs, s)])
    a2.set_yscale("log")
    a2.set_ylabel("ms")
    a2.legend(fontsize=8)
    fig.tight_layout()
    files.append(out / "success_latency.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.5), sharey=True, squeeze=False)
    for ax, r in zip(axes[0], runs):
        for e in r.episodes:
            t = np.arange(len(e.distance_trace)) / fps
            ax.plot(t, e.distance_trace, color="C2" if e.success else "C3", alpha=0.7, lw=1)
        ax.axhline(0.03, color="k", ls=":", lw=1)
        ax.set_title(f"{r.label}: {r.successes}/{len(r.episodes)}")
        ax.set_xlabel("s (green: success, red: time-out)")
    axes[0][0].set_ylabel("end effector to target (m)")
    fig.tight_layout()
    files.append(out / "distance.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--episodes", type=int, default=10, help="ROS 2 episodes per sampler")
    ap.add_argument("--samplers", nargs="+", default=["sdp", "ddim:10", "ddpm"], help="sampler[:K] ...")
    ap.add_argument("--demos", type=int, default=50, help="expert episodes to collect")
    ap.add_argument("--train-steps", type=int, default=0, help="train a fresh policy (0: the bundled one)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="use this checkpoint instead")
    ap.add_argument("--latency-obs", type=int, default=30, help="timed observations per sampler (step 3)")
    ap.add_argument("--seed", type=int, default=10000, help="first episode seed (held out from the demos)")
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"))
    return ap.parse_args(argv)


def _policy(a: argparse.Namespace, data: Path) -> tuple[Path, str]:
    """Step 2: the checkpoint to run (given, trained from the demos, or bundled) and how it came about."""
    if a.checkpoint is not None:
        return a.checkpoint, f"given checkpoint {a.checkpoint}"
    if a.train_steps > 0:
        from streamdp.policy.train.cli import load_config, train

        t = time.perf_counter()
        run_dir = a.out / "train"
        cfg = load_config([f"task={TASK}", "policy=sdp_transformer", "policy.transformer.d_model=128",
                           "policy.transformer.n_layers=4", f"dataset.root={data}", f"train.steps={a.train_steps}",
                           "train.lr=3e-4", "train.num_threads=1", f"train.checkpoint_every={a.train_steps}",
                           f"train.output_dir={run_dir}"])
        res = train(cfg, output_dir=run_dir)
        ckpt = Path(res.checkpoint) / "pretrained"
        return ckpt, f"trained {res.step} steps in {time.perf_counter() - t:.0f} s (loss {res.last_loss:.4f}) -> {ckpt}"
    from streamdp.sim import bundled_checkpoint

    found = bundled_checkpoint(TASK)
    if found is None:
        raise SystemExit(f"no bundled {TASK} checkpoint in this install: pass --train-steps N or --checkpoint")
    return found, f"bundled checkpoint {found} (scripts/make_bundled_checkpoints.sh made it)"


def _describe_policy(ckpt: Path, how: str) -> None:
    """Load the checkpoint, check it against the task as a robot would, and say what it is."""
    from streamdp.policy.policy import Policy
    from streamdp.sim.tasks import task_spec

    spec = task_spec(TASK)
    pol = Policy.from_pretrained(ckpt)
    pol.check_compatible(joint_names=spec.joint_names, state_dim=spec.state_dim, action_dim=spec.action_dim,
                         fps=float(spec.fps))
    c = pol.config
    print(f"  {how}\n  {c.denoiser}, {sum(p.numel() for p in pol.model.parameters()) / 1e6:.2f} M parameters, "
          f"To={c.n_obs_steps} Ta={c.n_action_steps} Tp={c.horizon} K={c.num_inference_steps} "
          f"(h={c.num_chunks}); matches the dataset's joints {c.joint_names} at {c.fps:g} Hz")


def _offline_cost(ckpt: Path, data: Path, specs: list, n_obs: int) -> list[dict]:
    """Step 3: network calls and ms per observation of each sampler, on the observations just collected."""
    from streamdp.policy.calibration import load_episodes
    from streamdp.sim.bench import Mode, latency

    # the observations of the dataset just collected, read back through lerobot
    stream = [o for ep in load_episodes(data, max_frames=n_obs + 3) for o in ep]
    offline = [latency(ckpt, Mode(sp.sampler, sp.num_inference_steps, "none", "eager"), stream, "cpu")
               for sp in specs]
    ref = next((x for x in offline if x["label"].startswith("DDPM")), offline[0])
    print("| sampler | calls/obs | ms/obs p50 | ms/obs p99 | ms ratio to " + ref["label"] + " |")
    print("|---|---|---|---|---|")
    for x in offline:
        print(f"| {x['label']} | {x['calls']:.1f} | {x['ms_p50']:.1f} | {x['ms_p99']:.1f} "
              f"| {x['ms_p50'] / ref['ms_p50']:.3f} |")
    return offline


def _ros_episodes(a: argparse.Namespace, ckpt: Path, specs: list) -> list:
    """Step 4: scored closed-loop episodes per sampler over ROS 2 (two processes, DDS on this machine)."""
    from streamdp.ros_nodes.sim_episodes import run_sampler_episodes

    runs = []
    for item, sp in zip(a.samplers, specs):
        print(f"  {item}:", end="", flush=True)
        r = run_sampler_episodes(ckpt, sp.sampler, sp.num_inference_steps or 0, a.episodes, a.seed, task=TASK,
                                 policy_params={"num_threads": 1},
                                 on_episode=lambda e: print(" ok" if e.success else " --", end="", flush=True))
        s = r.summary()
        print(f"  {s['successes']}/{s['episodes']} in {r.wall_s:.0f} s (start-up {r.startup_s:.0f} s)")
        runs.append(r)
    return runs


def main(argv: list[str] | None = None) -> int:
    """``streamdp-demo``: the five steps of the module docstring; results in ``--out``."""
    a = _parse(argv)
    from streamdp.ros_nodes.rosenv import ensure_ros_env

    ensure_ros_env()  # before any work: a re-execution would start the demo over
    t_all = time.perf_counter()
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    a.out.mkdir(parents=True, exist_ok=True)
    ros = set_ros_env(a.out)
    import shutil

    import torch

    torch.set_num_threads(1)  # the simulator and DDS share 2 cores with the policy (docs/architecture.md)
    from streamdp.ros_nodes.sim_episodes import markdown
    from streamdp.sim.collect import collect
    from streamdp.sim.evaluate import SamplerSpec
    from streamdp.sim.metrics import hardware
    from streamdp.sim.tasks import task_spec

    n = 5
    _step(1, n, f"collecting {a.demos} expert demonstrations of {TASK} (LeRobot v3 dataset)")
    data = a.out / "data" / TASK
    if data.exists():
        shutil.rmtree(data)
    col = collect(TASK, a.demos, root=data, seed=0, progress=True)
    print(f"  kept {col.episodes_kept}/{col.episodes_tried} episodes, {col.frames} frames in {col.seconds:.1f} s "
          f"-> {data}")
    _step(2, n, "policy")
    ckpt, how = _policy(a, data)
    _describe_policy(ckpt, how)
    _step(3, n, "per-observation cost of each sampler on the same weights (observe + denoise to Ta actions)")
    specs = [SamplerSpec.parse(item) for item in a.samplers]
    offline = _offline_cost(ckpt, data, specs, a.latency_obs)
    _step(4, n, f"closed loop over ROS 2: sim_bridge_node + policy_node, {a.episodes} episodes per sampler "
                f"(domain {ros['ROS_DOMAIN_ID']}, localhost only)")
    runs = _ros_episodes(a, ckpt, specs)
    _step(5, n, "results")
    table = markdown(runs)
    print(table)
    files = plots(runs, a.out, float(task_spec(TASK).fps))
    doc = {"task": TASK, "checkpoint": str(ckpt), "policy": how, "collect": {
        "episodes_tried": col.episodes_tried, "episodes_kept": col.episodes_kept, "frames": col.frames,
        "seconds": col.seconds}, "offline_latency": offline, "ros": [r.to_dict() for r in runs],
        "ros_env": ros, "hardware": hardware("cpu"), "seconds": time.perf_counter() - t_all}
    (a.out / "results.json").write_text(json.dumps(doc, indent=1, default=str))
    (a.out / "table.md").write_text(table + "\n")
    print(f"\n[demo] done in {time.perf_counter() - t_all:.0f} s; wrote {a.out / 'results.json'}, "
          + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
