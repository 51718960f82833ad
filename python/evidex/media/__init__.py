"""Images (pillow) and videos (decord) for evidence and retrieval: load, crop boxes, sample
frames, and the item types a multimodal embedder reads.

Needs the ``media`` extra (``pip install "evidex[media]"``). Missing or corrupt files raise
FileNotFoundError / ValueError naming the file. The embedders themselves (torch) are in
`evidex.media.embedders`.
"""

from .corpus import index_items, search_items
from .io import Video, crop_box, draw_boxes, load_image
from .items import ImageItem, Interleaved, VideoItem, as_item, item_kind

__all__ = [
    "ImageItem",
    "Interleaved",
    "Video",
    "VideoItem",
    "as_item",
    "crop_box",
    "draw_boxes",
    "index_items",
    "item_kind",
    "load_image",
    "search_items",
]
