"""Hostile shard folders and a killed packer.

Every shard folder here is made by the test: a manifest in the packer's format (with the right checksums, so
the checker gets past them to the content) around a tar built member by member. Each case asserts that
``fetalclip data check`` (and, where it reads the same thing, the training reader) ends with exit status 2,
no traceback, and one line naming the file and the member at fault. Cases that would exhaust memory or block
forever if a rule broke run in a child process under an address-space limit and a timeout, so a regression
fails the test instead of taking the machine down. The last cases kill ``data pack --workers 2`` and look
for worker processes left behind, by process group, in ``/proc``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetalclip.cli import main
from fetalclip.data import shards as data_shards
from fetalclip.data.shards import FORMAT, MANIFEST, MAX_MANIFEST_BYTES, MAX_TEXT_MEMBER_BYTES, ShardError, load_shard_record, open_shard_folder, rules
from fetalclip.errors import ImageReadError

KEY = "00000000-0000"
# Address space for a child that runs `fetalclip data check`: it peaks near 300 MB on good shards; every
# hostile input below would need well over this much if read without bound.
MEMORY_LIMIT = 768 << 20
ON_LINUX = sys.platform.startswith("linux")


# -- making hostile shard folders -------------------------------------------------------------------------------
def _png(height=6, width=8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` grey pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _sample(key=KEY, png=None) -> list[tuple[tarfile.TarInfo, bytes]]:
    png = _png() if png is None else png
    meta = json.dumps({"height": 6, "width": 8, "source": "x.png"}).encode()
    return [_member(f"{key}.png", png), _member(f"{key}.txt", b"a caption."), _member(f"{key}.json", meta)]


def _member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **fields) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    for field, value in fields.items():
        setattr(info, field, value)
    return info, data


def _tar(path: Path, members) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _folder(tmp_path: Path, write_shard, samples: int = 1) -> Path:
    """A shard folder whose manifest matches its one shard byte for byte (name, size, sha256)."""
    folder = tmp_path / "shards"
    folder.mkdir()
    shard = folder / "shard-000000.tar"
    write_shard(shard)
    data = shard.read_bytes()
    entry = {"name": shard.name, "samples": samples, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
             "inputs": [0, samples]}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": 1, "complete": True, "shards": [entry],
                                               "totals": {"samples": samples}}))
    return folder


def _sparse_member(path: Path, name: str, size: int, kind: bytes = tarfile.REGTYPE) -> Path:
    """A tar whose one member (or extended header) really is ``size`` bytes long, as a sparse file."""
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    header = info.tobuf(format=tarfile.GNU_FORMAT)  # for type x: an extended header that long
    with open(path, "wb") as handle:
        handle.write(header)
        handle.seek(len(header) + -(-size // 512) * 512)
        handle.write(bytes(1024))
    return path


def _gzip_bomb(path: Path, mebibytes: int) -> Path:
    """A valid gzip stream of a tar whose one member is ``mebibytes`` MiB of zeros, itself ~1 kB per MiB."""
    info = tarfile.TarInfo(f"{KEY}.png")
    info.size = mebibytes << 20
    block = gzip.compress(bytes(1 << 20), compresslevel=9)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
        for _ in range(mebibytes):
            handle.write(block)
    return path


# -- running the command ----------------------------------------------------------------------------------------
def _check_in_process(folder: Path, capsys, out: list | None = None) -> str:
    """stderr of ``fetalclip data check FOLDER``, which must exit 2 without a traceback (stdout to ``out``)."""
    with pytest.raises(SystemExit) as info:
        main(["data", "check", str(folder)])
    captured = capsys.readouterr()
    assert info.value.code == 2, captured
    assert "Traceback" not in captured.err
    if out is not None:
        out.append(captured.out)
    return captured.err


_LIMITED = (
    "import resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
    "from fetalclip.cli import main\n"
    "main(sys.argv[1:])\n"
)


def _check_limited(folder: Path, timeout: float = 60) -> str:
    """``fetalclip data check FOLDER`` in a child limited to ``MEMORY_LIMIT`` of address space."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _LIMITED.format(limit=MEMORY_LIMIT), "data", "check", str(folder)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr, done.stderr[-3000:]
    return done.stderr


def _line_with(text: str, *fragments: str) -> str:
    """The one stderr line that holds every fragment (the error must be readable on one line)."""
    lines = [line for line in text.splitlines() if all(fragment in line for fragment in fragments)]
    assert lines, f"no line with {fragments} in:\n{text}"
    return lines[0]


# -- shard files that are not plain tar, or too large -----------------------------------------------------------
@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_AS"), reason="needs RLIMIT_AS")
def test_a_gzip_bomb_named_tar_is_refused_without_inflating_it(tmp_path):
    # 2 GiB of zeros in ~2 MB: opened with compression auto-detected, this alone exceeds the child's limit.
    folder = _folder(tmp_path, lambda shard: _gzip_bomb(shard, 2048))
    assert (folder / "shard-000000.tar").stat().st_size < 4 << 20
    _line_with(_check_limited(folder), "shard-000000.tar", "gzip-compressed", "plain tar")


@pytest.mark.parametrize("kind, compress", [("bzip2", __import__("bz2").compress), ("xz", __import__("lzma").compress)])
def test_other_compressed_shards_are_refused_by_name(tmp_path, capsys, kind, compress):
    def write(shard):
        shard.write_bytes(compress(_tar(tmp_path / "plain.tar", _sample()).read_bytes()))

    _line_with(_check_in_process(_folder(tmp_path, write), capsys), "shard-000000.tar", f"{kind}-compressed")


def test_a_member_larger_than_its_bound_is_refused_before_it_is_read(tmp_path, capsys):
    # Really that long (a sparse file), so the checksum matches and only the bound stops it.
    folder = _folder(tmp_path, lambda shard: _sparse_member(shard, f"{KEY}.json", MAX_TEXT_MEMBER_BYTES + 1))
    _line_with(_check_in_process(folder, capsys), "shard-000000.tar", f"'{KEY}.json'", "over the 16 MiB bound")


def test_an_image_member_over_the_image_bound_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rules, "MAX_IMAGE_MEMBER_BYTES", 16)
    folder = _folder(tmp_path, lambda shard: _tar(shard, _sample()))
    _line_with(_check_in_process(folder, capsys), "shard-000000.tar", f"'{KEY}.png'", "bound")


@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_AS"), reason="needs RLIMIT_AS")
def test_an_extended_tar_header_cannot_make_a_reader_allocate_without_bound(tmp_path):
    # tarfile reads a pax header whole, itself; 1 GiB of one (sparse) must be refused at that read. Checked
    # through the reader that needs no manifest (the training reader opens shards with the same function, but
    # importing it imports torch, which alone does not fit the limit).
    shard = _sparse_member(tmp_path / "shard-000000.tar", "pax", 1 << 30, kind=tarfile.XHDTYPE)
    code = _LIMITED.format(limit=MEMORY_LIMIT).replace(
        "from fetalclip.cli import main\nmain(sys.argv[1:])\n",
        "from fetalclip.errors import FetalCLIPError\nfrom fetalclip.data.shards import iter_shard_samples\n"
        "try:\n    list(iter_shard_samples(sys.argv[1]))\nexcept FetalCLIPError as exc:\n    print(exc)\n    sys.exit(2)\n")
    done = subprocess.run([sys.executable, "-c", code, str(shard)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    _line_with(done.stdout, "shard-000000.tar", "a tar header or member of more than")


# -- members that are not plain files inside the shard ----------------------------------------------------------
@pytest.mark.parametrize("member, why", [
    (lambda: _member(f"{KEY}.png", kind=tarfile.SYMTYPE, linkname="/etc/passwd"), "not a regular file"),
    (lambda: _member(f"{KEY}.png", kind=tarfile.LNKTYPE, linkname="elsewhere.png"), "not a regular file"),
    (lambda: _member(f"{KEY}.png", kind=tarfile.CHRTYPE, devmajor=1, devminor=5), "not a regular file"),
    (lambda: _member(f"{KEY}.png", kind=tarfile.FIFOTYPE), "not a regular file"),
    (lambda: _member("folder", kind=tarfile.DIRTYPE), "not a regular file"),
    (lambda: _member(f"../{KEY}.png", _png()), "'..'"),
    (lambda: _member(f"a/../../{KEY}.png", _png()), "'..'"),
    (lambda: _member(f"/tmp/{KEY}.png", _png()), "absolute path"),
], ids=["symlink", "hardlink", "device", "fifo", "folder", "dotdot", "inner-dotdot", "absolute"])
def test_members_that_are_not_plain_files_inside_the_shard_are_refused(tmp_path, capsys, member, why):
    info, data = member()
    folder = _folder(tmp_path, lambda shard: _tar(shard, [(info, data), *_sample("00000001-0000")]))
    line = _line_with(_check_in_process(folder, capsys), "shard-000000.tar", repr(info.name), why)
    assert "\n" not in line
    # The training reader applies the very same rule.
    (folder / MANIFEST).unlink()
    with pytest.raises(ShardError, match=re.escape(why)):
        open_shard_folder(folder)


def test_a_sample_key_that_comes_back_later_is_refused(tmp_path, capsys):
    first, second = _sample(KEY), _sample("00000001-0000")
    folder = _folder(tmp_path, lambda shard: _tar(shard, [first[0], *second, *first[1:]]))
    _line_with(_check_in_process(folder, capsys), "shard-000000.tar", "appears twice")


# -- the files of the folder itself -----------------------------------------------------------------------------
def test_a_manifest_linked_to_an_endless_device_is_refused_at_once(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / MANIFEST).symlink_to("/dev/zero")
    _line_with(_check_limited(folder, timeout=30), "manifest.json", "symbolic link")
    with pytest.raises(ShardError, match="symbolic link"):
        open_shard_folder(folder)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_manifest_that_is_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    os.mkfifo(folder / MANIFEST)
    _line_with(_check_limited(folder, timeout=30), "manifest.json", "not a regular file")


@pytest.mark.skipif(not hasattr(__import__("resource"), "RLIMIT_AS"), reason="needs RLIMIT_AS")
def test_a_manifest_over_its_size_bound_is_refused_unread(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    with open(folder / MANIFEST, "wb") as handle:  # sparse: costs no disk, and must cost no memory
        handle.truncate(2 << 30)
    _line_with(_check_limited(folder), "manifest.json", "larger than the 128 MiB")


def test_the_training_reader_bounds_the_manifest_too(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    with open(folder / MANIFEST, "wb") as handle:
        handle.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ShardError, match="larger than"):
        open_shard_folder(folder)


@pytest.mark.parametrize("text", ["[" * 100_000, "\xff\xfe not utf-8", "[1, 2]", '{"format": "fetalclip-shards", "shards": 7}',
                                  '{"format": "fetalclip-shards", "complete": true, "shards": [5, {"name": 3}]}'],
                         ids=["deep", "encoding", "list", "shards-not-a-list", "entries-not-objects"])
def test_a_malformed_manifest_is_one_line_naming_it(tmp_path, capsys, text):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / MANIFEST).write_bytes(text.encode("latin-1"))
    _line_with(_check_in_process(folder, capsys), "manifest.json")


def test_a_shard_that_is_a_symlink_is_refused_even_to_a_good_shard(tmp_path, capsys):
    folder = _folder(tmp_path, lambda shard: _tar(shard, _sample()))
    outside = tmp_path / "outside.tar"
    (folder / "shard-000000.tar").rename(outside)
    (folder / "shard-000000.tar").symlink_to(outside)
    _line_with(_check_in_process(folder, capsys), "shard-000000.tar", "symbolic link")


@pytest.mark.parametrize("name", ["../outside/shard-000000.tar", "/somewhere/else/shard-000000.tar"])
def test_manifest_names_never_reach_outside_the_folder(tmp_path, capsys, name):
    folder = _folder(tmp_path, lambda shard: _tar(shard, _sample()))
    (tmp_path / "outside").mkdir()
    (folder / "shard-000000.tar").rename(tmp_path / "outside" / "shard-000000.tar")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["shards"][0]["name"] = name
    (folder / MANIFEST).write_text(json.dumps(manifest))
    # Only the file of that base name inside the folder is ever looked at: here there is none.
    _line_with(_check_in_process(folder, capsys), "shard-000000.tar", "missing")


# -- images that do not decode: ImageReadError naming shard and member ------------------------------------------
@pytest.mark.parametrize("png, why", [
    (lambda: _png_declaring(40000, 40000), "pixels"),  # over Pillow's own bomb limit
    (lambda: _png_declaring(10000, 10000), "pixels"),  # under Pillow's, over the readers' pixel budget
    (lambda: _png()[:40], "does not decode"),
    (lambda: b"GIF89a not a png", "not a PNG"),
], ids=["bomb", "over-budget", "truncated", "other-format"])
def test_an_undecodable_image_member_is_a_counted_problem_naming_shard_and_member(tmp_path, capsys, png, why):
    samples = [*_sample(KEY, png()), *_sample("00000001-0000"), *_sample("00000002-0000", png())]
    folder = _folder(tmp_path, lambda shard: _tar(shard, samples), samples=3)
    out: list[str] = []
    err = _check_in_process(folder, capsys, out)
    _line_with(err, f"shard-000000.tar:{KEY}.png", why)
    _line_with(err, "shard-000000.tar:00000002-0000.png", why)  # checking went on past the first bad one
    assert "1 shards, 3 samples, 2 problems" in out[0]
    # Every reader raises the project's one image error, naming shard and member.
    with pytest.raises(ImageReadError, match=f"shard-000000.tar:{KEY}.png"):
        list(data_shards.iter_shard_samples(folder))
    dataset = open_shard_folder(folder)
    with pytest.raises(ImageReadError, match=f"shard-000000.tar:{KEY}.png"):
        load_shard_record(dataset.records[0])
    assert load_shard_record(dataset.records[1])["image"].shape == (6, 8)


def test_pack_skip_bad_counts_a_bomb_png_input_instead_of_crashing(tmp_path, capsys):
    (tmp_path / "good.png").write_bytes(_png())
    (tmp_path / "bomb.png").write_bytes(_png_declaring(40000, 40000))
    (tmp_path / "m.csv").write_text("path,label\ngood.png,brain\nbomb.png,brain\n")
    spec = f"csv:{tmp_path / 'm.csv'}"
    with pytest.raises(SystemExit) as info:
        main(["data", "pack", "-d", spec, "--out", str(tmp_path / "a"), "--no-clean", "--workers", "0"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    _line_with(err, "bomb.png", "skip-bad")
    with pytest.raises(SystemExit) as info:
        main(["data", "pack", "-d", spec, "--out", str(tmp_path / "b"), "--no-clean", "--workers", "0", "--skip-bad"])
    captured = capsys.readouterr()
    assert info.value.code in (0, None), captured.err
    assert "skipped 1 unreadable inputs" in captured.err
    assert json.loads((tmp_path / "b" / MANIFEST).read_text())["totals"]["skipped"] == 1


# -- a killed packer leaves no workers behind -------------------------------------------------------------------
def _group(pgid: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of the live processes in process group ``pgid``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, parent, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            found.append((int(entry), int(parent)))
    return found


_PACK = (
    "import sys\n"
    "import fetalclip.data.shards.pool as pool\n"
    "if sys.argv[1] == 'poll':\n"
    "    pool._kill_me_with_parent = lambda: False  # the portable fallback: workers watch their parent\n"
    "from fetalclip.cli import main\n"
    "main(sys.argv[2:])\n"
)


def _start_pack(out: Path, guard: str) -> subprocess.Popen:
    """``data pack --workers 2`` in its own process group, returned once both workers run."""
    command = [sys.executable, "-c", _PACK, guard, "data", "pack", "-d", "sim:400,size=64", "--out", str(out),
               "--workers", "2", "--shard-size", "50"]
    # A shell that starts a job in the background (`make test &`, some CI runners) leaves SIGINT ignored, and an
    # ignored signal stays ignored across exec; give the packer the default disposition a terminal would.
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while sum(parent == process.pid for _, parent in _group(process.pid)) < 2:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "workers never started"
        time.sleep(0.02)
    return process


def _left_after(process: subprocess.Popen, seconds: float) -> list[tuple[int, int]]:
    deadline = time.monotonic() + seconds
    while (left := _group(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, _ in left:  # do not leave them to the next test either
        os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.skipif(not ON_LINUX, reason="scans /proc")
@pytest.mark.parametrize("guard", ["prctl", "poll"])
def test_sigkill_of_the_packer_leaves_no_worker_alive(tmp_path, guard):
    process = _start_pack(tmp_path / "out", guard)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert _left_after(process, 5) == []


@pytest.mark.skipif(not ON_LINUX, reason="scans /proc")
@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_sigterm_or_ctrl_c_of_the_packer_ends_its_pool_and_leaves_a_resumable_folder(tmp_path, signum, status):
    process = _start_pack(tmp_path / "out", "prctl")
    os.kill(process.pid, signum)
    code = process.wait(timeout=20)
    err = process.stderr.read().decode()
    assert code == status and "Traceback" not in err, err[-3000:]
    assert _left_after(process, 5) == []
    assert not list((tmp_path / "out").glob(".*.tmp"))


@pytest.mark.parametrize("field,value", [("pixel_spacing_mm", -0.2), ("pixel_spacing_mm", "nan"), ("hc_mm", 0),
                                         ("ga_days", "1e999")])
def test_the_training_reader_refuses_a_bad_measure_naming_shard_and_member(tmp_path, field, value):
    meta = json.dumps({"height": 6, "width": 8, "source": "x.png", field: value}).encode()
    members = [_member(f"{KEY}.png", _png()), _member(f"{KEY}.txt", b"a caption."), _member(f"{KEY}.json", meta)]
    folder = _folder(tmp_path, lambda shard: _tar(shard, members))
    with pytest.raises(ShardError, match=rf"shard-000000.tar: member '{KEY}.json': {field} .* must be a positive, finite"):
        open_shard_folder(folder)
