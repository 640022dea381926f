"""Cloud-side inference on bitstreams: entropy decoding through ``codec/`` (exact integer h_s), then the
ViT on the decoded latents. Pixels are decoded only by ``reconstruct``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from vitcodec.codec.bitstream import StreamHeader, unpack_stream
from vitcodec.codec.latent_codec import LatentCodec
from vitcodec.models.config import JCCConfig
from vitcodec.models.latent_grid import check_latent_grid
from vitcodec.models.latent_networks import load_latent_networks
from vitcodec.outputs import top_k as top_k_indexes
from vitcodec.packages import ModelPackage


@dataclass(frozen=True)
class DecodedStream:
    header: StreamHeader
    y_hat: np.ndarray  # float32 (M, h, w)
    num_bytes: int


@dataclass(frozen=True)
class Prediction:
    top_indices: list[int]
    top_labels: list[str]
    top_probs: list[float]
    probabilities: np.ndarray


class CloudModel:
    """A model package loaded for serving: codec (numpy) + torch networks (ViT, aggregation, g_s)."""

    def __init__(self, package: ModelPackage, device: str | torch.device = "cpu") -> None:
        if not package.compresses:
            raise ValueError(f"model {package.name} is the uncompressed reference: it decodes no bitstreams")
        self.package = package
        self.device = torch.device(device)
        self.config = JCCConfig.from_dict(package.manifest["config"])
        self.codec = LatentCodec.load(package.file("codec"))
        self.model_id = package.model_id
        self.net = load_latent_networks(package, self.device)
        self.labels = package.labels or [str(i) for i in range(self.config.num_classes)]

    @property
    def name(self) -> str:
        return self.package.name

    def decode(self, stream: bytes) -> DecodedStream:
        """Parse, check the model id and integrity, entropy-decode: raises CodecError subclasses."""
        header, z_payload, y_payload = unpack_stream(stream, expected_model_id=self.model_id)
        check_latent_grid(header.image_size, header.latent_shape, self.config.stride, self.name)
        y_hat = self.codec.decode(z_payload, y_payload, header.latent_shape, checksum_verified=True)
        return DecodedStream(header, y_hat, len(stream))

    def decode_payloads(self, payloads: list[tuple[bytes, bytes]], latent_shape: tuple[int, int]) -> np.ndarray:
        """ŷ (B, M, h, w) of streams already parsed and checked (the server does that once, at routing): one
        h_s pass for the batch. The first bad payload raises, without saying which (see cloud/decoding.py)."""
        return self.codec.decode_batch(payloads, (*latent_shape,), checksum_verified=True)

    def classify_latents(self, y_hat: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of decoded latents (B, M, h, w): no pixel decoder runs."""
        return self.analyse_latents(y_hat)[0]

    @torch.inference_mode()
    def analyse_latents(self, y_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (B, C), novelty (B,) or None): calibrated probabilities and how unlike the training
        data each image is (above 1.0: out of distribution) when the package is calibrated."""
        x = torch.from_numpy(np.ascontiguousarray(y_hat, dtype=np.float32)).to(self.device)
        logits, novelty = self.net.analyse(x)
        probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        return probs, None if novelty is None else novelty.float().cpu().numpy()

    def classify_streams(self, streams: list[bytes]) -> tuple[list[DecodedStream], np.ndarray]:
        """The classify path: each stream entropy-decoded to y_hat, then one ViT batch -> probabilities (B, C).

        ``vitcodec decode`` and ``vitcodec eval`` call this; the server runs the same two steps with a batch
        queue between them. Raises CodecError subclasses for a bad stream.
        """
        decoded, probs, _ = self.analyse_streams(streams)
        return decoded, probs

    def analyse_streams(self, streams: list[bytes]) -> tuple[list[DecodedStream], np.ndarray, np.ndarray | None]:
        """`classify_streams` plus the novelty of each stream (None for an uncalibrated package)."""
        decoded = [self.decode(s) for s in streams]
        probs, novelty = self.analyse_latents(np.stack([d.y_hat for d in decoded]))
        return decoded, probs, novelty

    def predictions(self, probs: np.ndarray, top_k: int = 5) -> list[Prediction]:
        order = top_k_indexes(probs, top_k)
        return [Prediction(row.tolist(), [self.labels[i] for i in row], [float(p[i]) for i in row], p)
                for row, p in zip(order, probs)]

    @torch.inference_mode()
    def reconstruct_latents(self, y_hat: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
        """uint8 images (B, H, W, C) from decoded latents, via feature aggregation and g_s."""
        x = torch.from_numpy(np.ascontiguousarray(y_hat, dtype=np.float32)).to(self.device)
        return to_uint8_images(self.net.reconstruct(x, (*image_size,)), self.config)

def to_uint8_images(x_hat: torch.Tensor, config: JCCConfig) -> np.ndarray:
    """Normalised network output (B, C, H, W) -> uint8 images (B, H, W, C): undo ``standardise``, round."""
    mean = torch.tensor(config.mean).view(1, -1, 1, 1)
    std = torch.tensor(config.std).view(1, -1, 1, 1)
    pixels = ((x_hat.float().cpu() * std + mean).clamp(0, 1) * 255.0).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).numpy()
