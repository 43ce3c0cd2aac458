"""Launch scale_field_node: `ros2 launch scale_field_ros depth.launch.py [image:=... anchors:=... rviz:=true]`.

With the default empty namespace the outputs are /metric_depth, /metric_depth/camera_info,
/metric_depth/points, /metric_depth/confidence and /scale_field; a namespace prefixes them all (rviz2 follows,
and fixed_frame:= names the camera optical frame it shows them in).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node

from launch import LaunchDescription


def generate_launch_description():
    share = get_package_share_directory("scale_field_ros")
    args = [
        DeclareLaunchArgument(
            "params_file", default_value=os.path.join(share, "config", "params.yaml"), description="node parameters"
        ),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="input Image topic"),
        DeclareLaunchArgument(
            "image_compressed",
            default_value="/camera/image_raw/compressed",
            description="input CompressedImage topic (read when the params file sets use_compressed)",
        ),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="input CameraInfo"),
        DeclareLaunchArgument("anchors", default_value="/anchors", description="input PointCloud2 anchors"),
        DeclareLaunchArgument("odom", default_value="/odom", description="input nav_msgs/Odometry (optional)"),
        DeclareLaunchArgument(
            "model_path", default_value="", description="backbone model file; empty keeps the params file's"
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="start rviz2 with config/depth.rviz"),
        DeclareLaunchArgument(
            "fixed_frame",
            default_value="camera_optical",
            description="rviz2's fixed frame: the camera optical frame of the input images (their header.frame_id)",
        ),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="follow /clock (bag replay)"),
    ]
    remappings = [
        ("image", LaunchConfiguration("image")),
        ("image/compressed", LaunchConfiguration("image_compressed")),
        ("camera_info", LaunchConfiguration("camera_info")),
        ("anchors", LaunchConfiguration("anchors")),
        ("odom", LaunchConfiguration("odom")),
    ]
    no_model_given = PythonExpression(["'", LaunchConfiguration("model_path"), "' == ''"])

    def depth_node(extra_parameters, condition):
        return Node(
            package="scale_field_ros",
            executable="scale_field_node",
            name="scale_field_node",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[
                LaunchConfiguration("params_file"),
                {"use_sim_time": LaunchConfiguration("use_sim_time")},
                *extra_parameters,
            ],
            remappings=remappings,
            condition=condition,
        )

    # depth.rviz names the outputs of the default (empty) namespace; a namespace is put in front by remapping
    # ("robot1" + "/metric_depth" resolves to /robot1/metric_depth from rviz2's root namespace)
    rviz_topics = ("/metric_depth", "/metric_depth/points", "/metric_depth/confidence", "/scale_field")
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=[
            "-d",
            PathJoinSubstitution([share, "config", "depth.rviz"]),
            "--fixed-frame",
            LaunchConfiguration("fixed_frame"),
        ],
        remappings=[(topic, [LaunchConfiguration("namespace"), topic]) for topic in rviz_topics],
        parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
        condition=IfCondition(LaunchConfiguration("rviz")),
        output="screen",
    )
    return LaunchDescription(
        [
            *args,
            # exactly one of the two starts: model_path overrides the params file only when given
            depth_node([], IfCondition(no_model_given)),
            depth_node([{"model_path": LaunchConfiguration("model_path")}], UnlessCondition(no_model_given)),
            rviz,
        ]
    )
