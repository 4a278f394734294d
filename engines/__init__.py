"""The FOMM model and its backends. Importing the package first turns third-party telemetry off (engines/telemetry)
and gives OpenCV's image decoders our pixel limit as their own hard cap (engines/image_header), both before any
module of ours imports openvino or cv2."""
from .image_header import cap_decoder_pixels
from .telemetry import disable_telemetry

disable_telemetry()
cap_decoder_pixels()
