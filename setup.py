"""ament_python package `streamdp`: every top-level source folder maps under one import root.

A regular install (``pip install .``, ``pip wheel .``, colcon's ament_python build) must work, not only the
editable one: subpackages are discovered from the folders, and each config subfolder is installed as
``share/streamdp/config/<sub>`` (data_files entries must be files, not folders).
"""

import os
from glob import glob

from setuptools import find_packages, setup

package_name = "streamdp"
subs = ["policy", "ros_nodes", "kernels", "sim"]


def _packages() -> list[str]:
    """streamdp.<folder> and every subpackage below it (a folder with an __init__.py), found at build time."""
    out = []
    for s in subs:
        out += [f"{package_name}.{s}"] + [f"{package_name}.{s}.{p}" for p in find_packages(s)]
    return out


def _config_files() -> list[tuple[str, list[str]]]:
    """(share/streamdp/config[/<sub>], [files]) for config/ and each of its subfolders."""
    files = sorted(f for f in glob("config/**/*", recursive=True) if os.path.isfile(f))
    dirs = sorted({os.path.dirname(f) for f in files})
    return [(f"share/{package_name}/{d}", [f for f in files if os.path.dirname(f) == d]) for d in dirs]


setup(
    name=package_name,
    version="0.1.0",
    # `streamdp` itself is a namespace package; each folder becomes streamdp.<folder> (subpackages follow it).
    packages=_packages(),
    package_dir={f"{package_name}.{s}": s for s in subs},
    package_data={f"{package_name}.sim": ["assets/*.xml", "assets/*.urdf", "assets/checkpoints/*/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        *_config_files(),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="streamdp developers",
    maintainer_email="streamdp@example.org",
    description="Streaming diffusion policies on ROS 2 robot arms in real time.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "streamdp-train = streamdp.policy.train.cli:main",
            "streamdp-calibrate-rti = streamdp.policy.calibration:rti_main",
            "streamdp-calibrate-bac = streamdp.policy.calibration:bac_main",
            "streamdp-collect = streamdp.sim.collect:main",
            "streamdp-sim-measure = streamdp.sim.measure:main",
            "streamdp-eval = streamdp.sim.evaluate:main",
            "streamdp-bench = streamdp.sim.bench:main",
            "streamdp-demo = streamdp.ros_nodes.demo:main",
            "streamdp-sim-episodes = streamdp.ros_nodes.cli:sim_episodes",
            "streamdp-bringup = streamdp.ros_nodes.bringup:main",
            "streamdp-record = streamdp.ros_nodes.cli:record",
            "streamdp-episode = streamdp.ros_nodes.cli:episode",
            "streamdp-convert-bag = streamdp.ros_nodes.convert_bag:main",
            "streamdp-soak = streamdp.ros_nodes.cli:soak",
            "policy_node = streamdp.ros_nodes.cli:policy_node",
            "sim_bridge_node = streamdp.ros_nodes.cli:sim_bridge_node",
            "expert_teleop_node = streamdp.ros_nodes.cli:expert_teleop_node",
        ],
    },
)
