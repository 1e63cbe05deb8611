import pytest

from fetalclip.data.labels import canonical_label, known_labels
from fetalclip.errors import FetalCLIPError


@pytest.mark.parametrize(
    "name,key",
    [("Fetal abdomen", "abdomen"), ("Fetal thorax", "thorax"), ("Maternal cervix", "cervix"), ("heart", "thorax"),
     ("Fetal brain", "brain"), ("lips/nose", "lips_nose"), ("  FETAL_FEMUR ", "femur"), ("Other", "other")],
)
def test_plane_names(name, key):
    assert canonical_label(name) == key


def test_brain_planes():
    assert canonical_label("Trans-thalamic", "brain_plane") == "trans-thalamic"
    assert canonical_label("Trans-cerebellum", "brain_plane") == "trans-cerebellum"
    assert canonical_label("transventricular", "brain_plane") == "trans-ventricular"
    assert canonical_label("Not A Brain", "brain_plane") is None


def test_unknown_label_lists_the_known_ones():
    with pytest.raises(FetalCLIPError) as info:
        canonical_label("elbow")
    assert all(key in str(info.value) for key in known_labels())
    assert canonical_label("elbow", strict=False) == "elbow"
