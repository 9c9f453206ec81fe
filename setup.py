"""ament_python package `streamdp`: every top-level source folder maps under one import root."""

from glob import glob

from setuptools import setup

package_name = "streamdp"
subs = ["policy", "ros_nodes", "kernels", "sim"]

setup(
    name=package_name,
    version="0.1.0",
    # `streamdp` itself is a namespace package; each folder becomes streamdp.<folder>.
    packages=[f"{package_name}.{s}" for s in subs],
    package_dir={f"{package_name}.{s}": s for s in subs},
    package_data={f"{package_name}.sim": ["assets/*.xml", "assets/*.urdf", "assets/checkpoints/*/*"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", [f for f in glob("config/**/*", recursive=True) if not f.endswith("/")]),
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
            "streamdp-train = streamdp.policy.train:main",
            "streamdp-calibrate-rti = streamdp.policy.calibration:rti_main",
            "streamdp-calibrate-bac = streamdp.policy.calibration:bac_main",
            "streamdp-collect = streamdp.sim.collect:main",
            "streamdp-sim-measure = streamdp.sim.measure:main",
            "streamdp-eval = streamdp.sim.evaluate:main",
            "streamdp-bench = streamdp.sim.bench:main",
            "streamdp-demo = streamdp.ros_nodes.demo:main",
            "streamdp-sim-episodes = streamdp.ros_nodes.sim_episodes:main",
            "streamdp-bringup = streamdp.ros_nodes.bringup:main",
            "policy_node = streamdp.ros_nodes.policy_node:main",
            "sim_bridge_node = streamdp.ros_nodes.sim_bridge_node:main",
        ],
    },
)
