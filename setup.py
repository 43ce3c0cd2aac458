from glob import glob

from setuptools import find_packages, setup

PACKAGE = "scale_field_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    install_requires=["setuptools"],
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="scale_field_ros maintainers",
    description="Metric depth from relative depth and sparse anchors through image-adaptive scale fields",
    license="MIT",
    entry_points={
        "console_scripts": [
            "scale_field_node = scale_field_ros.ros.node:main",
            "scale-field = scale_field_ros.cli:main",
        ],
    },
)
