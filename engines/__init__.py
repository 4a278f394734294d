"""The FOMM model and its backends. Importing the package first turns third-party telemetry off (engines/telemetry)."""
from .telemetry import disable_telemetry

disable_telemetry()
