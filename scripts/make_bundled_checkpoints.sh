#!/usr/bin/env bash
# Rebuild the small checkpoints bundled in sim/assets/checkpoints/<task> with the project's own
# pipeline, so a newcomer's first run (`make demo`) and `streamdp-bench` have a trained policy
# without hours of CPU training:
#   streamdp-collect (scripted expert -> LeRobot v3) -> streamdp-train (hydra) -> streamdp-calibrate-rti
#   and -bac on the same dataset -> copy of the EMA export (config.json + safetensors, no pickle).
# Seeds are fixed; training runs at about 5-8 steps/s on one CPU core (arm: 20k steps, PushT: 12k).
#   bash scripts/make_bundled_checkpoints.sh                 # both tasks
#   TASKS=arm_reach_dynamic STEPS=8000 bash scripts/make_bundled_checkpoints.sh
#   CALIBRATE_ONLY=1 EPISODES=40 bash scripts/make_bundled_checkpoints.sh   # keep the weights, redo RTI/BAC
#   CALIBRATE_ONLY=1 CALIBRATE=bac EPISODES=40 bash scripts/make_bundled_checkpoints.sh   # BAC only
# A BAC schedule whose open-loop action error exceeds the spread of two independent samples is refused
# by streamdp-calibrate-bac; the bundle then has no schedule for that sampler (and says so here). The
# first stored schedule replaces those of an older extras['bac'] version.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MUJOCO_GL=${MUJOCO_GL:-egl}
work=${WORK:-build/bundle}
episodes=${EPISODES:-200}
bin=.venv/bin
collected=""
for bundle in ${TASKS:-arm_reach_dynamic arm_reach_dynamic_tick pusht}; do
  # arm_reach_dynamic_tick: the same arm, Ta=1 and K=h=15: one network call per control tick.
  task=${bundle%_tick} extra=() bac=1
  [[ $bundle == *_tick ]] && extra=(policy.n_action_steps=1 policy.num_inference_steps=15) bac=
  data=$work/data/$task run=$work/runs/$bundle dst=sim/assets/checkpoints/$bundle
  case $task in arm_reach_dynamic) default_steps=20000 ;; *) default_steps=12000 ;; esac
  steps=${STEPS:-$default_steps}
  rm -rf "$run"
  if [[ " $collected " != *" $task "* ]]; then  # the _tick bundle trains on the same demos
    rm -rf "$data"
    "$bin/streamdp-collect" task="$task" episodes="$episodes" seed=0 root="$data" progress=false
    collected="$collected $task"
  fi
  ckpt=$run/checkpoints/last/pretrained
  if [[ -n ${CALIBRATE_ONLY:-} ]]; then
    mkdir -p "$(dirname "$ckpt")"
    cp -r "$dst" "$ckpt"
  else
    "$bin/streamdp-train" task="$task" policy=sdp_transformer policy.transformer.d_model=128 \
      policy.transformer.n_layers=4 "${extra[@]}" dataset.root="$data" train.steps="$steps" train.lr=3e-4 train.seed=0 \
      train.num_threads="${THREADS:-1}" train.checkpoint_every="$steps" train.progress=false train.output_dir="$run"
  fi
  if [[ " ${CALIBRATE:-rti bac} " == *" rti "* ]]; then
    "$bin/streamdp-calibrate-rti" checkpoint="$ckpt" dataset="$data" max_obs=40
  fi
  bac_runs=(sampler=sdp sampler=rti sampler=sdp_rti "sampler=ddim num_inference_steps=10" sampler=ddpm)
  [[ " ${CALIBRATE:-rti bac} " == *" bac "* && -n $bac ]] || bac_runs=()  # one call per solve: nothing to cache
  for s in "${bac_runs[@]}"; do
    # shellcheck disable=SC2086 # $s is one or two key=value words on purpose
    "$bin/streamdp-calibrate-bac" checkpoint="$ckpt" dataset="$data" $s max_obs=20 max_frames=2000 ||
      echo "[bundle] $task: no BAC schedule stored for $s (see the line above)"
  done
  rm -rf "$dst"
  mkdir -p "$(dirname "$dst")"
  cp -r "$ckpt" "$dst"
  echo "[bundle] $bundle -> $dst"
done
