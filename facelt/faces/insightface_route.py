"""Which model class insightface's ``model_zoo.get_model`` makes of an ONNX file.

insightface (``python-package/insightface/model_zoo/model_zoo.py``, ``ModelRouter.get_model``)
routes a model by its inputs and outputs, in this order: five or more outputs -> ``SCRFD``
(detection); input 192x192 -> ``Landmark``; 96x96 -> ``Attribute``; two inputs at 128x128 ->
``INSwapper``; a square input of at least 112 pixels whose side is a multiple of 16 ->
``ArcFaceONNX`` (recognition); anything else -> ``None``, silently. ``ArcFaceONNX`` then wants one
output and feeds three channels (``cv2.dnn.blobFromImages``). :func:`insightface_route` applies
the rules to a shape, so ``facelt export`` can warn before a user finds ``None``: the demo's 32x32
face model, for one, is not routed (``facelt demo --face-size 112`` trains one that is).
"""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["insightface_route", "insightface_route_warning"]

RECOGNITION = "ArcFaceONNX"


def insightface_route(input_shape: Sequence, num_inputs: int = 1, num_outputs: int = 1
                      ) -> Optional[str]:
    """The class name ``get_model`` returns for a model with this first input shape (NCHW) and
    these numbers of inputs and outputs, or None (not routed)."""
    h, w = input_shape[2], input_shape[3]
    if num_outputs >= 5:
        return "SCRFD"
    if h == 192 and w == 192:
        return "Landmark"
    if h == 96 and w == 96:
        return "Attribute"
    if num_inputs == 2 and h == 128 and w == 128:
        return "INSwapper"
    if isinstance(h, int) and h == w and h >= 112 and h % 16 == 0:
        return RECOGNITION
    return None


def insightface_route_warning(image_size: int, channels: int = 3) -> Optional[str]:
    """None when insightface's ``get_model`` loads a facelt export (input ``(N, channels, S, S)``,
    one output) as a recognition model; else what it does instead and why."""
    route = insightface_route((None, channels, image_size, image_size))
    if route == RECOGNITION and channels == 3:
        return None
    if route == RECOGNITION:
        return (f"insightface's ArcFaceONNX feeds 3-channel images; this model takes {channels}: "
                "its get_model loads it, but get_feat will fail")
    what = f"returns {route} (not a recognition model)" if route else "returns None (not routed)"
    return (f"insightface's model_zoo.get_model {what} for a {image_size}x{image_size} input: it "
            "routes recognition models with a square input of at least 112 pixels, a multiple of "
            "16 (and not 192 or 96); facelt's own --onnx loaders take it anyway")
