"""scale_field_ros: metric depth from relative depth and sparse metric anchors via image-adaptive scale fields."""

__version__ = "0.1.0"
