"""Fit a compressed package's calibration (`vitcodec.models.novelty`) through the real system and store it.

The features and logits come from real bitstreams (edge ONNX encoder, range coder, integer h_s, cloud
decoder), so the temperature and the novelty statistics are fitted on exactly what the server will see.
Only training data is used: class statistics on the ``fit`` split, temperature and threshold on ``val``.
The model id does not change (it covers the codec and the encoder, not the classifier).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from vitcodec.models.config import JCCConfig
from vitcodec.models.data import load_arrays
from vitcodec.models.novelty import CalibrationFit, fit_calibration
from vitcodec.packages import ModelPackage

FIT_IMAGES = 20_000  # images of the fit split the class statistics are estimated from (128-d features)


@torch.inference_mode()
def bitstream_features(package: ModelPackage, images: np.ndarray, batch_size: int = 500,
                       on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uncalibrated logits, pooled features) of images sent through the edge encoder and decoded as the
    server decodes them."""
    from vitcodec.edge.encoder import EdgeEncoder
    from vitcodec.edge.preprocess import to_batch
    from vitcodec.models.inference import CloudModel

    edge, cloud = EdgeEncoder(package), CloudModel(package)
    logits, features = [], []
    for start in range(0, len(images), batch_size):
        encoded = edge.encode_pixels(to_batch(images[start:start + batch_size], package.input_spec))
        y_hat = np.stack([cloud.decode(result.stream).y_hat for result in encoded])
        lg, ft = cloud.net.pooled_features(torch.from_numpy(y_hat.astype(np.float32)))
        logits.append(lg.float().numpy())
        features.append(ft.float().numpy())
        if on_batch:
            on_batch(len(encoded))
    return np.concatenate(logits), np.concatenate(features)


def calibrate_package(package: ModelPackage, data: str, fit_images: int = FIT_IMAGES, quantile: float = 0.96,
                      val_images: int | None = None,
                      on_batch: Callable[[int], None] | None = None) -> CalibrationFit:
    """Fit, then rewrite the package: calibration buffers in ``weights.pt`` (float32), ``config.calibrated``
    and a ``calibration`` record in the manifest, and ``classifier.onnx`` with its ``novelty`` output.
    ``val_images`` keeps the first N of the validation split (quick fits in tests); default all."""
    from vitcodec.models.export import add_classifier

    if not package.compresses:
        raise ValueError(f"{package.name} is the uncompressed reference: it serves no bitstreams to calibrate")
    config = JCCConfig.from_dict(package.manifest["config"])
    fit_x, fit_y, _ = load_arrays(data, "fit", config)
    if len(fit_x) > fit_images:  # a seeded, class-blind subset of the fit split
        keep = np.sort(np.random.default_rng(0).choice(len(fit_x), fit_images, replace=False))
        fit_x, fit_y = fit_x[keep], fit_y[keep]
    val_x, val_y, _ = load_arrays(data, "val", config, limit=val_images)
    _, fit_features = bitstream_features(package, fit_x, on_batch=on_batch)
    val_logits, val_features = bitstream_features(package, val_x, on_batch=on_batch)
    fit = fit_calibration(fit_features, fit_y, val_logits, val_features, val_y, config.num_classes, quantile)
    add_classifier(_store(package, config, fit, data))  # the graph points into the rewritten weights.pt
    return fit


def _store(package: ModelPackage, config: JCCConfig, fit: CalibrationFit, data: str) -> ModelPackage:
    from vitcodec.models.novelty import Calibration

    calibration = Calibration(config.embed_dim, config.num_classes)
    calibration.load_fit(fit)
    path = package.file("weights")
    state = {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
             if not k.startswith("calibration.")}
    state.update({f"calibration.{k}": v.clone() for k, v in calibration.state_dict().items()})
    manifest = dict(package.manifest)
    manifest["config"] = {**manifest["config"], "calibrated": True}
    manifest["calibration"] = {"data": data, **fit.record()}
    return package.rewrite(manifest, files={"weights": (path.name, partial(torch.save, state))})
