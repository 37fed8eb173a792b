"""Reeds-Shepp paths: every candidate word between two poses, sorted by length.

Written from Reeds & Shepp, "Optimal paths for a car that goes both forwards and backwards" (Pacific J.
Math. 145(2), 1990), formulas 8.1-8.11. A path is a sequence of at most five segments, each a left arc
(``L``), right arc (``R``) or straight line (``S``) with a signed length: positive drives forward,
negative in reverse. Lengths are computed for a unit turning radius after moving the goal into the start
frame; :func:`reeds_shepp_paths` scales them back to metres.

The paper's nine base formulas (CSC x 2, CCC, CCCC x 2, CCSC x 2, CCSCC) cover all 48 words through
three symmetries of the normalised goal (x, y, phi):
- time flip (x, y, phi) -> (-x, y, -phi): every segment length changes sign;
- reflection (x, y, phi) -> (x, -y, -phi): L and R swap;
- backwards (x, y, phi) -> (x cos phi + y sin phi, x sin phi - y cos phi, phi): the segment order
  reverses (needed by the asymmetric CCC and CCSC families).

HOPE's planner needs all these candidates, not only the shortest: it tries them shortest first until one
is collision-free. That is why this module returns the full sorted list (``rsplan`` returns only the
optimum; it is a test-only oracle here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_TWO_PI = 2.0 * math.pi
_HALF_PI = 0.5 * math.pi
_TOL = 1e-10  # slack on the sign conditions: boundary cases (a zero-length segment) stay valid


@dataclass(frozen=True)
class RSPath:
    """One Reeds-Shepp path.

    kinds: segment letters, e.g. ("L", "S", "R").
    lengths: signed segment lengths in metres (negative = reverse), same order as ``kinds``.
    radius: turning radius [m] the arcs are drawn with.
    """

    kinds: tuple[str, ...]
    lengths: tuple[float, ...]
    radius: float

    @property
    def length(self) -> float:
        """Total driven distance [m] (forward plus reverse)."""
        return float(sum(abs(v) for v in self.lengths))

    @property
    def word(self) -> str:
        """The path word with direction signs, e.g. ``L+S+R-``."""
        return "".join(f"{k}{'+' if v >= 0 else '-'}" for k, v in zip(self.kinds, self.lengths, strict=True))

    def end_pose(self, start: np.ndarray) -> np.ndarray:
        """Exact pose (3,) (x, y, yaw) reached from ``start`` (3,)."""
        x, y, th = (float(v) for v in start)
        for kind, length in zip(self.kinds, self.lengths, strict=True):
            x, y, th = _advance(x, y, th, kind, length, self.radius)
        return np.array([x, y, th])

    def sample(self, start: np.ndarray, step: float = 0.1) -> np.ndarray:
        """Poses (K, 3) along the path from ``start`` (excluded) to the end (included), ``step`` m apart
        within each segment (each segment's end is always included)."""
        if step <= 0:
            raise ValueError(f"step must be > 0 m; got {step!r}")
        x, y, th = (float(v) for v in start)
        out: list[tuple[float, float, float]] = []
        for kind, length in zip(self.kinds, self.lengths, strict=True):
            n = max(1, math.ceil(abs(length) / step - 1e-9))
            for i in range(1, n + 1):
                out.append(_advance(x, y, th, kind, length * i / n, self.radius))
            x, y, th = out[-1]
        return np.array(out).reshape(-1, 3)


def _advance(
    x: float, y: float, th: float, kind: str, length: float, radius: float
) -> tuple[float, float, float]:
    """Pose after driving ``length`` m (signed) of segment ``kind`` with turning radius ``radius``."""
    if kind == "S":
        return x + length * math.cos(th), y + length * math.sin(th), th
    a = length / radius
    if kind == "L":  # counter-clockwise about the centre on the car's left
        return (
            x + radius * (math.sin(th + a) - math.sin(th)),
            y - radius * (math.cos(th + a) - math.cos(th)),
            th + a,
        )
    return (
        x + radius * (math.sin(th) - math.sin(th - a)),
        y + radius * (math.cos(th - a) - math.cos(th)),
        th - a,
    )


def _mod2pi(a: float) -> float:
    """Angle in (-pi, pi]."""
    a = math.fmod(a, _TWO_PI)
    if a <= -math.pi:
        a += _TWO_PI
    elif a > math.pi:
        a -= _TWO_PI
    return a


def _polar(x: float, y: float) -> tuple[float, float]:
    return math.hypot(x, y), math.atan2(y, x)


def _tau_omega(u: float, v: float, xi: float, eta: float, phi: float) -> tuple[float, float]:
    """The first and last arc of the CCCC words (the paper's tau and omega)."""
    delta = _mod2pi(u - v)
    a = math.sin(u) - math.sin(delta)
    b = math.cos(u) - math.cos(delta) - 1.0
    t1 = math.atan2(eta * a - xi * b, xi * a + eta * b)
    t2 = 2.0 * (math.cos(delta) - math.cos(v) - math.cos(u)) + 3.0
    tau = _mod2pi(t1 + math.pi) if t2 < 0 else _mod2pi(t1)
    return tau, _mod2pi(tau - u + v - phi)


# ---------------------------------------------------------------------------------------------------
# The base formulas, unit radius. Each returns segment lengths for its word or None.


def _lp_sp_lp(x: float, y: float, phi: float) -> tuple[float, ...] | None:  # 8.1
    u, t = _polar(x - math.sin(phi), y - 1.0 + math.cos(phi))
    if t >= -_TOL:
        v = _mod2pi(phi - t)
        if v >= -_TOL:
            return t, u, v
    return None


def _lp_sp_rp(x: float, y: float, phi: float) -> tuple[float, ...] | None:  # 8.2
    u1, t1 = _polar(x + math.sin(phi), y - 1.0 - math.cos(phi))
    if u1 * u1 >= 4.0:
        u = math.sqrt(u1 * u1 - 4.0)
        t = _mod2pi(t1 + math.atan2(2.0, u))
        v = _mod2pi(t - phi)
        if t >= -_TOL and v >= -_TOL:
            return t, u, v
    return None


def _lp_rm_l(x: float, y: float, phi: float) -> tuple[float, ...] | None:  # 8.3 (and 8.4 backwards)
    xi, eta = x - math.sin(phi), y - 1.0 + math.cos(phi)
    u1, theta = _polar(xi, eta)
    if u1 <= 4.0:
        u = -2.0 * math.asin(u1 / 4.0)
        t = _mod2pi(theta + 0.5 * u + math.pi)
        v = _mod2pi(phi - t + u)
        if t >= -_TOL and u <= _TOL:
            return t, u, v
    return None


def _lp_rup_lum_rm(x: float, y: float, phi: float) -> tuple[float, ...] | None:  # 8.7
    xi, eta = x + math.sin(phi), y - 1.0 - math.cos(phi)
    rho = 0.25 * (2.0 + math.hypot(xi, eta))
    if rho <= 1.0:
        u = math.acos(rho)
        t, v = _tau_omega(u, -u, xi, eta, phi)
        if t >= -_TOL and v <= _TOL:
            return t, u, -u, v
    return None


def _lp_rum_lum_rp(x: float, y: float, phi: float) -> tuple[float, ...] | None:  # 8.8
    xi, eta = x + math.sin(phi), y - 1.0 - math.cos(phi)
    rho = (20.0 - xi * xi - eta * eta) / 16.0
    if 0.0 <= rho <= 1.0:
        u = -math.acos(rho)
        if u >= -_HALF_PI:
            t, v = _tau_omega(u, u, xi, eta, phi)
            if t >= -_TOL and v >= -_TOL:
                return t, u, u, v
    return None


def _lp_rm_sm_lm(x: float, y: float, phi: float) -> tuple[float, ...] | None:  # 8.9
    xi, eta = x - math.sin(phi), y - 1.0 + math.cos(phi)
    rho, theta = _polar(xi, eta)
    if rho >= 2.0:
        r = math.sqrt(rho * rho - 4.0)
        u = 2.0 - r
        t = _mod2pi(theta + math.atan2(r, -2.0))
        v = _mod2pi(phi - _HALF_PI - t)
        if t >= -_TOL and u <= _TOL and v <= _TOL:
            return t, -_HALF_PI, u, v
    return None


def _lp_rm_sm_rm(x: float, y: float, phi: float) -> tuple[float, ...] | None:  # 8.10
    xi, eta = x + math.sin(phi), y - 1.0 - math.cos(phi)
    rho, theta = _polar(-eta, xi)
    if rho >= 2.0:
        t = theta
        u = 2.0 - rho
        v = _mod2pi(t + _HALF_PI - phi)
        if t >= -_TOL and u <= _TOL and v <= _TOL:
            return t, -_HALF_PI, u, v
    return None


def _lp_rm_s_lm_rp(x: float, y: float, phi: float) -> tuple[float, ...] | None:  # 8.11
    xi, eta = x + math.sin(phi), y - 1.0 - math.cos(phi)
    rho, _ = _polar(xi, eta)
    if rho >= 2.0:
        u = 4.0 - math.sqrt(rho * rho - 4.0)
        if u <= _TOL:
            t = _mod2pi(math.atan2((4.0 - u) * xi - 2.0 * eta, -2.0 * xi + (u - 4.0) * eta))
            v = _mod2pi(t - phi)
            if t >= -_TOL and v >= -_TOL:
                return t, -_HALF_PI, u, -_HALF_PI, v
    return None


# (formula, segment kinds, whether the backwards symmetry adds new words)
_FAMILIES = (
    (_lp_sp_lp, ("L", "S", "L"), False),
    (_lp_sp_rp, ("L", "S", "R"), False),
    (_lp_rm_l, ("L", "R", "L"), True),
    (_lp_rup_lum_rm, ("L", "R", "L", "R"), False),
    (_lp_rum_lum_rp, ("L", "R", "L", "R"), False),
    (_lp_rm_sm_lm, ("L", "R", "S", "L"), True),
    (_lp_rm_sm_rm, ("L", "R", "S", "R"), True),
    (_lp_rm_s_lm_rp, ("L", "R", "S", "L", "R"), False),
)
_SWAP = {"L": "R", "R": "L", "S": "S"}


def _unit_candidates(x: float, y: float, phi: float) -> list[tuple[tuple[str, ...], tuple[float, ...]]]:
    """Every valid word for the normalised goal (x, y, phi), unit radius: (kinds, signed lengths)."""
    out: list[tuple[tuple[str, ...], tuple[float, ...]]] = []
    cos_p, sin_p = math.cos(phi), math.sin(phi)
    xb, yb = x * cos_p + y * sin_p, x * sin_p - y * cos_p
    for formula, kinds, has_backwards in _FAMILIES:
        variants = [(x, y, phi, False)]
        if has_backwards:
            variants.append((xb, yb, phi, True))
        for gx, gy, gphi, backwards in variants:
            for flip in (False, True):
                for reflect in (False, True):
                    px = -gx if flip else gx
                    py = -gy if reflect else gy
                    pphi = -gphi if flip != reflect else gphi
                    lengths = formula(px, py, pphi)
                    if lengths is None:
                        continue
                    k = tuple(_SWAP[c] for c in kinds) if reflect else kinds
                    s = tuple(-v for v in lengths) if flip else lengths
                    if backwards:
                        k, s = k[::-1], s[::-1]
                    out.append((k, s))
    return out


def reeds_shepp_paths(start: np.ndarray, goal: np.ndarray, radius: float) -> list[RSPath]:
    """All Reeds-Shepp candidate paths from pose ``start`` (3,) to ``goal`` (3,), shortest first.

    Poses are (x [m], y [m], yaw [rad]); ``radius`` is the minimum turning radius [m]. Zero-length
    segments are dropped; duplicate words (the same segments found by two symmetries) appear once.
    """
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a finite number > 0 m; got {radius!r}")
    s = np.asarray(start, dtype=np.float64).reshape(-1)
    g = np.asarray(goal, dtype=np.float64).reshape(-1)
    if s.shape != (3,) or g.shape != (3,) or not (np.all(np.isfinite(s)) and np.all(np.isfinite(g))):
        raise ValueError(f"start and goal must be 3 finite numbers (x, y, yaw); got {start!r}, {goal!r}")
    dx, dy = g[0] - s[0], g[1] - s[1]
    c, si = math.cos(s[2]), math.sin(s[2])
    x = (c * dx + si * dy) / radius
    y = (-si * dx + c * dy) / radius
    phi = _mod2pi(g[2] - s[2])
    seen: set[tuple] = set()
    paths: list[RSPath] = []
    for kinds, lengths in _unit_candidates(x, y, phi):
        keep = [(k, v * radius) for k, v in zip(kinds, lengths, strict=True) if abs(v) > 1e-9]
        if not keep:
            keep = [("S", 0.0)]
        key = tuple((k, round(v, 9)) for k, v in keep)
        if key in seen:
            continue
        seen.add(key)
        paths.append(RSPath(tuple(k for k, _ in keep), tuple(v for _, v in keep), float(radius)))
    paths.sort(key=lambda p: p.length)
    return paths


def shortest_path(start: np.ndarray, goal: np.ndarray, radius: float) -> RSPath:
    """The optimal Reeds-Shepp path (one always exists)."""
    return reeds_shepp_paths(start, goal, radius)[0]
