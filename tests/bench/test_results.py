"""The results store: one file per (model, task), reused only under the same fingerprint."""

from fetalclip.bench.results import ResultsStore, safe_name


def _entry(model="m/1", task="t", status="done", **fingerprint):
    return {"model": model, "task": task, "status": status, "fingerprint": {"seed": 0, "options": (1, 2), **fingerprint}, "metrics": {}}


def test_put_get_and_fingerprint_match(tmp_path):
    store = ResultsStore(tmp_path)
    path = store.put(_entry())
    assert path == tmp_path / "m_1" / "t.json"
    assert store.lookup("m/1", "t", {"seed": 0, "options": (1, 2)})["status"] == "done"  # tuples compare as lists
    assert store.lookup("m/1", "t", {"seed": 1, "options": (1, 2)}) is None
    store.put(_entry(status="failed"))
    assert store.lookup("m/1", "t", {"seed": 0, "options": (1, 2)}) is None and store.get("m/1", "t")["status"] == "failed"
    assert [e["model"] for e in store.entries()] == ["m/1"]


def test_damaged_and_colliding_entries_are_not_trusted(tmp_path):
    store = ResultsStore(tmp_path)
    store.put(_entry(model="m/1"))
    assert store.get("m:1", "t") is None  # same file name, different label
    store.path("m/1", "t").write_text("{ truncated")
    assert store.get("m/1", "t") is None and list(store.entries()) == []
    assert safe_name("../../etc") == "etc" and safe_name("...") == "_"
