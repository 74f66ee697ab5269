"""Launch the sg2v node with examples/ros/sg2v.params.yaml: `ros2 launch examples/ros/sg2v.launch.py
bundle:=models/demo namespace:=robot1` (needs a ROS 2 installation with `launch` and `launch_ros`; the node
itself runs from the pip-installed `sg2v-ros`, which is not an ament package, hence ExecuteProcess)."""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.substitutions import LaunchConfiguration

PARAMS = Path(__file__).resolve().with_name("sg2v.params.yaml")


def generate_launch_description() -> LaunchDescription:
    """sg2v-ros with the example parameters; `bundle`, `backend`, `futures` and `namespace` overridable."""
    args = {"bundle": "models/demo", "backend": "auto", "futures": "4", "namespace": "sg2v"}
    node = ExecuteProcess(
        cmd=["sg2v-ros", "--ros-args", "--params-file", str(PARAMS),
             "-r", ["__ns:=/", LaunchConfiguration("namespace")],
             "-p", ["bundle:=", LaunchConfiguration("bundle")],
             "-p", ["backend:=", LaunchConfiguration("backend")],
             "-p", ["futures:=", LaunchConfiguration("futures")]],
        output="screen",
        sigterm_timeout="10",  # after Ctrl-C the node stops its generation at the next step and exits 0
    )
    declared = [DeclareLaunchArgument(name, default_value=value) for name, value in args.items()]
    return LaunchDescription([*declared, node])
