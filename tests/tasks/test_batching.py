import threading

from fetalclip.tasks.batching import prefetched_batches


def test_batches_come_back_in_order_with_their_loads():
    out = list(prefetched_batches(list(range(7)), lambda x: x * 10, batch_size=3))
    assert out == [([0, 1, 2], [0, 10, 20]), ([3, 4, 5], [30, 40, 50]), ([6], [60])]
    assert list(prefetched_batches([], lambda x: x, batch_size=3)) == []


def test_at_most_two_batches_are_loaded_ahead_of_the_consumer():
    loaded = []
    lock = threading.Lock()

    def load(x):
        with lock:
            loaded.append(x)
        return x

    iterator = prefetched_batches(list(range(20)), load, batch_size=4)
    next(iterator)
    # The consumer holds batch 0; only batch 1 may have been started besides it.
    assert set(loaded) <= set(range(8))
    remaining = list(iterator)
    assert [b for b, _ in remaining][-1] == [16, 17, 18, 19]
