"""Turn decoded MMGen modality images into typed maps (after diffusers' ``MarigoldImageProcessor``).

MMGen predicts depth, surface normals and a segmentation as IMAGES, encoded exactly like its training
data (see ``mmgen_edge.sdk.encoding``):

* depth: relative DISPARITY (1 / depth, larger = nearer) min-max normalised per image to 0..255,
  grey, copied to the 3 channels;
* normal: ``(n + 1) / 2 * 255`` as RGB (r = x, g = y, b = z) of camera-space normals with OpenCV axes
  (x right, y down, z forward into the scene), facing the camera (``n_z < 0`` on visible surfaces);
* mask: class-agnostic segments, each painted with a random well-separated colour (the background,
  ground and walls together, is one more segment).

The images come back from the VAE as (H, W, 3) uint8, slightly blurry and noisy: edges blend two
colours, flat areas carry small colour noise and a few spurious blobs may appear. The processors
invert the encodings and are robust to that. Everything is torch-free (numpy, OpenCV, scipy).

One module per job; this package is the public entry point and re-exports their public names
(``mmgen_edge.sdk.processors.colourise_depth`` etc. are documented in the README):

* :mod:`.depth_normals`: ``depth_from_image``, ``normals_from_image``, ``depth_to_points``;
* :mod:`.segmentation`: ``Segmentation``, ``segment_from_image`` (colour clustering);
* :mod:`.visualise`: ``colourise_depth``, ``colourise_normals``, ``colourise_segmentation``;
* :mod:`.checks`: the input validation they share.

Every function accepts images as (H, W, 3) uint8 or floating arrays in 0..255 (floating values are
clipped to 0..255); wrong shapes, dtypes, empty arrays or non-finite values raise ``ValueError``
naming the argument.
"""

from __future__ import annotations

from .depth_normals import depth_from_image, depth_to_points, normals_from_image
from .segmentation import Segmentation, segment_from_image
from .visualise import colourise_depth, colourise_normals, colourise_segmentation

__all__ = [
    "Segmentation",
    "colourise_depth",
    "colourise_normals",
    "colourise_segmentation",
    "depth_from_image",
    "depth_to_points",
    "normals_from_image",
    "segment_from_image",
]
