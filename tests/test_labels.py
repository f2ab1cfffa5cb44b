from harness.labels import LABEL_RUN, LABEL_WORKER, new_run_id, object_name, run_labels


def test_run_ids_are_unique_and_short():
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 8 for i in ids)


def test_labels_carry_run_and_worker(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    labels = run_labels("abcd1234", role="router")
    assert labels[LABEL_RUN] == "abcd1234"
    assert labels[LABEL_WORKER] == "gw3"
    assert object_name("abcd1234", "transit") == "dcutr-abcd1234-transit"
