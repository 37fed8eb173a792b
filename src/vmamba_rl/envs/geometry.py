"""Planar geometry for the embedded environments: polygons, rays, clipping, rasterising.

Conventions (all functions):
- coordinates are float64 metres (or pixels for the rasteriser) in a right-handed x/y plane;
- a polygon is an array ``(P, 2)`` of vertices in order (either orientation unless stated);
- a batch of polygons is ``(M, P, 2)``; polygons with fewer vertices are padded by repeating their
  last vertex (:func:`pad_polygons`). A repeated vertex makes a zero-length edge, which every routine
  here skips, so padding never changes a result;
- angles are radians, counter-clockwise from +x.

Two layers: plain numpy functions for callers, and ``*_nb`` numba kernels (``cache=True``) used by the
per-step hot paths of the environments. :func:`ray_segment_distances` is the vectorised numpy twin of
:func:`ray_cast`, kept as a reference and for benchmarking the two against each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

_EPS = 1e-12


# ----------------------------------------------------------------------------------------------------
# construction and transforms


def oriented_rectangle(cx: float, cy: float, yaw: float, length: float, width: float) -> np.ndarray:
    """Corners of a rectangle centred at (cx, cy) whose length axis points along ``yaw``.

    Returns (4, 2) float64, counter-clockwise: rear-right, front-right, front-left, rear-left.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    hl, hw = 0.5 * length, 0.5 * width
    local = np.array([[-hl, -hw], [hl, -hw], [hl, hw], [-hl, hw]])
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + np.array([cx, cy])


def transform_points(points: np.ndarray, x: float, y: float, yaw: float, inverse: bool = False) -> np.ndarray:
    """Apply the rigid transform of a frame at (x, y, yaw) to points (..., 2).

    ``inverse=False`` maps frame coordinates to world coordinates; ``inverse=True`` maps world
    coordinates into the frame. Shape is preserved.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    pts = np.asarray(points, dtype=np.float64)
    if inverse:
        dx, dy = pts[..., 0] - x, pts[..., 1] - y
        return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=-1)
    return np.stack([c * pts[..., 0] - s * pts[..., 1] + x, s * pts[..., 0] + c * pts[..., 1] + y], axis=-1)


def pad_polygons(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Stack polygons of different vertex counts into (M, P_max, 2), padding by the last vertex."""
    if len(polygons) == 0:
        return np.zeros((0, 4, 2))
    p_max = max(len(p) for p in polygons)
    out = np.empty((len(polygons), p_max, 2))
    for i, p in enumerate(polygons):
        p = np.asarray(p, dtype=np.float64)
        out[i, : len(p)] = p
        out[i, len(p) :] = p[-1]
    return out


def polygon_edges(polygons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges of a batch of closed polygons (M, P, 2) as segment starts and ends, each (M * P, 2)."""
    polys = np.asarray(polygons, dtype=np.float64)
    if polys.ndim == 2:
        polys = polys[None]
    starts = polys.reshape(-1, 2)
    ends = np.roll(polys, -1, axis=1).reshape(-1, 2)
    return np.ascontiguousarray(starts), np.ascontiguousarray(ends)


# ----------------------------------------------------------------------------------------------------
# areas and containment


def signed_polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a simple polygon (P, 2): positive when counter-clockwise, in units^2."""
    p = np.asarray(poly, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def polygon_area(poly: np.ndarray) -> float:
    """Unsigned area of a simple polygon (P, 2), units^2 (0 for fewer than 3 vertices)."""
    if len(poly) < 3:
        return 0.0
    return abs(signed_polygon_area(poly))


def points_in_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule containment of points (N, 2) in any simple polygon (P, 2). Returns bool (N,).

    Points exactly on an edge may fall either way (the usual half-open crossing test).
    """
    pts = np.atleast_2d(np.asarray(points, dtype=np.float64))
    a = np.asarray(poly, dtype=np.float64)
    b = np.roll(a, -1, axis=0)
    px, py = pts[:, 0:1], pts[:, 1:2]  # (N, 1) against edges (P,)
    # An edge counts when it straddles the horizontal line through the point (half-open in y) and
    # the crossing lies to the right of the point.
    straddle = (a[:, 1] > py) != (b[:, 1] > py)
    dy = b[:, 1] - a[:, 1]
    safe_dy = np.where(dy == 0.0, 1.0, dy)
    x_cross = a[:, 0] + (py - a[:, 1]) * (b[:, 0] - a[:, 0]) / safe_dy
    crossings = np.count_nonzero(straddle & (px < x_cross), axis=1)
    return crossings % 2 == 1


# ----------------------------------------------------------------------------------------------------
# rays


def ray_segment_distances(
    origin: np.ndarray, angles: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_range: float
) -> np.ndarray:
    """Distance along each ray to the nearest segment, vectorised numpy (reference for :func:`ray_cast`).

    origin (2,); angles (R,) radians; starts, ends (S, 2). Returns (R,) float64 in [0, max_range]:
    ``max_range`` where a ray hits nothing closer. Memory is O(R * S).
    """
    d = np.stack([np.cos(angles), np.sin(angles)], axis=-1)[:, None, :]  # (R, 1, 2)
    e = (ends - starts)[None, :, :]  # (1, S, 2)
    w = (starts - np.asarray(origin, dtype=np.float64))[None, :, :]  # (1, S, 2)
    denom = d[..., 0] * e[..., 1] - d[..., 1] * e[..., 0]  # (R, S) cross(d, e)
    parallel = np.abs(denom) < _EPS
    denom = np.where(parallel, 1.0, denom)
    t = (w[..., 0] * e[..., 1] - w[..., 1] * e[..., 0]) / denom  # distance along the ray
    u = (w[..., 0] * d[..., 1] - w[..., 1] * d[..., 0]) / denom  # position along the segment
    hit = ~parallel & (t >= 0.0) & (u >= 0.0) & (u <= 1.0)
    t = np.where(hit, t, max_range)
    if t.shape[1] == 0:
        return np.full(len(angles), float(max_range))
    return np.minimum(t.min(axis=1), max_range)


@njit(cache=True)
def ray_cast_nb(
    ox: float,
    oy: float,
    cos_a: np.ndarray,
    sin_a: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    max_range: float,
    out: np.ndarray,
) -> None:
    """Kernel of :func:`ray_cast`: writes the nearest hit distance of each ray into ``out`` (R,)."""
    for r in range(cos_a.shape[0]):
        dx = cos_a[r]
        dy = sin_a[r]
        best = max_range
        for s in range(starts.shape[0]):
            ax = starts[s, 0]
            ay = starts[s, 1]
            ex = ends[s, 0] - ax
            ey = ends[s, 1] - ay
            denom = dx * ey - dy * ex
            if abs(denom) < 1e-12:
                continue  # parallel or zero-length (padding) edge
            wx = ax - ox
            wy = ay - oy
            t = (wx * ey - wy * ex) / denom
            if t < 0.0 or t >= best:
                continue
            u = (wx * dy - wy * dx) / denom
            if 0.0 <= u <= 1.0:
                best = t
        out[r] = best


def ray_cast(
    origin: np.ndarray, angles: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_range: float
) -> np.ndarray:
    """Distance along each ray to the nearest segment (numba kernel).

    Same contract as :func:`ray_segment_distances`.
    """
    out = np.empty(len(angles))
    ray_cast_nb(
        float(origin[0]),
        float(origin[1]),
        np.ascontiguousarray(np.cos(angles), dtype=np.float64),
        np.ascontiguousarray(np.sin(angles), dtype=np.float64),
        np.ascontiguousarray(starts, dtype=np.float64),
        np.ascontiguousarray(ends, dtype=np.float64),
        float(max_range),
        out,
    )
    return out


# ----------------------------------------------------------------------------------------------------
# convex polygons: overlap, clipping, intersection area


@njit(cache=True)
def _separated_on_edges(a: np.ndarray, b: np.ndarray) -> bool:
    """True when some edge normal of ``a`` separates the projections of ``a`` and ``b``."""
    n = a.shape[0]
    for i in range(n):
        j = i + 1 if i + 1 < n else 0
        nx = a[i, 1] - a[j, 1]  # normal of edge i -> j (orientation irrelevant for SAT)
        ny = a[j, 0] - a[i, 0]
        if nx == 0.0 and ny == 0.0:
            continue
        amin = np.inf
        amax = -np.inf
        for k in range(n):
            p = a[k, 0] * nx + a[k, 1] * ny
            amin = min(amin, p)
            amax = max(amax, p)
        bmin = np.inf
        bmax = -np.inf
        for k in range(b.shape[0]):
            p = b[k, 0] * nx + b[k, 1] * ny
            bmin = min(bmin, p)
            bmax = max(bmax, p)
        if amax < bmin or bmax < amin:
            return True
    return False


@njit(cache=True)
def sat_overlap_nb(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex polygons (P, 2), (Q, 2). Touching counts as overlap."""
    return not (_separated_on_edges(a, b) or _separated_on_edges(b, a))


def convex_polygons_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex polygons (P, 2) and (Q, 2) overlap (separating-axis theorem)."""
    return bool(
        sat_overlap_nb(np.ascontiguousarray(a, dtype=np.float64), np.ascontiguousarray(b, dtype=np.float64))
    )


@njit(cache=True)
def _signed_area_nb(p: np.ndarray, n: int) -> float:
    s = 0.0
    for i in range(n):
        j = i + 1 if i + 1 < n else 0
        s += p[i, 0] * p[j, 1] - p[j, 0] * p[i, 1]
    return 0.5 * s


@njit(cache=True)
def clip_convex_nb(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: the part of ``subject`` (P, 2) inside the convex ``clip`` (Q, 2).

    ``subject`` may be any simple polygon for a correct area when it is convex; the result is (K, 2)
    with K = 0 when they do not overlap. Works for either orientation of ``clip``.
    """
    cap = 2 * (subject.shape[0] + clip.shape[0]) + 2  # each clip edge adds at most one vertex
    cur = np.empty((cap, 2))
    nxt = np.empty((cap, 2))
    n = subject.shape[0]
    cur[:n] = subject
    orient = 1.0 if _signed_area_nb(clip, clip.shape[0]) >= 0.0 else -1.0
    m = clip.shape[0]
    for i in range(m):
        if n == 0:
            break
        ax = clip[i, 0]
        ay = clip[i, 1]
        j = i + 1 if i + 1 < m else 0
        ex = clip[j, 0] - ax
        ey = clip[j, 1] - ay
        if ex == 0.0 and ey == 0.0:
            continue  # padding vertex
        k = 0
        for q in range(n):
            px = cur[q, 0]
            py = cur[q, 1]
            r = q + 1 if q + 1 < n else 0
            qx = cur[r, 0]
            qy = cur[r, 1]
            # side > 0: inside (left of the edge for a counter-clockwise clip polygon)
            sp = orient * (ex * (py - ay) - ey * (px - ax))
            sq = orient * (ex * (qy - ay) - ey * (qx - ax))
            if sp >= 0.0:
                nxt[k, 0] = px
                nxt[k, 1] = py
                k += 1
                if sq < 0.0:
                    t = sp / (sp - sq)
                    nxt[k, 0] = px + t * (qx - px)
                    nxt[k, 1] = py + t * (qy - py)
                    k += 1
            elif sq >= 0.0:
                t = sp / (sp - sq)
                nxt[k, 0] = px + t * (qx - px)
                nxt[k, 1] = py + t * (qy - py)
                k += 1
        cur, nxt = nxt, cur
        n = k
    return cur[:n].copy()


@njit(cache=True)
def convex_intersection_area_nb(a: np.ndarray, b: np.ndarray) -> float:
    """Area of the intersection of two convex polygons (units^2)."""
    inter = clip_convex_nb(a, b)
    if inter.shape[0] < 3:
        return 0.0
    return abs(_signed_area_nb(inter, inter.shape[0]))


def clip_convex_polygon(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Intersection polygon (K, 2) of a convex ``subject`` with a convex ``clip`` (K = 0 if disjoint)."""
    return clip_convex_nb(
        np.ascontiguousarray(subject, dtype=np.float64), np.ascontiguousarray(clip, dtype=np.float64)
    )


def convex_intersection_area(a: np.ndarray, b: np.ndarray) -> float:
    """Area of the intersection of two convex polygons (P, 2), (Q, 2), in units^2."""
    return float(
        convex_intersection_area_nb(
            np.ascontiguousarray(a, dtype=np.float64), np.ascontiguousarray(b, dtype=np.float64)
        )
    )


def convex_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two convex polygons, in [0, 1]."""
    inter = convex_intersection_area(a, b)
    union = polygon_area(a) + polygon_area(b) - inter
    return inter / union if union > 0.0 else 0.0


# ----------------------------------------------------------------------------------------------------
# rasterising


@njit(cache=True)
def fill_convex_nb(out: np.ndarray, polys: np.ndarray, value: int) -> None:
    """Set ``out[row, col] = value`` for every pixel whose centre lies in one of the convex ``polys``.

    out: (H, W) uint8; polys: (M, P, 2) in pixel coordinates (x = column, y = row, pixel (r, c) has its
    centre at (c + 0.5, r + 0.5)). Only each polygon's bounding box is visited, so small polygons are cheap.
    """
    h = out.shape[0]
    w = out.shape[1]
    p_n = polys.shape[1]
    for m in range(polys.shape[0]):
        poly = polys[m]
        xmin = np.inf
        xmax = -np.inf
        ymin = np.inf
        ymax = -np.inf
        for k in range(p_n):
            xmin = min(xmin, poly[k, 0])
            xmax = max(xmax, poly[k, 0])
            ymin = min(ymin, poly[k, 1])
            ymax = max(ymax, poly[k, 1])
        c0 = max(0, int(np.floor(xmin - 0.5)))
        c1 = min(w - 1, int(np.ceil(xmax - 0.5)))
        r0 = max(0, int(np.floor(ymin - 0.5)))
        r1 = min(h - 1, int(np.ceil(ymax - 0.5)))
        if c0 > c1 or r0 > r1:
            continue
        orient = 1.0 if _signed_area_nb(poly, p_n) >= 0.0 else -1.0
        for r in range(r0, r1 + 1):
            py = r + 0.5
            for c in range(c0, c1 + 1):
                px = c + 0.5
                inside = True
                for k in range(p_n):
                    j = k + 1 if k + 1 < p_n else 0
                    ex = poly[j, 0] - poly[k, 0]
                    ey = poly[j, 1] - poly[k, 1]
                    if ex == 0.0 and ey == 0.0:
                        continue
                    if orient * (ex * (py - poly[k, 1]) - ey * (px - poly[k, 0])) < 0.0:
                        inside = False
                        break
                if inside:
                    out[r, c] = value


def rasterize_convex_polygons(
    polys_px: np.ndarray, height: int, width: int, value: int = 255, out: np.ndarray | None = None
) -> np.ndarray:
    """Fill convex polygons given in pixel coordinates (M, P, 2) (x = column, y = row) into a uint8 image.

    Returns (height, width) uint8: ``value`` where a pixel centre is inside any polygon, else the prior
    content of ``out`` (zeros when ``out`` is None).
    """
    if out is None:
        out = np.zeros((height, width), dtype=np.uint8)
    polys = np.ascontiguousarray(polys_px, dtype=np.float64)
    if polys.ndim == 2:
        polys = polys[None]
    if len(polys):
        fill_convex_nb(out, polys, int(value))
    return out
