"""Forward kinematics of a serial chain read from a URDF, for the safety filter's workspace box.

Pure numpy, no ROS: the robot description a real arm already has (``robot_description`` / the URDF
file) gives the joint frames, so the box is enforced on the real tip position rather than on a
hand-written formula. Supports ``revolute``, ``continuous``, ``prismatic`` and ``fixed`` joints with
``<origin xyz rpy>`` and ``<axis xyz>``; ``mimic`` and floating joints are refused with a message.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class KinematicsError(ValueError):
    """The URDF cannot give a chain for the requested links and joints; the message says why."""


def _floats(text: str | None, n: int, what: str) -> np.ndarray:
    if text is None:
        return np.zeros(n)
    try:
        v = np.array([float(x) for x in text.split()], dtype=np.float64)
    except ValueError as e:
        raise KinematicsError(f"{what}: {text!r} is not {n} numbers") from e
    if v.shape != (n,) or not np.isfinite(v).all():
        raise KinematicsError(f"{what}: {text!r} is not {n} finite numbers")
    return v


def _rpy(r: float, p: float, y: float) -> np.ndarray:
    """URDF fixed-axis roll-pitch-yaw: R = Rz(y) Ry(p) Rx(r)."""
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    x, y, z = axis
    c, s = np.cos(angle), np.sin(angle)
    C = 1.0 - c
    return np.array([
        [c + x * x * C, x * y * C - z * s, x * z * C + y * s],
        [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
        [z * x * C - y * s, z * y * C + x * s, c + z * z * C],
    ])


@dataclass(frozen=True)
class _Joint:
    name: str
    type: str
    origin: np.ndarray  # 4x4 parent -> joint frame at zero
    axis: np.ndarray
    index: int  # position in the command vector; -1 for fixed joints


class UrdfChain:
    """FK from ``base_link`` to ``tip_link``: ``fk(q) -> (3,)`` tip position in the base frame.

    ``joint_names`` is the order of ``q`` (the checkpoint's joint order); every movable joint on the
    chain must be among them, names off the chain are an error too (a typo would otherwise go unseen).
    """

    def __init__(self, urdf: str | Path, tip_link: str, joint_names: Sequence[str], base_link: str | None = None
                 ) -> None:
        src = str(urdf)
        text = Path(src).read_text() if not src.lstrip().startswith("<") and Path(src).exists() else src
        if not text.lstrip().startswith("<"):
            raise KinematicsError(f"URDF {src!r} is neither a readable file nor URDF XML")
        try:
            root = ET.fromstring(text)
        except ET.ParseError as e:
            raise KinematicsError(f"URDF {src!r} is not valid XML: {e}") from e
        links = {ln.get("name") for ln in root.iter("link")}
        by_child: dict[str, ET.Element] = {}
        for j in root.iter("joint"):
            child = j.find("child")
            if child is not None:
                by_child[child.get("link", "")] = j
        if tip_link not in links:
            raise KinematicsError(f"tip link {tip_link!r} not in the URDF (links: {sorted(x for x in links if x)})")
        if base_link is not None and base_link not in links:
            raise KinematicsError(f"base link {base_link!r} not in the URDF")
        names = list(joint_names)
        chain: list[_Joint] = []
        link = tip_link
        while link in by_child and link != base_link:
            j = by_child[link]
            name, jtype = j.get("name", "?"), j.get("type", "")
            if jtype not in ("revolute", "continuous", "prismatic", "fixed"):
                raise KinematicsError(f"joint {name!r}: type {jtype!r} is not supported on a serial arm chain")
            if j.find("mimic") is not None:
                raise KinematicsError(f"joint {name!r}: mimic joints are not supported")
            o = j.find("origin")
            xyz = _floats(o.get("xyz") if o is not None else None, 3, f"joint {name!r} origin xyz")
            rpy = _floats(o.get("rpy") if o is not None else None, 3, f"joint {name!r} origin rpy")
            T = np.eye(4)
            T[:3, :3], T[:3, 3] = _rpy(*rpy), xyz
            a = j.find("axis")
            axis = _floats(a.get("xyz") if a is not None else "1 0 0", 3, f"joint {name!r} axis")
            if jtype != "fixed":
                n = np.linalg.norm(axis)
                if n == 0:
                    raise KinematicsError(f"joint {name!r}: zero axis")
                axis = axis / n
                if name not in names:
                    raise KinematicsError(f"movable joint {name!r} on the chain to {tip_link!r} is not among the "
                                          f"commanded joints {names}")
            chain.append(_Joint(name, jtype, T, axis, names.index(name) if jtype != "fixed" else -1))
            link = j.find("parent").get("link", "")  # type: ignore[union-attr]
        if base_link is not None and link != base_link:
            raise KinematicsError(f"link {tip_link!r} is not below base link {base_link!r}")
        on_chain = {jt.name for jt in chain}
        off = [n for n in names if n not in on_chain]
        if off:
            raise KinematicsError(f"commanded joints {off} are not on the chain from {link!r} to {tip_link!r}")
        self.chain = chain[::-1]
        self.base_link, self.tip_link, self.joint_names = link, tip_link, names

    def fk(self, q: Sequence[float]) -> np.ndarray:
        """Tip position (x, y, z) in the base frame for joint positions ``q`` (joint_names order)."""
        q = np.asarray(q, dtype=np.float64).reshape(-1)
        if q.size != len(self.joint_names):
            raise KinematicsError(f"fk needs {len(self.joint_names)} joint positions, got {q.size}")
        T = np.eye(4)
        for jt in self.chain:
            T = T @ jt.origin
            if jt.index >= 0:
                M = np.eye(4)
                if jt.type == "prismatic":
                    M[:3, 3] = jt.axis * q[jt.index]
                else:
                    M[:3, :3] = _axis_angle(jt.axis, q[jt.index])
                T = T @ M
        return T[:3, 3].copy()

    __call__ = fk
