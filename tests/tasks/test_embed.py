import numpy as np
import pytest
import torch
from PIL import Image

from fetalclip.tasks.embed import embed_files, embed_texts, list_image_files


def test_embeddings_of_real_hc18_images_match_direct_encoding(hc18_dir, tiny_model):
    files = sorted((hc18_dir / "training_set").glob("*_HC.png"))[:5]
    result = embed_files(tiny_model, files, batch_size=2)
    assert result.sources == [str(f) for f in files] and result.skipped == []
    with torch.inference_mode():
        direct = tiny_model.encode_image([Image.open(f) for f in files], normalize=True).numpy()
    np.testing.assert_allclose(result.embeddings, direct, atol=1e-5)


def test_modes_on_real_hc18_images(hc18_dir, tiny_model):
    files = sorted((hc18_dir / "training_set").glob("*_HC.png"))[:5]
    eager = embed_files(tiny_model, files, batch_size=3, mode="eager").embeddings
    exact = embed_files(tiny_model, files, batch_size=3, mode="exact").embeddings
    np.testing.assert_allclose(exact, eager, atol=1e-5, rtol=0)
    int8 = embed_files(tiny_model, files, batch_size=3, mode="int8")
    assert int8.sources == [str(f) for f in files]
    assert (int8.embeddings * exact).sum(1).min() >= 0.999


def test_unnormalised_option_and_empty_input(tiny_model, tmp_path, gray_image):
    Image.fromarray(gray_image).save(tmp_path / "x.png")
    raw = embed_files(tiny_model, [tmp_path / "x.png"], normalize=False).embeddings
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    empty = embed_files(tiny_model, [])
    assert empty.embeddings.shape == (0, 128) and empty.sources == []


def test_list_image_files_keeps_order_of_arguments(tmp_path, gray_image):
    for name in ("b.png", "a.tif", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    explicit = tmp_path / "c.txt"
    assert [p.name for p in list_image_files([explicit, tmp_path])] == ["c.txt", "a.tif", "b.png"]


def test_text_embeddings_are_batched_consistently(tiny_model):
    texts = [f"fetal brain at {w} weeks" for w in range(14, 20)]
    np.testing.assert_allclose(embed_texts(tiny_model, texts, batch_size=4), embed_texts(tiny_model, texts, batch_size=64), atol=1e-5)


def test_dicom_files_are_embedded_by_their_first_frame(tmp_path, tiny_model, dicom_writer, ramp_frames):
    single = dicom_writer(tmp_path / "still.dcm", ramp_frames[0], pixel_spacing_mm=(0.1, 0.1))
    loop = dicom_writer(tmp_path / "loop.dcm", ramp_frames)
    files = list_image_files([tmp_path])
    assert [p.name for p in files] == ["loop.dcm", "still.dcm"]
    result = embed_files(tiny_model, files)
    with torch.inference_mode():
        direct = tiny_model.encode_image([ramp_frames[0]], normalize=True).numpy()
    # Both files start with the same frame, so both embeddings equal the frame's own.
    np.testing.assert_allclose(result.embeddings, np.repeat(direct, 2, axis=0), atol=1e-5)
    assert result.sources == [str(loop), str(single)]


def test_onnx_backend_embeds_like_pytorch(hc18_dir, tiny_model, tmp_path, one_thread):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'fetalclip[export]')")
    from fetalclip.errors import FetalCLIPError
    from fetalclip.export import OnnxModel, export_onnx

    export_onnx(tiny_model, tmp_path / "exp", ga_spacings=[])
    files = sorted((hc18_dir / "training_set").glob("*_HC.png"))[:4]
    onnx = embed_files(OnnxModel(tmp_path / "exp"), files, batch_size=3)
    torch_result = embed_files(tiny_model, files, batch_size=3, mode="eager")
    assert onnx.sources == torch_result.sources
    np.testing.assert_allclose(onnx.embeddings, torch_result.embeddings, atol=1e-5, rtol=0)
    with pytest.raises(FetalCLIPError, match="needs the int8 graphs"):
        embed_files(OnnxModel(tmp_path / "exp"), files, mode="int8")


def _folder_of_images(tmp_path, gray_image, count=7):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for index in range(count):
        Image.fromarray(np.roll(gray_image, 11 * index, axis=0)).save(folder / f"{index:02d}.png")
    return list_image_files([folder])


def test_parts_from_two_ranks_join_to_the_single_run(tmp_path, tiny_model, gray_image, one_thread):
    from fetalclip.tasks.embed import chunks_of, embed_parts, join_parts

    files = _folder_of_images(tmp_path, gray_image)
    single = embed_files(tiny_model, files, batch_size=2)
    assert [list(c) for c in chunks_of(7, 3, rank=1, world_size=2)] == [[3, 4, 5]]
    # Rank 1 first: the order in which ranks finish does not matter.
    assert embed_parts(tiny_model, files, tmp_path / "parts", rank=1, world_size=2, chunk_size=3, batch_size=2) == [1]
    assert embed_parts(tiny_model, files, tmp_path / "parts", rank=0, world_size=2, chunk_size=3, batch_size=2) == [0, 2]
    joined = join_parts(tmp_path / "parts", tiny_model.embed_dim)
    assert joined.sources == single.sources
    np.testing.assert_allclose(joined.embeddings, single.embeddings, atol=1e-6, rtol=0)
    index = __import__("json").loads((tmp_path / "parts" / "index.json").read_text())
    assert index["rows"] == 7 and [p["rows"] for p in index["parts"]] == [3, 3, 1]


def test_parts_resume_where_they_stopped_and_refuse_other_settings(tmp_path, tiny_model, gray_image, one_thread):
    from fetalclip.errors import FetalCLIPError
    from fetalclip.tasks.embed import embed_parts, join_parts

    files = _folder_of_images(tmp_path, gray_image)
    parts = tmp_path / "parts"
    embed_parts(tiny_model, files, parts, rank=0, world_size=2, chunk_size=3)
    with pytest.raises(FetalCLIPError, match="parts are not written yet"):
        join_parts(parts, 128)
    assert embed_parts(tiny_model, files, parts, chunk_size=3) == [1]  # only the missing chunk is computed
    (parts / "part-000002.npz").unlink()
    assert embed_parts(tiny_model, files, parts, chunk_size=3) == [2]
    assert len(join_parts(parts, 128).sources) == 7
    with pytest.raises(FetalCLIPError, match="different run .*chunk_size"):
        embed_parts(tiny_model, files, parts, chunk_size=4)
