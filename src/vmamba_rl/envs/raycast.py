"""Analytic depth rendering of a walled arena with vertical obstacles, seen from a level pinhole camera.

The world (metres, the task's NED horizontal frame: x north, y east; ``z`` here is *altitude*, up):

- ``cylinders`` (Nc, 5): ``[cx, cy, radius, z_bottom, z_top]``, vertical axis.
- ``boxes`` (Nb, 7): ``[cx, cy, half_x, half_y, yaw, z_bottom, z_top]``, rotated by ``yaw`` about the
  vertical axis (yaw turns x toward y, like the drone's heading).
- walls: the square ``|x|, |y| <= arena_half`` from floor to ceiling (the camera is inside);
  floor at altitude 0, ceiling at ``ceiling`` (``inf`` = none).

The camera looks along the heading ``(cos yaw, sin yaw)``, level (no pitch or roll: the gimbal is
assumed stabilised). Pixel ``(i, j)`` has the camera-frame ray ``(1, u_j, v_i)`` (forward, right, down),
``u_j = (2 (j + 0.5) / W - 1) tan(hfov / 2)`` and ``v_i`` likewise with the vertical FOV of square pixels.
The image holds *perspective* depth: the distance along the ray, ``t * sqrt(1 + u^2 + v^2)`` where ``t``
is the planar (forward) depth, clipped to ``max_range``. A ray starting inside an obstacle reads 0.

Three renderers share this contract:

- :func:`render_depth` with ``backend="numba"`` (default, fastest) or ``"numpy"``: per image column,
  intersect the horizontal ray with every footprint (circle / rotated rectangle) once, giving a planar
  depth interval per obstacle; then per row, the ray's altitude ``z - v t`` is linear in ``t``, so each
  obstacle's vertical extent is another interval, and the hit is the start of their overlap.
- :func:`render_depth_reference`: a per-pixel brute force that intersects the 3D ray with every surface
  (side walls, caps, slabs, planes) separately; slow, the oracle for the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np

CYLINDER_COLUMNS = ("cx", "cy", "radius", "z_bottom", "z_top")
BOX_COLUMNS = ("cx", "cy", "half_x", "half_y", "yaw", "z_bottom", "z_top")


@dataclass
class Scene:
    """Static geometry of one arena (see the module docstring for the column layouts; metres, rad)."""

    cylinders: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))
    arena_half: float = math.inf
    ceiling: float = math.inf

    def __post_init__(self) -> None:
        # Contiguous float64 so the compiled kernels take them without copies.
        self.cylinders = np.ascontiguousarray(np.asarray(self.cylinders, dtype=np.float64).reshape(-1, 5))
        self.boxes = np.ascontiguousarray(np.asarray(self.boxes, dtype=np.float64).reshape(-1, 7))
        if self.arena_half <= 0:
            raise ValueError(f"arena_half must be > 0, got {self.arena_half}")
        if self.ceiling <= 0:
            raise ValueError(f"ceiling must be > 0 (altitude of the ceiling), got {self.ceiling}")

    @property
    def num_obstacles(self) -> int:
        """Cylinders plus boxes."""
        return len(self.cylinders) + len(self.boxes)


class PinholeCamera:
    """Forward-looking pinhole camera: image size, horizontal FOV and max range.

    Precomputes the normalised ray coordinates ``u`` (W,), ``v`` (H,) and the planar-to-perspective
    factor ``ray_scale`` (H, W) = ``sqrt(1 + u^2 + v^2)``.
    """

    def __init__(
        self, height: int = 64, width: int = 64, hfov_deg: float = 90.0, max_range: float = 10.0
    ) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"image size must be >= 1, got {height}x{width}")
        if not 0 < hfov_deg < 180:
            raise ValueError(f"hfov_deg must be in (0, 180), got {hfov_deg}")
        if max_range <= 0:
            raise ValueError(f"max_range must be > 0, got {max_range}")
        self.height, self.width = int(height), int(width)
        self.hfov_deg, self.max_range = float(hfov_deg), float(max_range)
        tan_h = math.tan(math.radians(hfov_deg) / 2)
        tan_v = tan_h * self.height / self.width  # square pixels
        self.u = ((2.0 * (np.arange(self.width) + 0.5) / self.width - 1.0) * tan_h).astype(np.float64)
        self.v = ((2.0 * (np.arange(self.height) + 0.5) / self.height - 1.0) * tan_v).astype(np.float64)
        self.ray_scale = np.sqrt(1.0 + self.u[None, :] ** 2 + self.v[:, None] ** 2)


# ------------------------------------------------------------------------------------- column intervals


@numba.njit(cache=True, inline="always")
def _footprint_interval_cylinder(px, py, dx, dy, cx, cy, r):
    """Planar-depth interval (t_in, t_out) of the ray p + t d inside a circle; t_in > t_out: miss."""
    ox = px - cx
    oy = py - cy
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy  # half of the usual b
    c = ox * ox + oy * oy - r * r
    disc = b * b - a * c
    if disc < 0.0:
        return 1.0, -1.0
    s = math.sqrt(disc)
    return (-b - s) / a, (-b + s) / a


@numba.njit(cache=True, inline="always")
def _footprint_interval_box(px, py, dx, dy, cx, cy, hx, hy, yaw):
    """Planar-depth interval where the horizontal ray is inside a rotated rectangle (2D slab method)."""
    cs = math.cos(yaw)
    sn = math.sin(yaw)
    # Into the box frame (rotate by -yaw).
    ox = (px - cx) * cs + (py - cy) * sn
    oy = -(px - cx) * sn + (py - cy) * cs
    ex = dx * cs + dy * sn
    ey = -dx * sn + dy * cs
    t0 = -math.inf
    t1 = math.inf
    if ex != 0.0:
        ta = (-hx - ox) / ex
        tb = (hx - ox) / ex
        t0 = max(t0, min(ta, tb))
        t1 = min(t1, max(ta, tb))
    elif abs(ox) > hx:
        return 1.0, -1.0
    if ey != 0.0:
        ta = (-hy - oy) / ey
        tb = (hy - oy) / ey
        t0 = max(t0, min(ta, tb))
        t1 = min(t1, max(ta, tb))
    elif abs(oy) > hy:
        return 1.0, -1.0
    return t0, t1


@numba.njit(cache=True)
def _render_numba(px, py, pz, yaw, u, v, ray_scale, cyl, box, arena_half, ceiling, max_range, out):
    """Fill ``out`` (H, W) float32 with perspective depth (see module docstring)."""
    height = v.shape[0]
    width = u.shape[0]
    n_cyl = cyl.shape[0]
    n_box = box.shape[0]
    n_obs = n_cyl + n_box
    cy_ = math.cos(yaw)
    sy_ = math.sin(yaw)
    t_in = np.empty(n_obs)
    t_out = np.empty(n_obs)
    z_lo = np.empty(n_obs)
    z_hi = np.empty(n_obs)
    for j in range(width):
        # Horizontal ray direction per unit of planar depth: forward + u * right, right = (-sin, cos).
        dx = cy_ - u[j] * sy_
        dy = sy_ + u[j] * cy_
        # Planar depth where the ray leaves the walled square (the camera is inside it).
        t_wall = math.inf
        if dx > 0.0:
            t_wall = min(t_wall, (arena_half - px) / dx)
        elif dx < 0.0:
            t_wall = min(t_wall, (-arena_half - px) / dx)
        if dy > 0.0:
            t_wall = min(t_wall, (arena_half - py) / dy)
        elif dy < 0.0:
            t_wall = min(t_wall, (-arena_half - py) / dy)
        # Beyond planar depth max_range every pixel of the column is clipped anyway (perspective >= planar).
        t_cap = min(t_wall, max_range)
        m = 0
        for k in range(n_obs):
            if k < n_cyl:
                a, b = _footprint_interval_cylinder(px, py, dx, dy, cyl[k, 0], cyl[k, 1], cyl[k, 2])
                lo_z = cyl[k, 3]
                hi_z = cyl[k, 4]
            else:
                q = k - n_cyl
                a, b = _footprint_interval_box(
                    px, py, dx, dy, box[q, 0], box[q, 1], box[q, 2], box[q, 3], box[q, 4]
                )
                lo_z = box[q, 5]
                hi_z = box[q, 6]
            if a > b or b < 0.0 or a > t_cap:
                continue
            t_in[m] = max(a, 0.0)
            t_out[m] = b
            z_lo[m] = lo_z
            z_hi[m] = hi_z
            m += 1
        for i in range(height):
            vi = v[i]
            best = t_cap
            # Floor (altitude 0) when looking down, ceiling when looking up.
            if vi > 0.0:
                best = min(best, pz / vi)
            elif vi < 0.0:
                best = min(best, (pz - ceiling) / vi)
            for k in range(m):
                if t_in[k] >= best:
                    continue
                # Altitude along the ray is pz - vi * t; the obstacle's slab z_lo..z_hi as a t-interval.
                if vi > 0.0:
                    a = (pz - z_hi[k]) / vi
                    b = (pz - z_lo[k]) / vi
                elif vi < 0.0:
                    a = (pz - z_lo[k]) / vi
                    b = (pz - z_hi[k]) / vi
                elif z_lo[k] <= pz <= z_hi[k]:
                    a = -math.inf
                    b = math.inf
                else:
                    continue
                lo = max(t_in[k], a)
                if lo <= min(t_out[k], b) and lo < best:
                    best = lo
            out[i, j] = min(best * ray_scale[i, j], max_range)
    return out


def _render_numpy(
    scene: Scene, cam: PinholeCamera, px: float, py: float, pz: float, yaw: float
) -> np.ndarray:
    """Same algorithm as the numba kernel, vectorised over (H, W, obstacles) with numpy."""
    u, v = cam.u, cam.v
    dx = math.cos(yaw) - u * math.sin(yaw)  # (W,)
    dy = math.sin(yaw) + u * math.cos(yaw)
    with np.errstate(divide="ignore", invalid="ignore"):
        tx = np.where(
            dx > 0, (scene.arena_half - px) / dx, np.where(dx < 0, (-scene.arena_half - px) / dx, np.inf)
        )
        ty = np.where(
            dy > 0, (scene.arena_half - py) / dy, np.where(dy < 0, (-scene.arena_half - py) / dy, np.inf)
        )
        t_cap = np.minimum(np.minimum(tx, ty), cam.max_range)  # (W,)
        ins, outs, zlo, zhi = [], [], [], []
        cyl = scene.cylinders
        if len(cyl):
            ox = px - cyl[:, 0]
            oy = py - cyl[:, 1]
            a = (dx * dx + dy * dy)[:, None]
            b = dx[:, None] * ox + dy[:, None] * oy
            c = ox * ox + oy * oy - cyl[:, 2] ** 2
            disc = b * b - a * c
            s = np.sqrt(np.where(disc >= 0, disc, np.nan))
            ins.append((-b - s) / a)
            outs.append((-b + s) / a)
            zlo.append(cyl[:, 3])
            zhi.append(cyl[:, 4])
        bx = scene.boxes
        if len(bx):
            cs, sn = np.cos(bx[:, 4]), np.sin(bx[:, 4])
            ox = (px - bx[:, 0]) * cs + (py - bx[:, 1]) * sn
            oy = -(px - bx[:, 0]) * sn + (py - bx[:, 1]) * cs
            ex = dx[:, None] * cs + dy[:, None] * sn
            ey = -dx[:, None] * sn + dy[:, None] * cs
            t0 = np.full(ex.shape, -np.inf)
            t1 = np.full(ex.shape, np.inf)
            for o, e, h in ((ox, ex, bx[:, 2]), (oy, ey, bx[:, 3])):
                ta = (-h - o) / e
                tb = (h - o) / e
                par = e == 0
                inside = np.abs(o) <= h
                lo_t = np.where(par, np.where(inside, -np.inf, np.inf), np.minimum(ta, tb))
                hi_t = np.where(par, np.where(inside, np.inf, -np.inf), np.maximum(ta, tb))
                t0 = np.maximum(t0, lo_t)
                t1 = np.minimum(t1, hi_t)
            ins.append(t0)
            outs.append(t1)
            zlo.append(bx[:, 5])
            zhi.append(bx[:, 6])
        best = np.broadcast_to(t_cap[None, :], (cam.height, cam.width)).copy()
        vv = v[:, None]
        best = np.where(vv > 0, np.minimum(best, pz / vv), best)
        best = np.where(vv < 0, np.minimum(best, (pz - scene.ceiling) / vv), best)
        if ins:
            t_in = np.concatenate(ins, axis=1)  # (W, M)
            t_out = np.concatenate(outs, axis=1)
            lo_z = np.concatenate(zlo)
            hi_z = np.concatenate(zhi)
            valid = (t_in <= t_out) & (t_out >= 0)  # NaN (circle miss) compares False
            t_in = np.maximum(t_in, 0.0)
            v3 = v[:, None, None]  # (H, 1, 1)
            za = np.where(v3 > 0, (pz - hi_z) / v3, np.where(v3 < 0, (pz - lo_z) / v3, -np.inf))
            zb = np.where(v3 > 0, (pz - lo_z) / v3, np.where(v3 < 0, (pz - hi_z) / v3, np.inf))
            flat_miss = (v3 == 0) & ((pz < lo_z) | (pz > hi_z))
            lo = np.maximum(t_in[None], za)  # (H, W, M)
            hit = valid[None] & (lo <= np.minimum(t_out[None], zb)) & ~flat_miss
            t_hit = np.where(hit, lo, np.inf).min(axis=2)
            best = np.minimum(best, t_hit)
    return np.minimum(best * cam.ray_scale, cam.max_range).astype(np.float32)


def render_depth(
    scene: Scene,
    camera: PinholeCamera,
    position: np.ndarray,
    yaw: float,
    backend: str = "numba",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Perspective depth image (H, W) float32 in metres, clipped to ``camera.max_range``.

    Args:
        position: (3,) camera ``[x, y, altitude]`` (m). yaw: heading (rad).
        backend: ``"numba"`` (compiled, fastest; see benchmarks/env.py) or ``"numpy"``.
        out: optional preallocated (H, W) float32 buffer (numba backend only).
    """
    px, py, pz = (float(c) for c in position)
    if backend == "numba":
        if out is None:
            out = np.empty((camera.height, camera.width), np.float32)
        return _render_numba(
            px,
            py,
            pz,
            float(yaw),
            camera.u,
            camera.v,
            camera.ray_scale,
            scene.cylinders,
            scene.boxes,
            float(scene.arena_half),
            float(scene.ceiling),
            camera.max_range,
            out,
        )
    if backend == "numpy":
        return _render_numpy(scene, camera, px, py, pz, float(yaw))
    raise ValueError(f"backend must be 'numba' or 'numpy', got {backend!r}")


# ------------------------------------------------------------------------------------------ reference


def _ray_cylinder_3d(o: np.ndarray, d: np.ndarray, c: np.ndarray) -> float:
    """Smallest t >= 0 where o + t d touches a solid finite vertical cylinder (side or caps); inf if none."""
    cx, cy, r, z0, z1 = c
    rel = o - np.array([cx, cy, 0.0])
    if rel[0] ** 2 + rel[1] ** 2 <= r * r and z0 <= o[2] <= z1:
        return 0.0  # starts inside
    best = math.inf
    a = d[0] ** 2 + d[1] ** 2
    if a > 0:
        b = 2 * (rel[0] * d[0] + rel[1] * d[1])
        cc = rel[0] ** 2 + rel[1] ** 2 - r * r
        disc = b * b - 4 * a * cc
        if disc >= 0:
            for t in ((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)):
                if t >= 0 and z0 <= o[2] + t * d[2] <= z1:
                    best = min(best, t)
    if d[2] != 0:
        for zc in (z0, z1):
            t = (zc - o[2]) / d[2]
            p = rel + t * d
            if t >= 0 and p[0] ** 2 + p[1] ** 2 <= r * r:
                best = min(best, t)
    return best


def _ray_box_3d(o: np.ndarray, d: np.ndarray, b: np.ndarray) -> float:
    """Smallest t >= 0 where o + t d is inside a solid rotated box (3D slab method); inf if none."""
    cx, cy, hx, hy, yaw, z0, z1 = b
    cs, sn = math.cos(yaw), math.sin(yaw)
    rot = np.array([[cs, sn, 0.0], [-sn, cs, 0.0], [0.0, 0.0, 1.0]])  # world -> box frame
    ol = rot @ (o - np.array([cx, cy, (z0 + z1) / 2]))
    dl = rot @ d
    half = np.array([hx, hy, (z1 - z0) / 2])
    t0, t1 = -math.inf, math.inf
    for ax in range(3):
        if dl[ax] == 0:
            if abs(ol[ax]) > half[ax]:
                return math.inf
            continue
        ta, tb = (-half[ax] - ol[ax]) / dl[ax], (half[ax] - ol[ax]) / dl[ax]
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
    if t0 > t1 or t1 < 0:
        return math.inf
    return max(t0, 0.0)


def render_depth_reference(
    scene: Scene, camera: PinholeCamera, position: np.ndarray, yaw: float
) -> np.ndarray:
    """Brute-force per-pixel ray casting (slow; the test oracle). Same contract as :func:`render_depth`."""
    o = np.asarray(position, dtype=np.float64)
    fwd = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([-math.sin(yaw), math.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])  # altitude axis points up
    out = np.empty((camera.height, camera.width), np.float32)
    for i, v in enumerate(camera.v):
        for j, u in enumerate(camera.u):
            d = fwd + u * right + v * down  # (1, u, v) in the camera frame
            best = math.inf
            # The four wall planes, the floor and the ceiling: nearest positive crossing.
            for ax, bound in (
                (0, scene.arena_half),
                (0, -scene.arena_half),
                (1, scene.arena_half),
                (1, -scene.arena_half),
                (2, 0.0),
                (2, scene.ceiling),
            ):
                if d[ax] != 0 and math.isfinite(bound):
                    t = (bound - o[ax]) / d[ax]
                    if t >= 0:
                        best = min(best, t)
            for c in scene.cylinders:
                best = min(best, _ray_cylinder_3d(o, d, c))
            for b in scene.boxes:
                best = min(best, _ray_box_3d(o, d, b))
            out[i, j] = min(best * float(np.linalg.norm(d)), camera.max_range)
    return out
