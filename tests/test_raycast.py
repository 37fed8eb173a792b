"""The fast depth renderers against a brute-force per-pixel ray caster."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vmamba_rl.envs.raycast import PinholeCamera, Scene, render_depth, render_depth_reference

BACKENDS = ["numba", "numpy"]
ATOL = 1e-4  # metres; the renderers return float32


def _random_scene(rng: np.random.Generator, n: int, half: float = 10.0) -> Scene:
    cyl = np.column_stack(
        [
            rng.uniform(-8, 8, (n, 2)),
            rng.uniform(0.2, 1.5, n),
            rng.uniform(0.0, 0.8, n),  # some float above the floor: the bottom cap shows from below
            rng.uniform(1.0, 5.0, n),
        ]
    )
    box = np.column_stack(
        [
            rng.uniform(-8, 8, (n, 2)),
            rng.uniform(0.02, 1.5, (n, 2)),
            rng.uniform(0, math.pi, n),
            rng.uniform(0.0, 0.8, n),
            rng.uniform(1.0, 5.0, n),
        ]
    )
    return Scene(cyl, box, arena_half=half, ceiling=4.5)


def _free_camera(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    """A camera position outside every obstacle (rays starting inside are a separate convention)."""
    while True:
        pos = np.array([*rng.uniform(-6, 6, 2), rng.uniform(0.3, 4.2)])
        inside_c = np.hypot(*(pos[:2, None] - scene.cylinders[:, :2].T)) <= scene.cylinders[:, 2] + 0.05
        if inside_c.any():
            continue
        ok = True
        for b in scene.boxes:
            cs, sn = math.cos(b[4]), math.sin(b[4])
            ox = (pos[0] - b[0]) * cs + (pos[1] - b[1]) * sn
            oy = -(pos[0] - b[0]) * sn + (pos[1] - b[1]) * cs
            if abs(ox) <= b[2] + 0.05 and abs(oy) <= b[3] + 0.05:
                ok = False
        if ok:
            return pos


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_scenes_match_brute_force(backend: str) -> None:
    rng = np.random.default_rng(1234)
    cam = PinholeCamera(18, 26, hfov_deg=rng.uniform(60, 120), max_range=10.0)
    for _ in range(6):
        scene = _random_scene(rng, int(rng.integers(2, 6)))
        pos = _free_camera(rng, scene)
        yaw = rng.uniform(-math.pi, math.pi)
        fast = render_depth(scene, cam, pos, yaw, backend=backend)
        ref = render_depth_reference(scene, cam, pos, yaw)
        assert fast.shape == (18, 26) and fast.dtype == np.float32
        np.testing.assert_allclose(fast, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_seen_edge_on(backend: str) -> None:
    """A box corner pointing at the camera, a face parallel to the optical axis and a thin plate edge-on."""
    cam = PinholeCamera(16, 32, max_range=10.0)
    scenes = [
        Scene(boxes=[[5.0, 0.0, 1.0, 1.0, math.pi / 4, 0.0, 3.0]], arena_half=20, ceiling=6),
        Scene(boxes=[[5.0, 1.5, 2.0, 1.0, 0.0, 0.0, 3.0]], arena_half=20, ceiling=6),
        Scene(boxes=[[5.0, 0.0, 2.0, 0.01, 0.0, 0.0, 3.0]], arena_half=20, ceiling=6),
    ]
    for scene in scenes:
        pos = np.array([0.0, 0.0, 2.0])
        fast = render_depth(scene, cam, pos, 0.0, backend=backend)
        ref = render_depth_reference(scene, cam, pos, 0.0)
        np.testing.assert_allclose(fast, ref, atol=ATOL, rtol=0)
        assert (fast < 9.0).any(), "the box must be visible"


@pytest.mark.parametrize("backend", BACKENDS)
def test_obstacle_straddling_max_range(backend: str) -> None:
    cam = PinholeCamera(16, 16, max_range=10.0)
    # Near surface 9.5 m ahead on the axis; off-axis rays reach it beyond 10 m and must read exactly 10.
    scene = Scene(cylinders=[[10.5, 0.0, 1.0, 0.0, 3.0]], arena_half=30, ceiling=50)
    pos = np.array([0.0, 0.0, 2.0])
    fast = render_depth(scene, cam, pos, 0.0, backend=backend)
    ref = render_depth_reference(scene, cam, pos, 0.0)
    np.testing.assert_allclose(fast, ref, atol=ATOL, rtol=0)
    centre = fast[7:9, 7:9]
    assert (centre < 10.0).all() and (centre > 9.5).all()
    assert (fast == 10.0).any() and fast.max() == 10.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_walls_floor_and_analytic_values(backend: str) -> None:
    """Empty arena: every pixel is the wall, the floor or the ceiling, with closed-form depths."""
    cam = PinholeCamera(32, 32, max_range=100.0)
    scene = Scene(arena_half=5.0, ceiling=4.0)
    pos = np.array([0.0, 0.0, 2.0])
    depth = render_depth(scene, cam, pos, 0.0, backend=backend)
    u, v = cam.u[None, :], cam.v[:, None]
    t_wall = 5.0 / np.ones_like(u)  # facing the x = +5 wall head on
    t_floor = np.where(v > 0, 2.0 / np.where(v > 0, v, 1), np.inf)
    t_ceil = np.where(v < 0, -2.0 / np.where(v < 0, v, -1), np.inf)
    expected = np.minimum(np.minimum(t_wall, t_floor), t_ceil) * cam.ray_scale
    np.testing.assert_allclose(depth, expected, atol=ATOL, rtol=1e-6)


def test_numpy_and_numba_agree_at_128() -> None:
    rng = np.random.default_rng(7)
    scene = _random_scene(rng, 15, half=12)
    cam = PinholeCamera(128, 128)
    pos = _free_camera(rng, scene)
    a = render_depth(scene, cam, pos, 0.4, backend="numba")
    b = render_depth(scene, cam, pos, 0.4, backend="numpy")
    assert a.shape == (128, 128)
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    assert a.min() >= 0 and a.max() <= cam.max_range


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="hfov_deg"):
        PinholeCamera(hfov_deg=180)
    with pytest.raises(ValueError, match="backend"):
        render_depth(Scene(arena_half=5, ceiling=3), PinholeCamera(4, 4), np.zeros(3), 0.0, backend="gl")
