"""Deterministic synthetic abdominal CT phantoms, written as a Decathlon (MSD) dataset.

No real scans can be downloaded into this project, so the demo data is generated: each case is a
CT-like volume in Hounsfield units with a label map of five organ classes (liver, spleen, kidneys,
aorta, vertebra). Anatomy is drawn in millimetres in a patient frame (``u`` towards the patient's
left, ``v`` towards posterior, ``w`` towards superior, origin at the centre of the field of view)
and sampled on an anisotropic voxel grid whose array axes run left, posterior, superior; the
affine maps them to RAS world coordinates like a DICOM-derived NIfTI file (``diag(-sx, -sy, sz)``).

Organs are perturbed ellipsoids (random radii, centres, rotations and a smooth low-frequency
deformation of the implicit function), clipped to the abdominal cavity, painted in a fixed order
so later organs overwrite earlier ones in both image and label. Intensities are a per-class mean
plus smoothed texture, a slight blur for partial-volume edges and global Gaussian noise.

Every random draw of case ``index`` comes from ``np.random.default_rng([seed, index])``, so a case
is reproducible on its own, whatever else is generated.

Two sizes (``PHANTOM_SIZES``): ``demo`` (the default: about 110×110×35 voxels of 1.5-1.8 mm ×
4.5-5 mm drawn per case, five organ classes) and ``clinical`` (512×512×200 voxels of 0.8×0.8×2.5 mm,
a clinical CT's grid, with 13 organ classes: the liver, kidneys and vertebra split into their
parts, the paraspinal muscles labelled, and an inferior vena cava, gallbladder and pancreas added;
14 classes with the background). A clinical case draws the same kind of anatomy in the same
patient-frame millimetres, magnified by ``CLINICAL_ANATOMY_SCALE`` so that the body fills the wider
field of view as it fills the demo's.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from harness.data.phantom_sizes import PHANTOM_SIZES, PhantomSize

PHANTOM_LABELS: dict[int, str] = {
    0: "background",
    1: "liver",
    2: "spleen",
    3: "kidneys",
    4: "aorta",
    5: "vertebra",
}
CLINICAL_LABELS: dict[int, str] = {
    0: "background",
    1: "liver_right_lobe",
    2: "liver_left_lobe",
    3: "spleen",
    4: "kidney_right",
    5: "kidney_left",
    6: "aorta",
    7: "inferior_vena_cava",
    8: "vertebral_body",
    9: "vertebral_arch",
    10: "paraspinal_right",
    11: "paraspinal_left",
    12: "gallbladder",
    13: "pancreas",
}
FOV_INPLANE_MM = 180.0
FOV_Z_MM = 170.0
#: The clinical grid: 512×512 slices of 0.8 mm (a 41 cm field of view), 200 slices of 2.5 mm.
CLINICAL_SHAPE = (512, 512, 200)
CLINICAL_SPACING_MM = (0.8, 0.8, 2.5)
#: Magnification of the anatomy on the clinical grid: its in-plane field of view over the demo's.
CLINICAL_ANATOMY_SCALE = CLINICAL_SHAPE[0] * CLINICAL_SPACING_MM[0] / FOV_INPLANE_MM
# Mean Hounsfield units (contrast-enhanced, portal-venous-like phase).
HU = {
    "air": -1000.0,
    "fat": -95.0,
    "muscle": 45.0,
    "bowel": 25.0,
    "gas": -850.0,
    "liver": 60.0,
    "spleen": 105.0,
    "kidneys": 155.0,
    "aorta": 210.0,
    "ivc": 150.0,
    "gallbladder": 15.0,
    "pancreas": 100.0,
    "bone_interior": 270.0,
    "bone_cortex": 520.0,
}
# Standard deviation (HU) of the smoothed per-tissue texture.
TEXTURE_HU = {
    "fat": 8.0,
    "muscle": 6.0,
    "bowel": 10.0,
    "liver": 6.0,
    "spleen": 6.0,
    "kidneys": 8.0,
    "aorta": 4.0,
    "ivc": 5.0,
    "gallbladder": 4.0,
    "pancreas": 8.0,
    "bone_interior": 25.0,
    "bone_cortex": 40.0,
}

Grid = tuple[np.ndarray, np.ndarray, np.ndarray]


def _upsampling_matrix(coarse: int, fine: int) -> np.ndarray:
    """The (fine × coarse) matrix of cubic-spline upsampling along one axis."""
    return ndimage.zoom(np.eye(coarse), (fine / coarse, 1.0), order=3)[:fine]


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], cells: tuple[int, ...]
) -> np.ndarray:
    """Low-frequency noise of unit standard deviation: a coarse random grid, cubically upsampled.

    Upsampling is separable, so it is applied one axis at a time with small matrices, which is
    much faster than ``ndimage.zoom`` on the whole volume.
    """
    field = rng.standard_normal(cells)
    for axis, (fine, coarse) in enumerate(zip(shape, cells, strict=True)):
        field = np.moveaxis(
            np.tensordot(_upsampling_matrix(coarse, fine), field, (1, axis)), 0, axis
        )
    return ((field - field.mean()) / field.std()).astype(np.float32)


def _rotation(yaw_deg: float, tilt_u_deg: float = 0.0, tilt_v_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix: in-plane yaw about ``w``, then small tilts about ``u`` and ``v``."""
    a, b, c = np.deg2rad([yaw_deg, tilt_u_deg, tilt_v_deg])
    rw = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ru = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rv = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rw @ ru @ rv


def _ellipsoid_radius(
    grid: Grid,
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    rot: np.ndarray,
) -> np.ndarray:
    """Normalised ellipsoid radius (1 on the surface) of every voxel, in the rotated organ frame."""
    d = [g - c for g, c in zip(grid, centre, strict=True)]
    total = 0.0
    for axis in range(3):
        q = rot[0, axis] * d[0] + rot[1, axis] * d[1] + rot[2, axis] * d[2]
        total = total + (q / radii[axis]) ** 2
    return np.sqrt(total)


def _organ(
    rng: np.random.Generator,
    grid: Grid,
    shape: tuple[int, int, int],
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    rot: np.ndarray,
    deformation: float,
) -> np.ndarray:
    """A perturbed ellipsoid: inside where the radius is below one plus smooth noise."""
    field = _smooth_field(rng, shape, (7, 7, 5))
    return _ellipsoid_radius(grid, centre, radii, rot) < 1.0 + deformation * field


def _superellipse(u: np.ndarray, v: np.ndarray, a: float, b: float, power: float) -> np.ndarray:
    """Normalised superellipse radius (1 on the outline) of an in-plane cross-section."""
    return (np.abs(u / a) ** power + np.abs(v / b) ** power) ** (1.0 / power)


def _geometry(
    rng: np.random.Generator, size: PhantomSize
) -> tuple[tuple[int, int, int], np.ndarray, Grid]:
    """Per-case grid shape, scanner-like affine and the voxel centres in patient millimetres
    (divided by ``CLINICAL_ANATOMY_SCALE`` on the clinical grid)."""
    if size == "clinical":
        (s_xy, _, s_z), shape = CLINICAL_SPACING_MM, CLINICAL_SHAPE
        n_xy, n_z = shape[0], shape[2]
    else:
        s_xy = float(rng.uniform(1.5, 1.8))
        s_z = float(rng.uniform(4.5, 5.0))
        n_xy = round(FOV_INPLANE_MM / s_xy)
        n_z = round(FOV_Z_MM / s_z)
        shape = (n_xy, n_xy, n_z)
    # Array axes run towards L, P, S; RAS world x and y therefore decrease along them. The field
    # of view is centred near the scanner isocentre; z is a table position.
    affine = np.diag([-s_xy, -s_xy, s_z, 1.0])
    affine[:3, 3] = [
        s_xy * (n_xy - 1) / 2 + rng.uniform(-10, 10),
        s_xy * (n_xy - 1) / 2 + rng.uniform(-10, 10),
        rng.uniform(-420, -380),
    ]
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, (s_xy, s_xy, s_z), strict=True)]
    if size == "clinical":
        axes = [a / CLINICAL_ANATOMY_SCALE for a in axes]
    grid = (
        axes[0][:, None, None].astype(np.float32),
        axes[1][None, :, None].astype(np.float32),
        axes[2][None, None, :].astype(np.float32),
    )
    return shape, affine, grid


def phantom_labels(size: PhantomSize = "demo") -> dict[int, str]:
    """The label table of phantoms of ``size``."""
    if size not in PHANTOM_SIZES:
        raise ValueError(f"unknown phantom size {size!r} (expected one of: {PHANTOM_SIZES})")
    return CLINICAL_LABELS if size == "clinical" else PHANTOM_LABELS


def make_phantom(
    seed: int, index: int, size: PhantomSize = "demo"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic abdominal CT case.

    Returns the image (int16 Hounsfield units, shape X×Y×Z), the label map (uint8, same shape,
    values of ``phantom_labels(size)``) and the 4×4 float64 voxel-to-RAS affine. The same
    ``seed``, ``index`` and ``size`` always give identical arrays.
    """
    value = {name: key for key, name in phantom_labels(size).items()}
    clinical = size == "clinical"
    rng = np.random.default_rng([seed, index])
    shape, affine, grid = _geometry(rng, size)
    u, v, _ = grid

    body, muscle, cavity, bv, cavity_b = _body_wall(rng, shape, grid)
    texture = _smooth_field(rng, shape, (shape[0] // 6, shape[1] // 6, shape[2] // 3))
    image = np.full(shape, HU["air"], dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    def paint(mask: np.ndarray, tissue: str) -> None:
        image[mask] = HU[tissue] + TEXTURE_HU[tissue] * texture[mask]

    paint(body, "fat")
    paint(muscle, "muscle")
    # Abdominal contents: mesenteric fat around bowel loops, with a few gas pockets.
    loops = _smooth_field(rng, shape, (shape[0] // 10, shape[1] // 10, shape[2] // 4))
    paint(cavity, "fat")
    paint(cavity & (loops > 0.2), "bowel")
    gas = _smooth_field(rng, shape, (shape[0] // 8, shape[1] // 8, shape[2] // 3))
    image[cavity & (loops > 0.6) & (gas > 1.8)] = HU["gas"]

    (vert_body, arch, spinous), (vert_u, vert_v, vert_r, arch_v) = _spine(rng, grid, bv, cavity_b)
    vertebra = (vert_body | arch | spinous) & body
    # Paraspinal muscles either side of the posterior elements (unlabelled).
    para = rng.uniform(12, 15), rng.uniform(9, 12)
    for side, name in ((-1.0, "paraspinal_right"), (1.0, "paraspinal_left")):
        paraspinal = _superellipse(u - vert_u - side * 20.0, v - arch_v - 6.0, *para, 2.0) < 1.0
        paint(paraspinal & body, "muscle")
        if clinical:
            label[paraspinal & body] = value[name]

    right_lobe, left_lobe, spleen, kidney_sides = _solid_organs(rng, grid, shape, vert_v)
    liver = right_lobe | left_lobe
    kidneys = kidney_sides[0] | kidney_sides[1]
    aorta, aorta_r, bifurcation = _aorta(rng, grid, vert_v, vert_r)

    # Painting order (later overwrites earlier, in image and label alike): the kidneys lie in the
    # liver's renal impression, the spleen wraps the left kidney's upper pole, and the aorta and
    # the vertebra keep their whole tube and bone shapes. Each organ is (tissue, {label: mask}).
    if clinical:
        organs = _clinical_organs(
            rng, grid, shape, (right_lobe, left_lobe), kidney_sides, spleen, aorta, cavity,
            (vert_body, arch | spinous, body), (vert_u, vert_v, vert_r, aorta_r, bifurcation),
        )  # fmt: skip
    else:
        organs = [
            ("liver", {"liver": liver & cavity}),
            ("kidneys", {"kidneys": kidneys & cavity}),
            ("spleen", {"spleen": spleen & cavity}),
            ("aorta", {"aorta": aorta & cavity}),
            ("vertebra", {"vertebra": vertebra}),
        ]
    for tissue, parts in organs:
        mask = np.logical_or.reduce(list(parts.values()))
        if tissue == "vertebra":
            interior = ndimage.binary_erosion(mask, structure=np.ones((3, 3, 1), dtype=bool))
            paint(mask, "bone_cortex")
            paint(interior, "bone_interior")
        else:
            paint(mask, tissue)
        for name, part in parts.items():
            label[part] = value[name]

    # Partial volume at edges, per-case calibration offset, scanner noise.
    image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0.3))
    image += rng.uniform(-3, 3) + rng.uniform(10, 15) * rng.standard_normal(shape, dtype=np.float32)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return image, label, affine


def _body_wall(rng: np.random.Generator, shape: tuple[int, ...], grid: tuple[np.ndarray, ...]):
    """Body, muscle and abdominal-cavity masks (skin-to-muscle fat, then muscle, then the
    cavity: parallel outlines), with the body's anterior-posterior offset and the cavity's
    half-depth."""
    u, v, w = grid
    half_z = FOV_Z_MM / 2
    a, b = rng.uniform(76, 84), rng.uniform(57, 65)
    bu, bv = rng.uniform(-4, 4), rng.uniform(-4, 4)
    power = rng.uniform(2.0, 2.5)
    wall = 0.03 * _smooth_field(rng, shape, (6, 6, 4))
    taper = 1.0 + rng.uniform(-0.04, 0.04) * w / half_z
    fat_mm, muscle_mm = rng.uniform(5, 11), rng.uniform(5, 8)
    bu_, bv_ = u - bu, v - bv
    body = _superellipse(bu_, bv_, a * taper, b * taper, power) < 1.0 + wall
    inner_a, inner_b = a - fat_mm, b - fat_mm
    muscle = _superellipse(bu_, bv_, inner_a * taper, inner_b * taper, power) < 1.0 + wall
    cavity_a, cavity_b = inner_a - muscle_mm, inner_b - muscle_mm
    cavity = _superellipse(bu_, bv_, cavity_a * taper, cavity_b * taper, power) < 1.0 + wall

    return body, muscle, cavity, bv, cavity_b


def _spine(rng: np.random.Generator, grid: tuple[np.ndarray, ...], bv: float, cavity_b: float):
    """Vertebral body, arch and spinous process masks (slightly curved, present in every slice),
    and the column's position and radii."""
    u, v, w = grid
    half_z = FOV_Z_MM / 2
    vert_r = (rng.uniform(15, 18), rng.uniform(12, 15))
    vert_u = rng.uniform(-2, 2)
    vert_v = bv + cavity_b - vert_r[1] - rng.uniform(6, 10) + rng.uniform(-3, 3) * (w / half_z) ** 2
    vert_body = _superellipse(u - vert_u, v - vert_v, vert_r[0], vert_r[1], 2.0) < 1.0
    arch_v = vert_v + vert_r[1] + 3.0
    arch = _superellipse(u - vert_u, v - arch_v, rng.uniform(14, 18), 4.0, 2.0) < 1.0
    spine_half = rng.uniform(5, 7)
    spinous = _superellipse(u - vert_u, v - (arch_v + spine_half), 3.5, spine_half, 2.0) < 1.0
    return (vert_body, arch, spinous), (vert_u, vert_v, vert_r, arch_v)


def _solid_organs(
    rng: np.random.Generator, grid: tuple[np.ndarray, ...], shape: tuple[int, ...], vert_v
):
    """Liver lobes (a large right lobe plus a left lobe reaching across the midline
    anteriorly), spleen, and the kidneys (bean shapes with a medial hilum notch, posterior, the
    right one a little lower)."""
    right_lobe = _organ(
        rng,
        grid,
        shape,
        (rng.uniform(-42, -34), rng.uniform(-6, 2), rng.uniform(30, 45)),
        (rng.uniform(36, 44), rng.uniform(40, 48), rng.uniform(55, 70)),
        _rotation(rng.uniform(-15, 15), rng.uniform(-8, 8), rng.uniform(-8, 8)),
        0.12,
    )
    left_lobe = _organ(
        rng,
        grid,
        shape,
        (rng.uniform(0, 12), rng.uniform(-30, -22), rng.uniform(40, 55)),
        (rng.uniform(26, 34), rng.uniform(12, 17), rng.uniform(28, 38)),
        _rotation(rng.uniform(-20, 5)),
        0.15,
    )
    spleen = _organ(
        rng,
        grid,
        shape,
        (rng.uniform(44, 52), rng.uniform(12, 22), rng.uniform(28, 42)),
        (rng.uniform(13, 17), rng.uniform(30, 38), rng.uniform(30, 40)),
        _rotation(rng.uniform(-45, -25), rng.uniform(-10, 10), rng.uniform(-10, 10)),
        0.12,
    )
    kidney_sides = []
    for side, height in ((-1.0, rng.uniform(-18, -4)), (1.0, rng.uniform(-8, 6))):
        centre_u = side * rng.uniform(36, 42)
        centre_v = vert_v + rng.uniform(-6, 0)
        kidney = _organ(
            rng,
            grid,
            shape,
            (centre_u, centre_v, height),
            (rng.uniform(11, 14), rng.uniform(17, 20), rng.uniform(36, 44)),
            _rotation(side * rng.uniform(25, 40), 0.0, side * rng.uniform(-12, -4)),
            0.08,
        )
        hilum = (centre_u - side * 14.0, centre_v - 4.0, height)
        kidney_sides.append(
            kidney & (_ellipsoid_radius(grid, hilum, (7.0, 6.0, 12.0), np.eye(3)) > 1.0)
        )
    return right_lobe, left_lobe, spleen, kidney_sides


def _aorta(rng: np.random.Generator, grid: tuple[np.ndarray, ...], vert_v, vert_r):
    """Aorta: a tube left of the midline, anterior to the vertebral body, ending at the
    bifurcation; with its radius profile and the bifurcation's height."""
    u, v, w = grid
    half_z = FOV_Z_MM / 2
    aorta_r = rng.uniform(8, 10.5) * (
        1.0 + 0.07 * np.sin(2 * np.pi * w / rng.uniform(80, 140) + rng.uniform(0, 2 * np.pi))
    )
    aorta_u = rng.uniform(4, 9) + rng.uniform(-3, 3) * w / half_z
    aorta_v = vert_v - vert_r[1] - aorta_r - rng.uniform(1.5, 3.5)
    bifurcation = rng.uniform(-half_z + 5, -half_z + 25)
    aorta = (np.hypot(u - aorta_u, v - aorta_v) < aorta_r) & (w > bifurcation)
    return aorta, aorta_r, bifurcation


def _clinical_organs(
    rng: np.random.Generator,
    grid: Grid,
    shape: tuple[int, int, int],
    lobes: tuple[np.ndarray, np.ndarray],
    kidney_sides: list[np.ndarray],
    spleen: np.ndarray,
    aorta: np.ndarray,
    cavity: np.ndarray,
    spine: tuple[np.ndarray, np.ndarray, np.ndarray],
    anchors: tuple[float, float, tuple[float, float], np.ndarray, float],
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The clinical size's organs in painting order, as (tissue, {label name: mask}): the demo's
    organs split into parts, plus an inferior vena cava (a tube right of the spine, anterior to
    it, up to the liver), a gallbladder (under the right lobe) and a pancreas (across the midline,
    anterior to the aorta), painted after the liver so they sit in it."""
    u, v, w = grid
    vert_body, vert_arch, body = spine
    vert_u, vert_v, vert_r, aorta_r, bifurcation = anchors
    right_lobe, left_lobe = lobes
    ivc_r = rng.uniform(8, 11)
    ivc_u = vert_u - rng.uniform(18, 24)
    ivc_v = vert_v - vert_r[1] - ivc_r - rng.uniform(0.5, 2.5)
    ivc = (np.hypot(u - ivc_u, v - ivc_v) < ivc_r) & (w > bifurcation) & (w < rng.uniform(40, 60))
    gallbladder = _organ(
        rng,
        grid,
        shape,
        (rng.uniform(-34, -26), rng.uniform(-30, -22), rng.uniform(5, 15)),
        (rng.uniform(11, 14), rng.uniform(13, 17), rng.uniform(22, 28)),
        _rotation(rng.uniform(-20, 20), rng.uniform(-10, 10)),
        0.06,
    )
    pancreas = _organ(
        rng,
        grid,
        shape,
        (rng.uniform(8, 16), vert_v - vert_r[1] - 2 * float(aorta_r.max()) - rng.uniform(8, 12),
         rng.uniform(0, 10)),
        (rng.uniform(38, 46), rng.uniform(7, 10), rng.uniform(9, 12)),
        _rotation(rng.uniform(-20, -5)),
        0.10,
    )  # fmt: skip
    return [
        ("liver", {"liver_right_lobe": right_lobe & cavity,
                   "liver_left_lobe": left_lobe & ~right_lobe & cavity}),
        ("kidneys", {"kidney_right": kidney_sides[0] & cavity,
                     "kidney_left": kidney_sides[1] & cavity}),
        ("spleen", {"spleen": spleen & cavity}),
        ("gallbladder", {"gallbladder": gallbladder & cavity}),
        ("pancreas", {"pancreas": pancreas & cavity}),
        ("ivc", {"inferior_vena_cava": ivc & cavity}),
        ("aorta", {"aorta": aorta & cavity}),
        ("vertebra", {"vertebral_body": vert_body & body, "vertebral_arch": vert_arch & body}),
    ]  # fmt: skip


def _dataset_json(cases: int, size: PhantomSize = "demo") -> dict:
    """MSD-style dataset description for ``cases`` training cases of ``size``."""
    ids = [f"phantom_{i:03d}" for i in range(cases)]
    labels = phantom_labels(size)
    if size == "demo":
        name, organs = "AbdomenPhantom", "liver, spleen, kidneys, aorta and vertebra"
    else:
        name = "AbdomenPhantomClinical"
        organs = ", ".join(label for key, label in labels.items() if key)
        organs = f"{organs} on a clinical 512x512x200 grid of 0.8x0.8x2.5 mm"
    return {
        "name": name,
        "description": (
            f"Synthetic abdominal CT phantoms (not patient data): perturbed-ellipsoid {organs} "
            "in Hounsfield units, generated by harness.data.phantoms for demos and tests."
        ),
        "reference": "Generated by harness/data/phantoms.py (medquant-leaderboard)",
        "licence": "CC0-1.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in labels.items()},
        "numTraining": cases,
        "numTest": 0,
        "training": [
            {"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"}
            for cid in ids
        ],
        "test": [],
    }


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI-1 file with qform and sform both set (scanner code) from ``affine``."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(array.dtype)
    nib.save(img, str(path))


def write_phantom_dataset(
    out: Path, cases: int, seed: int = 0, progress: bool = False, size: PhantomSize = "demo"
) -> Path:
    """Write ``cases`` phantoms as an MSD dataset under ``out`` and return ``out``.

    Creates ``out/dataset.json``, ``out/imagesTr/phantom_XXX.nii.gz`` (int16 HU) and
    ``out/labelsTr/phantom_XXX.nii.gz`` (uint8). Case ``i`` is ``make_phantom(seed, i, size)``.
    """
    phantom_labels(size)  # refuses an unknown size before anything is written
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(cases), desc="phantoms", unit="case", disable=not progress):
        image, label, affine = make_phantom(seed, index, size)
        cid = f"phantom_{index:03d}"
        _save_nifti(image, affine, out / "imagesTr" / f"{cid}.nii.gz")
        _save_nifti(label, affine, out / "labelsTr" / f"{cid}.nii.gz")
    (out / "dataset.json").write_text(json.dumps(_dataset_json(cases, size), indent=2) + "\n")
    return out
