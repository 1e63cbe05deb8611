"""WebDataset shards: pack datasets into tar shards, check them, read them back as a dataset (``shards:DIR``).

Format (every module of this package reads and writes exactly this; change it only here, all together):

* ``DIR/shard-000000.tar``, ``shard-000001.tar``, ... written with ``webdataset.TarWriter``. Per sample,
  under one key: ``{key}.png`` (the image as stored: 8-bit grey or RGB, after cleaning when on),
  ``{key}.txt`` (the caption), ``{key}.json`` (every sample field except image and mask: source, dataset,
  label, brain_plane, view, patient, split, frame_index, pixel_spacing_mm, pixel_spacing_224_mm, ga_days,
  hc_mm, caption_ga_days/caption_ga_source, width, height, cleaning stats or null, metadata) and, when the
  sample has one, ``{key}.mask.png`` (uint8 label map).
* ``DIR/manifest.json``: the settings (specs, seed, shard size, cleaning, frames, captions), one entry per
  shard (name, samples, bytes, sha256, input range), totals, and every skipped input with its reason.

Modules, one purpose each: ``rules`` (how any file of a shard folder may be read: bounded, regular files,
plain tar, and the decoding of one member), ``manifest`` (the one manifest reader: which shards a folder
holds), ``encode`` and ``pool`` (one input into samples, in worker processes), ``writer`` (``pack_shards``,
resumable), ``reader`` (packed samples streamed back as stored), ``check`` (``check_shards``) and ``index``
(the random-access dataset every command reads through ``open_dataset("shards:DIR")``). A shard folder may
come from anywhere, so nothing in it is trusted to be small, plain or inside the folder until checked, and
nothing is read without a bound; packing writes nothing those rules would refuse.
"""

from __future__ import annotations

from ..datasets import register_adapter
from .check import CheckResult, check_shards
from .encode import PNG_COMPRESS_LEVEL, PackSettings, png_bytes, sample_fields, stripped_png
from .index import index_shard, load_shard_record, open_shard_folder, open_shards
from .manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SHARD_GLOB,
    SHARD_NAME,
    Manifest,
    ShardEntry,
    folder_shards,
    is_shard_folder,
    load_manifest,
    read_manifest,
    shard_file,
)
from .reader import decode_packed, iter_shard_samples, shard_urls
from .rules import (
    MAX_IMAGE_MEMBER_BYTES,
    MAX_MANIFEST_BYTES,
    MAX_TEXT_MEMBER_BYTES,
    ShardError,
    decode_image_member,
    member_limit,
    open_regular_file,
    open_shard_tar,
    read_bounded,
    read_manifest_json,
    read_member,
    shard_samples,
    split_member_name,
)
from .writer import PackResult, pack_shards

register_adapter("shards", open_shards)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST", "MAX_IMAGE_MEMBER_BYTES", "MAX_MANIFEST_BYTES", "MAX_TEXT_MEMBER_BYTES",
    "PNG_COMPRESS_LEVEL", "SHARD_GLOB", "SHARD_NAME", "CheckResult", "Manifest", "PackResult", "PackSettings",
    "ShardEntry", "ShardError", "check_shards", "decode_image_member", "decode_packed", "folder_shards",
    "index_shard", "is_shard_folder", "iter_shard_samples", "load_manifest", "load_shard_record", "member_limit",
    "open_regular_file", "open_shard_folder", "open_shard_tar", "open_shards", "pack_shards", "png_bytes",
    "read_bounded", "read_manifest", "read_manifest_json", "read_member", "sample_fields", "shard_file",
    "shard_samples", "shard_urls", "split_member_name", "stripped_png",
]
