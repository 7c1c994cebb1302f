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
