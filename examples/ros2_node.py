"""A ROS 2 node skeleton: sensor_msgs/Image in, a mono8 class-id mask out. An example only.

    ros2 run ... (or) python examples/ros2_node.py --ros-args -p artifacts:=/path/to/artifact
    python examples/ros2_node.py --artifacts artifacts/segformer-b0 --video clip.mp4   # without ROS

It follows rclpy conventions: parameters for the artifact and topics, a sensor-data QoS
(best effort, depth 1: a segmenter should see the newest image, not a backlog), and the
output stamped with the input's header so downstream nodes can synchronise. It converts
`rgb8`/`bgr8` messages with numpy instead of cv_bridge, so it needs no OpenCV.
Where rclpy is not installed (it comes with a ROS 2 distribution, not from PyPI),
`--video` replays a file through the same callback with stand-in messages, which is
how it is checked here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segexport.runtime import Segmenter

ENCODINGS = {"rgb8": "rgb", "bgr8": "bgr"}


def image_to_array(msg: Any) -> tuple[np.ndarray, str]:
    """A sensor_msgs/Image (rgb8/bgr8) as an [H, W, 3] view and its colour order."""
    if msg.encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding {msg.encoding!r}; publish rgb8 or bgr8")
    rows = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    return rows[:, : msg.width * 3].reshape(msg.height, msg.width, 3), ENCODINGS[msg.encoding]


def fill_mask(out: Any, mask: np.ndarray, header: Any) -> Any:
    """Fill a sensor_msgs/Image with a mono8 class-id mask stamped like the input."""
    out.header = header
    out.height, out.width = mask.shape
    out.encoding = "mono8"
    out.is_bigendian = 0
    out.step = mask.shape[1]
    out.data = np.ascontiguousarray(mask, dtype=np.uint8).tobytes()
    return out


class MaskPublisher:
    """The node's work, independent of rclpy: one image message in, one mask message out."""

    def __init__(self, segmenter: Segmenter, make_message: Any, publish: Any) -> None:
        self.segmenter, self.make_message, self.publish = segmenter, make_message, publish

    def on_image(self, msg: Any) -> None:
        image, color = image_to_array(msg)
        mask = self.segmenter(image, color=color)
        self.publish(fill_mask(self.make_message(), mask, msg.header))


def run_ros() -> None:
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    class SegmentationNode(Node):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__("segexport_segmenter")
            artifacts = self.declare_parameter("artifacts", "artifacts/segformer-b0").value
            image_topic = self.declare_parameter("image_topic", "image_raw").value
            mask_topic = self.declare_parameter("mask_topic", "segmentation/mask").value
            segmenter = Segmenter.load(artifacts)
            self.get_logger().info(segmenter.describe())
            publisher = self.create_publisher(Image, mask_topic, 1)
            self.worker = MaskPublisher(segmenter, Image, publisher.publish)
            self.create_subscription(Image, image_topic, self.worker.on_image, qos_profile_sensor_data)

    rclpy.init()
    node = SegmentationNode()
    try:
        rclpy.spin(node)
    finally:
        node.destroy_node()
        rclpy.shutdown()


@dataclass
class StandInImage:
    """Just the sensor_msgs/Image fields the node reads and writes."""

    header: Any = None
    height: int = 0
    width: int = 0
    encoding: str = ""
    is_bigendian: int = 0
    step: int = 0
    data: bytes = b""


def replay(artifacts: str, video: str) -> None:
    """Feed a video through the node's callback, without ROS."""
    from segexport.runtime.media import open_video

    published: list[StandInImage] = []
    worker = MaskPublisher(Segmenter.load(artifacts), StandInImage, published.append)
    source = open_video(Path(video))
    for number, frame in enumerate(source.frames):
        encoding = "rgb8" if source.color == "rgb" else "bgr8"
        height, width = frame.shape[:2]
        msg = StandInImage({"stamp": number}, height, width, encoding, 0, width * 3, frame.tobytes())
        worker.on_image(msg)
    last = published[-1]
    print(f"published {len(published)} masks of {last.width}x{last.height} ({last.encoding})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifacts", default="artifacts/segformer-b0")
    parser.add_argument("--video", help="replay a video file through the callback instead of ROS")
    args, _ = parser.parse_known_args()  # leave --ros-args to rclpy
    if args.video:
        replay(args.artifacts, args.video)
    else:
        run_ros()


if __name__ == "__main__":
    main()
