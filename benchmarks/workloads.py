"""Workloads shared by the benchmarks and the edge tests: test images and the real bitstreams made from them
(`model_images`, `encoded_streams`), and model packages whose entropy parameters look like a trained model's
although the weights are random.

Why: with random initialisation g_a's output is tiny (std ~0.05), every z rounds to the same symbol and the
float h_s gives scales around 0.01, i.e. one row of the 64-level scale table for everything. Such a model cannot
show a desynchronised range decoder, so `make_realistic` rescales it in place (before export):

- g_a's and h_a's last convs so that y and z have a spread of a few units, as after training;
- the entropy bottleneck: its density fitted briefly to z, its quantiles (medians and support) set from z;
- h_s: the two deconvs scaled so the last conv's input has unit-order activations, then the last conv's
  scale channels remapped so each channel's scales spread around its own centre, the centres log-uniform
  over most of the table (0.2 .. 60), and its mean channels remapped to y's channel means.

Weights stay small enough for the integer h_s's exactness bound (sum |w| < 2**11 per output).
It lives with the benchmarks, which run as scripts from this folder (so Python finds it next to them); pytest
finds it through the ``pythonpath`` setting in pyproject.toml.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "stereo_motorcycle")


def colour_photos() -> list[np.ndarray]:
    """scikit-image's bundled colour photos (uint8 RGB), those that need no download."""
    import skimage.data

    photos = []
    for name in COLOUR_PHOTOS:
        try:
            image = getattr(skimage.data, name)()
        except Exception:  # noqa: BLE001 - a photo that needs a download in this scikit-image version
            continue
        image = image[0] if isinstance(image, tuple) else image
        if image.ndim == 3 and image.shape[2] >= 3:
            photos.append(np.ascontiguousarray(image[..., :3]))
    return photos


def photo_crops(per_photo: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """uint8 (n, size, size, 3): each photo resized whole, then random square crops of 30-100 % of its short
    side resized to `size`, some mirrored."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for photo in colour_photos():
        h, w = photo.shape[:2]
        im = Image.fromarray(photo)
        for k in range(per_photo):
            if k == 0:
                crop = im
            else:
                side = int(min(h, w) * rng.uniform(0.3, 1.0))
                top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
                crop = im.crop((left, top, left + side, top + side))
            crop = crop.resize((size, size), Image.BILINEAR)
            if k % 3 == 2:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            out.append(np.asarray(crop))
    return np.stack(out)


def fashion_mnist_test(n: int) -> np.ndarray | None:
    """The first n Fashion-MNIST test images, uint8 (n, 28, 28, 1); None without the Debian package."""
    try:
        from vitcodec.models.data import DataError, load_fashion_mnist
    except ImportError:
        return None
    try:
        images, _ = load_fashion_mnist("test")
    except (DataError, OSError):
        return None
    return np.ascontiguousarray(images[:n, :, :, None])


def model_images(spec, n: int, seed: int = 0) -> np.ndarray:
    """n uint8 images (n, H, W, C) at a package's input size (`spec`: its `InputSpec`): Fashion-MNIST test images,
    cycled, for a 28x28 grey model when the dataset is installed; else blocky random images, which compress like
    pictures rather than noise, so that their streams have a plausible size."""
    if tuple(spec.size) == (28, 28) and spec.channels == 1:
        images = fashion_mnist_test(10_000)
        if images is not None:
            return images[np.arange(n) % len(images)]
    h, w = spec.size
    base = np.random.default_rng(seed).integers(0, 256, (n, h // 8 + 1, w // 8 + 1, spec.channels)).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(base, 8, 1), 8, 2)[:, :h, :w])


def encoded_streams(package, n: int) -> list[bytes]:
    """n real bitstreams: `model_images` through the edge encoder (what a device would send)."""
    from vitcodec.edge.encoder import EdgeEncoder

    return [r.stream for r in EdgeEncoder(package).encode_pixels(model_images(package.input_spec, n))]


def _input(model, pixels: np.ndarray):
    import torch
    from vitcodec.edge.preprocess import normalise
    from vitcodec.packages import InputSpec

    c = model.config
    spec = InputSpec(tuple(c.img_size), c.in_chans, tuple(c.mean), tuple(c.std), c.stride)
    return torch.from_numpy(normalise(pixels, spec))


def make_realistic(model, calibration: np.ndarray, seed: int = 0, y_std: float = 3.0, z_std: float = 2.0,
                   fit_steps: int = 0) -> None:
    """Rescale a randomly initialised network in place (see the module docstring); `calibration` is uint8
    (B, H, W, C) images at the model's input size. `fit_steps` > 0 also fits the entropy bottleneck's density
    to z (about 0.1 s a step here; without it z's tables are broad, which costs z bits but nothing else)."""
    import torch
    from torch import nn

    model.eval()
    hp = model.hyperprior
    x = _input(model, calibration)
    with torch.no_grad():  # the last convs are linear: rescaling them rescales y and z exactly
        g_last = [m for m in model.g_a if isinstance(m, nn.Conv2d)][-1]
        y = model.g_a(x)
        factor = y_std / float(y.std())
        _scale_layer(g_last, factor)
        y = y * factor
        ha_last = [m for m in hp.h_a if isinstance(m, nn.Conv2d)][-1]
        z = hp.h_a(y)
        factor = z_std / float(z.std())
        _scale_layer(ha_last, factor)
        z = z * factor

    eb = hp.entropy_bottleneck  # optionally fit the density to z, then put medians and support where z is
    if fit_steps:
        density = [p for name, p in eb.named_parameters() if name != "quantiles"]
        optimiser = torch.optim.Adam(density, lr=0.02)
        eb.train()
        for _ in range(fit_steps):
            _, likelihoods = eb(z)
            loss = -torch.log2(likelihoods).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        eb.eval()
    with torch.no_grad():
        per_channel = z.transpose(0, 1).reshape(z.shape[1], -1)
        medians = per_channel.median(dim=1).values
        lo = torch.quantile(per_channel, 0.001, dim=1) - 2.0
        hi = torch.quantile(per_channel, 0.999, dim=1) + 2.0
        eb.quantiles[:, 0, 0] = torch.minimum(lo, medians - 1.0)
        eb.quantiles[:, 0, 1] = medians
        eb.quantiles[:, 0, 2] = torch.maximum(hi, medians + 1.0)

        z_hat = torch.round(z - medians.view(1, -1, 1, 1)) + medians.view(1, -1, 1, 1)
        layers = list(hp.h_s)
        convs = [m for m in layers if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
        hidden = nn.Sequential(*layers[:-1])
        gain = math.sqrt(2.0 / max(float(hidden(z_hat).std()), 1e-9))
        for layer in convs[:-1]:  # ReLU is positively homogeneous: the last input scales by gain**2
            _scale_layer(layer, gain)
        last = convs[-1]
        if last.bias is None:
            raise ValueError("the last h_s convolution has no bias to set")
        bias = last.bias
        params = last(hidden(z_hat))[..., : y.shape[2], : y.shape[3]]
        M = params.shape[1] // 2
        scales, means = params[:, :M], params[:, M:]
        rng = np.random.default_rng(seed)
        centre = torch.from_numpy(np.exp(rng.uniform(math.log(0.2), math.log(60.0), M))).float()
        weight_sum = last.weight.abs().sum(dim=(1, 2, 3))
        cap = 1000.0 / weight_sum.clamp_min(1e-9)  # keeps sum |w| below the integer h_s bound (2**11)
        alpha = torch.minimum(0.4 * centre / scales.std(dim=(0, 2, 3)).clamp_min(1e-9), cap[:M])
        last.weight[:M] *= alpha.view(-1, 1, 1, 1)
        bias[:M] = alpha * (bias[:M] - scales.mean(dim=(0, 2, 3))) + centre
        y_mean, y_spread = y.mean(dim=(0, 2, 3)), y.std(dim=(0, 2, 3))
        beta = torch.minimum(0.5 * y_spread / means.std(dim=(0, 2, 3)).clamp_min(1e-9), cap[M:])
        last.weight[M:] *= beta.view(-1, 1, 1, 1)
        bias[M:] = beta * (bias[M:] - means.mean(dim=(0, 2, 3))) + y_mean


def _scale_layer(layer, factor: float) -> None:
    layer.weight.mul_(factor)
    if layer.bias is not None:
        layer.bias.mul_(factor)


def export_realistic(preset: str, root: Path, name: str, calibration: np.ndarray, seed: int = 0,
                     quality: int = 2, **overrides):
    """Build `preset` with seed `seed`, make it realistic on `calibration`, export to root/name/1."""
    import torch
    from vitcodec.models.export import export_package
    from vitcodec.models.registry import create_model

    torch.manual_seed(seed)
    model = create_model(preset, **overrides)
    make_realistic(model, calibration, seed=seed)
    return export_package(model, root, name=name, quality=quality)


def scale_levels(package, pixels: np.ndarray) -> np.ndarray:
    """How often each of the scale table's rows codes a y element, over `pixels` (edge path, no torch)."""
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.edge.preprocess import normalise

    encoder = EdgeEncoder(package)
    codec = encoder.codec
    counts = np.zeros(codec.tables.scale_table.size, np.int64)
    for start in range(0, len(pixels), 64):
        y, z = encoder.session.run(["y", "z"], {"image": normalise(pixels[start:start + 64], encoder.spec)})
        medians = codec.tables.z_medians.astype(np.float64).reshape(1, -1, 1, 1)
        symbols = np.rint(z.astype(np.float64) - medians).astype(np.int32)
        params = codec.hyper.forward(codec.hyper.fixed_input(symbols, codec.tables.z_medians), y.shape[2:])
        counts += np.bincount(params.scale_indexes.ravel(), minlength=counts.size)
    return counts


# --- a torch-free edge install ------------------------------------------------------------------------

_SOURCE_IGNORE = (".venv", ".git", ".ci", "runs", "tests", "benchmarks", "docs", "deploy", "build", "dist",
                  "__pycache__", "*.egg-info", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache")


EDGE_DISTRIBUTIONS = ("common", "codec", "packages", "protos", "edge")  # vitcodec-edge and what it needs


def build_edge_venv(dest: Path, project: Path, timeout: float = 600.0) -> Path:
    """A fresh venv at dest/venv holding only the edge: wheels of vitcodec-edge and of the distributions it
    needs (built from a copy of their sources) installed with their declared dependencies, resolved by pip
    from the configured index (no torch unless those pull it in, which is what the caller checks)."""
    import shutil
    import subprocess
    import sys

    def run(*args: object) -> None:
        proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    source, wheels, venv = dest / "src", dest / "wheels", dest / "venv"
    for folder in EDGE_DISTRIBUTIONS:
        shutil.copytree(project / folder, source / folder, ignore=shutil.ignore_patterns(*_SOURCE_IGNORE))
    # built with this interpreter's setuptools (no build isolation: nothing to download)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels,
        *(source / folder for folder in EDGE_DISTRIBUTIONS))
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", *sorted(wheels.glob("*.whl")))
    return venv


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())
