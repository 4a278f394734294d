"""Face lost, avatar calm: when the webcam shows no face for more than a moment, the avatar glides to its rest pose.

Without a face (the user stands up, turns away, covers the camera) the crop shows a shoulder, a wall or a hand,
and the keypoint detector still returns ten points for it: the avatar would twist into whatever they describe.
The glide takes over from the detector's own verdict on whether a face is there (the webcam crop's face detector):

    driven ---(no face for LOST_AFTER_S)---> leaving ---(GLIDE_S)---> resting
       ^                                        |                        |
       +-------(GLIDE_S)------- returning <-----+----(a face again)------+

Every transition starts from the keypoints last sent, so neither losing nor finding the face is a jump: leaving
eases from there to the rest pose (the avatar's own keypoints: it shows its photo as it is), returning eases from
there to the live keypoints (which keep moving meanwhile). A face missing for less than LOST_AFTER_S changes
nothing: the face detector misses single frames (a turn of the head, motion blur) and the avatar must not freeze
for those. Times come from the caller's clock (wall time live, the media clock offline).
"""
from __future__ import annotations

from engines.keypoints import Keypoints

LOST_AFTER_S = 0.4   # no face for this long: the face is gone, not missed by the detector for a frame or two
GLIDE_S = 0.5        # how long the avatar takes to settle at rest, and to come back


def _ease(s: float) -> float:
    """0..1 -> 0..1 with zero slope at both ends (the motion starts and stops softly: no jerk)."""
    s = min(max(s, 0.0), 1.0)
    return s * s * (3.0 - 2.0 * s)


def _blend(a: Keypoints, b: Keypoints, s: float) -> Keypoints:
    """(1 - s) a + s b, values and jacobians alike (both lie near each other and near the avatar's own)."""
    b = b.to(device=a.value.device, dtype=a.value.dtype)
    return Keypoints(a.value + s * (b.value - a.value), a.jacobian + s * (b.jacobian - a.jacobian))


class FaceLossGlide:
    """Per frame: `__call__(kp, rest, face, t)` -> the keypoints to render. `face` is True/False when the face
    detector ran on this frame or earlier (its latest verdict), None when nothing looks for faces (tracking off):
    then the keypoints pass through."""

    def __init__(self, lost_after: float = LOST_AFTER_S, glide: float = GLIDE_S):
        if lost_after < 0 or glide <= 0:
            raise ValueError("need lost_after >= 0 and glide > 0")
        self.lost_after, self.glide = float(lost_after), float(glide)
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new avatar: its rest pose is another one)."""
        self.state = "driven"
        self._missing_since: float | None = None
        self._start: Keypoints | None = None
        self._start_t = 0.0
        self._last: Keypoints | None = None

    @property
    def face_lost(self) -> bool:
        """The avatar is at rest or on its way there because the face is gone (the status line says so)."""
        return self.state in ("leaving", "resting")

    @property
    def returning(self) -> bool:
        return self.state == "returning"

    def __call__(self, kp: Keypoints, rest: Keypoints, face: bool | None, t: float) -> Keypoints:
        if face is None or face:
            self._missing_since = None
        elif self._missing_since is None:
            self._missing_since = t
        gone = self._missing_since is not None and t - self._missing_since >= self.lost_after
        if gone and self.state in ("driven", "returning"):
            self._begin("leaving", t)
        elif not gone and self.state in ("leaving", "resting"):
            self._begin("returning", t)
        if self.state == "driven":
            out = kp
        elif self.state == "resting":
            out = rest
        else:
            s = _ease((t - self._start_t) / self.glide)
            target = rest if self.state == "leaving" else kp
            out = _blend(self._start, target, s)
            if s >= 1.0:
                self.state = "resting" if self.state == "leaving" else "driven"
        self._last = out
        return out

    def _begin(self, state: str, t: float) -> None:
        self.state, self._start_t = state, t
        # from what was last shown; nothing shown yet (the face was never there): from where the glide goes
        self._start = self._last
        if self._start is None:
            self.state = "resting" if state == "leaving" else "driven"
