"""Salient-object screening with an ultralytics YOLO detector, and the rejection rule.

Detections are stored as (class name, confidence, x1, y1, x2, y2 in fractions of the image)
so that the rule can be re-applied with other thresholds without detecting again.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DetectorError(RuntimeError):
    """The detector cannot be loaded; the message says what to pass instead."""


@dataclass(frozen=True)
class Detection:
    name: str
    conf: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 as fractions of width / height

    @property
    def area_fraction(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, min(x2, 1.0) - max(x1, 0.0)) * max(0.0, min(y2, 1.0) - max(y1, 0.0))

    def as_list(self) -> list:
        return [self.name, round(self.conf, 5), *[round(v, 5) for v in self.box]]

    @classmethod
    def from_list(cls, v: list) -> Detection:
        return cls(str(v[0]), float(v[1]), (float(v[2]), float(v[3]), float(v[4]), float(v[5])))


def rejecting_detection(dets: Iterable[Detection], classes: set[str] | None, conf: float,
                        min_box_fraction: float) -> Detection | None:
    """The first detection that rejects the image, or None: a listed class (all when
    ``classes`` is None), confidence >= ``conf``, box covering >= ``min_box_fraction``."""
    for d in sorted(dets, key=lambda d: -d.conf):
        if (classes is None or d.name in classes) and d.conf >= conf and d.area_fraction >= min_box_fraction:
            return d
    return None


def pick_device() -> str:
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


class Detector:
    """An ultralytics YOLO model by name (fetched by ultralytics when online), local weights
    path, or model yaml (an untrained network, for tests)."""

    def __init__(self, spec: str, imgsz: int = 640, device: str | None = None):
        self.spec, self.imgsz = spec, imgsz
        self.device = device or pick_device()
        local = Path(spec)
        # never let ultralytics pip-install packages at run time
        os.environ.setdefault("YOLO_AUTOINSTALL", "false")
        try:
            from ultralytics import YOLO

            if not local.exists() and not spec.endswith((".yaml", ".yml")):
                self.model = _load_named(YOLO, spec)
            else:
                self.model = YOLO(str(spec))
        except DetectorError:
            raise
        except Exception as exc:
            raise DetectorError(
                f"cannot load the detector {spec!r} ({exc.__class__.__name__}: {str(exc)[:200]}); pass --detector "
                "/path/to/yolov8n.pt (a local weights file) or --no-screen"
            ) from None
        self.names = dict(self.model.names)

    def detect_paths(self, paths: list[str], min_conf: float) -> list[list[Detection]]:
        """Detections for a batch of image files (so that a remote actor reads them itself)."""
        from rssn.imageio import read_image

        return self.detect([read_image(p) for p in paths], min_conf)

    def class_names(self) -> list[str]:
        """The class names the model knows (a method, so that a Ray actor can answer it)."""
        return [str(v) for v in self.names.values()]

    def detect(self, images: list[np.ndarray], min_conf: float) -> list[list[Detection]]:
        """Detections for a batch of RGB uint8 images. Images are run in sub-batches of one shape:
        ultralytics pads a mixed batch to its largest shape, so an image's boxes would depend
        on the images batched with it."""
        out: list[list[Detection]] = [[] for _ in images]
        by_shape: dict[tuple, list[int]] = {}
        for k, im in enumerate(images):
            by_shape.setdefault(im.shape, []).append(k)
        for ks in by_shape.values():
            for k, dets in zip(ks, self._detect_one_shape([images[k] for k in ks], min_conf)):
                out[k] = dets
        return out

    def _detect_one_shape(self, images: list[np.ndarray], min_conf: float) -> list[list[Detection]]:
        bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images]
        results = self.model.predict(bgr, imgsz=self.imgsz, conf=min_conf, device=self.device, verbose=False)
        out = []
        for r in results:
            dets = []
            if r.boxes is not None and len(r.boxes):
                boxes = r.boxes.xyxyn.cpu().numpy()
                confs = r.boxes.conf.cpu().numpy()
                classes = r.boxes.cls.cpu().numpy().astype(int)
                for b, c, k in zip(boxes, confs, classes):
                    x0, y0, x1, y1 = (float(v) for v in b)
                    dets.append(Detection(str(self.names.get(int(k), int(k))), float(c), (x0, y0, x1, y1)))
            out.append(dets)
        return out


def _load_named(YOLO, spec: str):
    """Weights by name: ultralytics downloads them when online; offline that fails."""
    try:
        return YOLO(spec)
    except Exception as exc:
        raise DetectorError(
            f"cannot get detector weights {spec!r} ({exc.__class__.__name__}; offline?): pass --detector "
            f"/path/to/{spec} (a local weights file) or --no-screen"
        ) from None
