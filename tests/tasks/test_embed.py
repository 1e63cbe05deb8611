import numpy as np
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
