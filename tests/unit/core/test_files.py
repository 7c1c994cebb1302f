"""Pure logic: settings, names, archive headers. No Docker needed."""

from __future__ import annotations


def test_digest_hashes_the_whole_file_however_much_was_sent(tmp_path):
    import hashlib
    import itertools
    import os

    from pgrunbook.core.files import HashingReader

    path = tmp_path / "archive.dump"
    path.write_bytes(os.urandom(5 * (1 << 20) + 123))  # several chunks and a short tail
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert HashingReader(path).hexdigest() == expected  # nothing sent
    whole = HashingReader(path)
    assert b"".join(whole.chunks()) == path.read_bytes()
    assert whole.hexdigest() == expected
    partial = HashingReader(path)  # the reader (pg_restore on a broken file) stopped early
    sender = partial.chunks()  # still suspended, not closed, when the hash is asked for
    assert len(list(itertools.islice(sender, 2))) == 2
    assert partial.hexdigest() == expected
    assert next(sender, None) is None  # a sender still running stops: nothing is hashed twice
    assert partial.hexdigest() == expected


def test_a_hashing_thread_that_falls_behind_holds_the_sender_back(tmp_path):
    """Memory stays flat: chunks sent but not yet hashed never pile up (a starved hashing
    thread once let 16 MiB of them wait, and restore-partial's peak RSS rose by as much)."""
    import threading

    from pgrunbook.core.files import CHUNK, HashingReader

    path = tmp_path / "archive.dump"
    path.write_bytes(b"x" * (12 * CHUNK))
    reader = HashingReader(path)
    release = threading.Event()

    class Stalled:
        def update(self, _chunk):
            release.wait()

    reader.hash = Stalled()
    sent = []
    sender = threading.Thread(target=lambda: sent.extend(len(c) for c in reader.chunks()), daemon=True)
    counted = []
    original = reader._queue.put

    def put(chunk, *args, **kwargs):
        counted.append(chunk)
        original(chunk, *args, **kwargs)

    reader._queue.put = put
    sender.start()
    sender.join(timeout=1.0)
    assert sender.is_alive()  # held back while nothing is hashed
    assert len(counted) * CHUNK <= 4 << 20  # at most 4 MiB waiting for the hash (was 16 MiB)
    release.set()
    sender.join(timeout=10)
    assert sum(sent) == 12 * CHUNK
