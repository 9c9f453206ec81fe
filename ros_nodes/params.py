"""``policy_node``'s parameter table and what it becomes: declared names, defaults and descriptions, the
checked :class:`Settings` read at configure, and the safety filter the ``limits.*`` parameters describe.

Pure Python (no rclpy): the node declares :data:`PARAMETERS` and hands :func:`read_settings` its getter,
so the table can be read, documented and tested without ROS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamdp.ros_nodes.observation import ExtraState
from streamdp.ros_nodes.safety import SafetyFilter, SafetyLimits

OUTPUT_TYPES = ("joint_trajectory", "float64_multi_array")
DEFAULT_COMMAND_TOPICS = {
    "joint_trajectory": "/joint_trajectory_controller/joint_trajectory",
    "float64_multi_array": "/forward_position_controller/commands",
}
LIMIT_PARAMS = (  # read by the safety filter (SafetyLimits) when any is given
    "position_min", "position_max", "max_delta", "max_velocity", "max_acceleration", "workspace_min",
    "workspace_max",
)
LIMIT_STRINGS = ("urdf", "tip_link", "base_link")  # robot description for URDF limits and the workspace FK


@dataclass(frozen=True)
class Unset:
    """A parameter declared without a value (ROS: declared by type only); `kind` is its type."""

    kind: str  # "string" | "string_array" | "double_array"


UNSET_STRING, UNSET_STRINGS, UNSET_DOUBLES = Unset("string"), Unset("string_array"), Unset("double_array")


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: its name, default (or :class:`Unset`) and the description ROS tools show."""

    name: str
    default: Any
    description: str


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("checkpoint", UNSET_STRING, "checkpoint directory (Policy.from_pretrained)"),
    ParamSpec("joint_names", UNSET_STRINGS, "robot joints in the checkpoint's order (commands use this order); "
              "unset: the checkpoint's"),
    ParamSpec("joint_states_topic", "/joint_states", "sensor_msgs/JointState input (matched by joint name)"),
    ParamSpec("state_layout", ["joint_state.position", "joint_state.velocity"], "observation.state entries in "
              "order: joint_state.{position,velocity,effort} or an extra_state_names entry"),
    ParamSpec("extra_state_names", UNSET_STRINGS, "state entries from their own geometry_msgs/PointStamped topics"),
    ParamSpec("extra_state_topics", UNSET_STRINGS, "topic of each extra state entry"),
    ParamSpec("extra_state_fields", UNSET_STRINGS, "PointStamped components of each extra entry, e.g. 'xy'"),
    ParamSpec("camera_names", UNSET_STRINGS, "checkpoint cameras fed from sensor_msgs/Image topics"),
    ParamSpec("camera_topics", UNSET_STRINGS, "topic of each camera (sensor-data QoS; rgb8/bgr8/mono8)"),
    ParamSpec("output_type", "joint_trajectory", "joint_trajectory | float64_multi_array"),
    ParamSpec("command_topic", "", "command output topic; empty: the controller's conventional topic for output_type"),
    ParamSpec("control_rate_hz", 0.0, "control tick rate; 0: the checkpoint fps (any other value must equal it)"),
    ParamSpec("action_delay_ticks", 1, "ticks between a chunk's observation and its first action (inference "
              "deadline)"),
    ParamSpec("denoise_budget", 0, "network calls per inference slice; 0: a whole chunk at once"),
    ParamSpec("sampler", "", "override the checkpoint's sampler (sdp | ddim | ddpm | rti | sdp_rti); empty: keep"),
    ParamSpec("num_inference_steps", 0, "override the sampler grid size K; 0: keep the checkpoint's"),
    ParamSpec("cache", "", "override the denoiser cache mode (none | bac); empty: keep"),
    ParamSpec("policy_overrides", "", "JSON object of further PolicyConfig overrides, e.g. '{\"rti_steps\": 3}'"),
    ParamSpec("device", "auto", "auto (CUDA when available) | cpu | cuda | cuda:N"),
    ParamSpec("num_threads", 1, "torch CPU threads (1 when sharing the CPU with a simulator)"),
    ParamSpec("seed", 0, "sampler noise seed"),
    ParamSpec("max_obs_age_s", 0.25, "joint/extra state older than this is stale: no new input, hold after the "
              "queue"),
    ParamSpec("max_image_age_s", 0.25, "per-camera watchdog: an older image holds the arm"),
    ParamSpec("warmup_chunks", 2, "dummy chunks computed at configure"),
    ParamSpec("trajectory_points", 0, "max points per JointTrajectory (current + look-ahead); 0: all queued"),
    ParamSpec("diagnostics_rate_hz", 1.0, "/diagnostics publish rate; 0: off"),
    ParamSpec("autostart", False, "configure, then activate once a JointState has arrived, without a manager"),
    ParamSpec("publish_plan", True, "publish ~/plan (JointTrajectory: the queued clean actions, before the safety "
              "filter) and ~/noise_levels (Float32MultiArray: the SDP buffer's per-slot grid levels, -1 clean)"),
    ParamSpec("activate_timeout_s", 5.0, "activate waits this long for the first fresh JointState (and every camera "
              "and extra state) to seed from, then fails"),
    *(ParamSpec(f"limits.{n}", UNSET_DOUBLES, "safety filter limit (per joint; read by the safety filter)")
      for n in LIMIT_PARAMS),
    ParamSpec("limits.max_consecutive_clamps", 3, "safety filter: escalate to hold after this many clamps"),
    ParamSpec("limits.urdf", "", "URDF file (or XML): position/velocity limits not given above, and the chain for "
              "FK"),
    ParamSpec("limits.tip_link", "", "URDF link whose origin the workspace box bounds (needed with workspace_*)"),
    ParamSpec("limits.base_link", "", "URDF link the workspace box is expressed in; empty: the chain's root"),
)


class ParameterError(ValueError):
    """A parameter value is invalid; the message names the parameter."""


@dataclass
class Settings:
    """The node's parameters, read and checked at configure."""

    checkpoint: str
    joint_names: list[str]
    joint_states_topic: str
    state_layout: list[str]
    extras: list[ExtraState]
    camera_names: list[str]
    camera_topics: list[str]
    output_type: str
    command_topic: str
    control_rate_hz: float
    action_delay_ticks: int
    denoise_budget: int
    sampler: str
    num_inference_steps: int
    cache: str
    policy_overrides: dict[str, Any]
    device: str
    num_threads: int
    seed: int
    max_obs_age_s: float
    max_image_age_s: float
    warmup_chunks: int
    trajectory_points: int
    activate_timeout_s: float
    limits: dict[str, Any]
    publish_plan: bool = True


def extra_states(names: Any, topics: Any, fields: Any) -> list[ExtraState]:
    """The ``extra_state_{names,topics,fields}`` parameters as ExtraState entries (fields default to 'xy')."""
    names, topics, fields = list(names or []), list(topics or []), list(fields or [])
    if not (len(names) == len(topics) and len(fields) in (0, len(names))):
        raise ParameterError(f"extra_state_names {names}, extra_state_topics {topics} and extra_state_fields "
                             f"{fields} must have the same length")
    try:
        return [ExtraState(n, t, f or "xy") for n, t, f in zip(names, topics, fields or [""] * len(names))]
    except ValueError as e:
        raise ParameterError(str(e)) from e


def read_settings(get: Callable[[str], Any]) -> Settings:
    """The node's parameters checked and typed; `get(name)` gives a parameter's value (None when unset)."""
    ckpt = get("checkpoint")
    if not ckpt:
        raise ParameterError("parameter 'checkpoint' is not set: give the checkpoint directory")
    out = get("output_type")
    if out not in OUTPUT_TYPES:
        raise ParameterError(f"output_type must be one of {OUTPUT_TYPES}, got {out!r}")
    extras = extra_states(get("extra_state_names"), get("extra_state_topics"), get("extra_state_fields"))
    cams = list(get("camera_names") or [])
    cam_topics = list(get("camera_topics") or [])
    if len(cams) != len(cam_topics):
        raise ParameterError(f"camera_names {cams} and camera_topics {cam_topics} differ in length")
    overrides: dict[str, Any] = {}
    raw = get("policy_overrides")
    if raw:
        try:
            overrides = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ParameterError(f"policy_overrides is not valid JSON: {e}") from e
        if not isinstance(overrides, dict):
            raise ParameterError("policy_overrides must be a JSON object")
    delay = int(get("action_delay_ticks"))
    if delay < 1:
        raise ParameterError(f"action_delay_ticks must be >= 1, got {delay}")
    threads = int(get("num_threads"))
    if threads < 1:
        raise ParameterError(f"num_threads must be >= 1, got {threads}")
    wait = float(get("activate_timeout_s"))
    if not wait >= 0:
        raise ParameterError(f"activate_timeout_s must be >= 0 seconds, got {wait}")
    return Settings(
        checkpoint=ckpt,
        joint_names=list(get("joint_names") or []),
        joint_states_topic=get("joint_states_topic"),
        state_layout=list(get("state_layout")),
        extras=extras,
        camera_names=cams,
        camera_topics=cam_topics,
        output_type=out,
        command_topic=get("command_topic") or DEFAULT_COMMAND_TOPICS[out],
        control_rate_hz=float(get("control_rate_hz")),
        action_delay_ticks=delay,
        denoise_budget=int(get("denoise_budget")),
        sampler=get("sampler"),
        num_inference_steps=int(get("num_inference_steps")),
        cache=get("cache"),
        policy_overrides=overrides,
        device=get("device"),
        num_threads=threads,
        seed=int(get("seed")),
        max_obs_age_s=float(get("max_obs_age_s")),
        max_image_age_s=float(get("max_image_age_s")),
        warmup_chunks=int(get("warmup_chunks")),
        trajectory_points=int(get("trajectory_points")),
        activate_timeout_s=wait,
        limits={n: get(f"limits.{n}") for n in (*LIMIT_PARAMS, *LIMIT_STRINGS, "max_consecutive_clamps")},
        publish_plan=bool(get("publish_plan")),
    )


def safety_filter_from(s: Settings) -> tuple[SafetyFilter | None, str]:
    """The SafetyFilter of the ``limits.*`` parameters (None when none is given) and a line saying what it enforces."""
    lim = s.limits
    given = {k: v for k, v in lim.items() if k in LIMIT_PARAMS and v is not None and len(v) > 0}
    urdf = str(lim.get("urdf") or "")
    if not given and not urdf:
        return None, ""
    d: dict[str, Any] = {"joint_names": list(s.joint_names), "dt": 1.0 / s.control_rate_hz,
                         "escalate_after": int(lim.get("max_consecutive_clamps") or 3)}
    for key, name in (("position_min", "position_lower"), ("position_max", "position_upper"),
                      ("max_delta", "max_delta"), ("max_velocity", "max_velocity"),
                      ("max_acceleration", "max_acceleration"), ("workspace_min", "workspace_lower"),
                      ("workspace_max", "workspace_upper")):
        if key in given:
            d[name] = list(given[key])
    if urdf:
        d["urdf"] = urdf
    fk = None
    if "workspace_lower" in d or "workspace_upper" in d:
        # A box that cannot be enforced must not look enforced: refuse instead of warning.
        if not urdf or not lim.get("tip_link"):
            raise ParameterError("limits.workspace_min/max need limits.urdf and limits.tip_link (the chain whose "
                                 "tip the box bounds)")
        from streamdp.ros_nodes.kinematics import KinematicsError, UrdfChain

        try:
            fk = UrdfChain(urdf, str(lim["tip_link"]), s.joint_names, base_link=lim.get("base_link") or None)
        except (KinematicsError, OSError) as e:
            raise ParameterError(f"limits.urdf / limits.tip_link: {e}") from e
    try:
        limits = SafetyLimits.from_dict(d)
        if limits.workspace_lower is not None and limits.workspace_lower.shape != (3,):
            raise ValueError(f"workspace_min/max need 3 values (x, y, z), got {limits.workspace_lower.size}")
    except ValueError as e:
        raise ParameterError(f"limits.*: {e}") from e
    box = "" if fk is None else (f", workspace box {limits.workspace_lower.tolist()}.."
                                 f"{limits.workspace_upper.tolist()} on {fk.tip_link} in {fk.base_link}")
    summary = (f"safety filter on: step limit {np.round(limits.step_limit, 4).tolist()} per tick, "
               f"hold after {limits.escalate_after} consecutive clamps{box}")
    return SafetyFilter(limits, fk=fk), summary
